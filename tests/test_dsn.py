"""DSN resolution, conninfo building and password redaction."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from partitiond.dsn import KEEPALIVES, DsnError, connect_kwargs, exposed, redact, redact_dsn, resolve_dsn

# --- resolve_dsn ------------------------------------------------------------------------------------


def test_explicit_dsn_wins(tmp_path: Path) -> None:
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text("host=file\n")
    assert resolve_dsn("host=flag", dsn_file, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "host=flag"


def test_dsn_file_is_stripped(tmp_path: Path) -> None:
    dsn_file = tmp_path / "secret"
    dsn_file.write_text("  postgresql://u:pw@db/x\n\n")
    assert resolve_dsn(None, dsn_file, {}) == "postgresql://u:pw@db/x"


def test_empty_explicit_dsn_falls_through_to_file(tmp_path: Path) -> None:
    dsn_file = tmp_path / "secret"
    dsn_file.write_text("host=file")
    assert resolve_dsn("", dsn_file, {}) == "host=file"


def test_dsn_file_beats_credential(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text("host=credential")
    dsn_file = tmp_path / "other"
    dsn_file.write_text("host=file")
    assert resolve_dsn(None, dsn_file, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "host=file"


def test_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text("host=credential\n")
    assert resolve_dsn(None, None, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "host=credential"


def test_credentials_directory_without_dsn_falls_back_to_libpq_env(tmp_path: Path) -> None:
    assert resolve_dsn(None, None, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == ""
    assert resolve_dsn(None, None, {}) == ""


def test_missing_dsn_file(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    with pytest.raises(DsnError, match=f"cannot read DSN file {path}: No such file or directory"):
        resolve_dsn(None, path, {})


def test_unreadable_dsn_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated, because the CI runs as root and root reads a mode-000 file anyway."""

    def denied(self: Path, encoding: str | None = None) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    path = tmp_path / "dsn"
    with pytest.raises(DsnError, match=f"cannot read DSN file {path}: Permission denied"):
        resolve_dsn(None, path, {})


def warnings_reading(path: Path, env: dict[str, str] | None = None) -> list[MutableMapping[str, Any]]:
    with structlog.testing.capture_logs() as logs:
        assert resolve_dsn(None, None if env else path, env or {}) == "host=db"
    return [entry for entry in logs if entry["log_level"] == "warning"]


def test_a_dsn_file_others_can_read_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "dsn"
    path.write_text("host=db\n")
    path.chmod(0o644)
    assert warnings_reading(path) == [
        {
            "event": "DSN file is readable by group or others",
            "log_level": "warning",
            "path": str(path),
            "mode": "0644",
            "fix": f"chmod 600 {path}",
        }
    ]
    assert warnings_reading(path) == []  # once per file and mode, not at every connect
    path.chmod(0o604)
    assert len(warnings_reading(path)) == 1


def test_a_private_dsn_file_is_quiet(tmp_path: Path) -> None:
    path = tmp_path / "dsn"
    path.write_text("host=db\n")
    for mode in (0o600, 0o400):
        path.chmod(mode)
        assert warnings_reading(path) == []


def test_the_systemd_credential_is_checked_too(tmp_path: Path) -> None:
    credential = tmp_path / "dsn"
    credential.write_text("host=db")
    credential.chmod(0o666)
    [warning] = warnings_reading(credential, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert warning["event"] == "systemd credential is readable by group or others"


@pytest.mark.parametrize(
    ("mode", "uid", "warn"),
    [
        (0o600, 1000, False),
        (0o400, 1000, False),
        (0o640, 1000, True),  # group-readable: like .pgpass and ssh keys, a warning
        (0o604, 1000, True),
        (0o644, 0, True),
        (0o640, 0, False),  # root's file for the group: a Kubernetes Secret mounted 0440 with fsGroup
        (0o440, 0, False),
        (0o660, 0, True),  # group-writable
    ],
)
def test_which_modes_warn(mode: int, uid: int, warn: bool) -> None:
    assert exposed(mode, uid) is warn


def test_dsn_file_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DsnError, match="Is a directory"):
        resolve_dsn(None, tmp_path, {})


def test_empty_dsn_file(tmp_path: Path) -> None:
    path = tmp_path / "dsn"
    path.write_text(" \n")
    with pytest.raises(DsnError, match="is empty"):
        resolve_dsn(None, path, {})


def test_binary_dsn_file(tmp_path: Path) -> None:
    path = tmp_path / "dsn"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(DsnError, match="cannot read DSN file"):
        resolve_dsn(None, path, {})


# --- connect_kwargs -----------------------------------------------------------------------------------


def test_connect_kwargs_adds_application_name_and_timeout() -> None:
    params = conninfo_to_dict(connect_kwargs("postgresql://u:pw@db:5433/x", 10.0))
    assert params == {
        "user": "u",
        "password": "pw",
        "host": "db",
        "port": "5433",
        "dbname": "x",
        "application_name": "partitiond",
        "connect_timeout": "10",
        **{key: str(value) for key, value in KEEPALIVES.items()},
    }


def test_connect_kwargs_keeps_the_users_keepalive_settings() -> None:
    params = conninfo_to_dict(connect_kwargs("host=db keepalives_idle=60 tcp_user_timeout=0", 10.0))
    assert (params["keepalives_idle"], params["tcp_user_timeout"]) == ("60", "0")
    assert params["keepalives_count"] == str(KEEPALIVES["keepalives_count"])


def test_connect_kwargs_keeps_users_application_name() -> None:
    params = conninfo_to_dict(connect_kwargs("host=db application_name=mine", 10.0))
    assert params["application_name"] == "mine"


def test_connect_kwargs_timeout_is_whole_seconds_at_least_one() -> None:
    assert conninfo_to_dict(connect_kwargs("", 0.2))["connect_timeout"] == "1"
    assert conninfo_to_dict(connect_kwargs("", 7.9))["connect_timeout"] == "7"
    assert conninfo_to_dict(connect_kwargs("connect_timeout=99", 5))["connect_timeout"] == "5"


def test_connect_kwargs_empty_dsn_leaves_the_rest_to_libpq() -> None:
    assert conninfo_to_dict(connect_kwargs("", 10)) == {
        "application_name": "partitiond",
        "connect_timeout": "10",
        **{key: str(value) for key, value in KEEPALIVES.items()},
    }


MALFORMED = [
    ("postgresql://u:s%zzecret@db/x", "s%zzecret"),
    ("postgresql://u:s%00ecret@db/x", "s%00ecret"),
    ("postgres://u:se cret@db/x", "se cret"),
    ("postgresql://u:hunter2@[db/x", "hunter2"),
    ("postgresql://u:hun/ter2@db/x?bogus=1", "hun/ter2"),
    ("postgresql://db/x?password=p%zzw", "p%zzw"),
    ("host=db password='hunter2", "hunter2"),
    ("host=db password=hunter2 garbage", "hunter2"),
    ("host=db password='hun ter2' bogus=1", "hun ter2"),
    ("host=db password=hun\\ ter2 nonsense", "hun\\ ter2"),
    ("host=db password=x garbage", "x"),
    ("postgresql://u:hunter%802@db/x", "hunter"),
]


@pytest.mark.parametrize(("dsn", "password"), MALFORMED)
def test_malformed_dsn_error_never_contains_password(dsn: str, password: str) -> None:
    with pytest.raises(DsnError) as caught:
        connect_kwargs(dsn, 10)
    message = str(caught.value)
    assert message.startswith("malformed DSN")
    assert password not in message
    assert password.replace("\\", "") not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_malformed_dsn_error_keeps_useful_detail() -> None:
    with pytest.raises(DsnError, match=r'invalid percent-encoded token: "\*\*\*"'):
        connect_kwargs("postgresql://u:s%zzecret@db/x", 10)
    with pytest.raises(DsnError, match='invalid connection option "bogus"'):
        connect_kwargs("host=db password=longsecret bogus=1", 10)


MALFORMED_TEMPLATES = [
    "postgresql://user:{}@[db/x",
    "postgresql://user:{}@db/x?bogus=1",
    "postgresql://db/x?password={}&zz",
    "host=db password={} garbage",
    "host=db password='{}",
    "password={} host=db nonsense",
]


@given(
    st.text(alphabet=st.characters(codec="ascii", exclude_characters="\x00"), min_size=4, max_size=20),
    st.sampled_from(MALFORMED_TEMPLATES),
)
def test_malformed_dsn_never_leaks_any_piece_of_a_generated_password(password: str, template: str) -> None:
    try:
        connect_kwargs(template.format(password), 10)
    except DsnError as exc:
        message = str(exc).removeprefix("malformed DSN")
        assert not any(password[i : i + 4] in message for i in range(len(password) - 3))


# --- redact / redact_dsn ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://user:secret@host", "postgresql://user:***@host"),
        (
            "postgres://user:secret@host:5432/db?sslmode=require",
            "postgres://user:***@host:5432/db?sslmode=require",
        ),
        ("postgresql://user:s%40cret@host/db", "postgresql://user:***@host/db"),
        ("postgresql://:secret@host", "postgresql://:***@host"),
        ("postgresql://user:p@ss@host/db", "postgresql://user:***@host/db"),
        ("connect to postgresql://u:pw@h/db failed", "connect to postgresql://u:***@h/db failed"),
        (
            "postgresql://host/db?password=secret&sslmode=require",
            "postgresql://host/db?password=***&sslmode=require",
        ),
        ("host=db password=secret user=u", "host=db password=*** user=u"),
        ("host=db password='se cret' user=u", "host=db password=*** user=u"),
        ("host=db password='it\\'s' user=u", "host=db password=*** user=u"),
        ("host=db password=se\\ cret user=u", "host=db password=*** user=u"),
        ("host=db password = secret", "host=db password = ***"),
        ("PGPASSWORD=secret psql", "PGPASSWORD=*** psql"),
        ("Password=secret", "Password=***"),
    ],
)
def test_redact_masks_passwords(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://user@host/db",
        "postgresql://host:5432/db",
        "host=db user=u dbname=x",
        "password reset required",
        "the password_file=/etc/x stays",
        "mail admin@example.com about it",
        "",
    ],
)
def test_redact_leaves_other_text_alone(text: str) -> None:
    assert redact(text) == text


def test_redact_dsn_parses_when_possible() -> None:
    assert redact_dsn("postgresql://u:s%40c@db/x") == "user=u password=*** dbname=x host=db"
    assert redact_dsn("host=db password='a b'") == "password=*** host=db"
    assert redact_dsn("host=db user=u") == "user=u host=db"
    assert redact_dsn("") == ""


def test_redact_dsn_masks_generously_when_unparseable() -> None:
    assert redact_dsn("postgresql://u:secret@db/x?bogus=1") == "postgresql://u:***@db/x?bogus=1"
    assert redact_dsn("postgres://u:se cret@db/x") == "postgres://u:***@db/x"
    assert redact_dsn("postgresql://u:hunter%80@db/x") == "postgresql://u:***@db/x"
    assert redact_dsn("host=db password='se cret") == "host=db password=***"
    # Unparseable key=value: everything up to the next keyword might still be the password.
    assert redact_dsn("host=db password=secret garbage user=u") == "host=db password=*** user=u"


@given(
    st.text(alphabet=st.characters(codec="ascii", categories=["L", "N", "P", "S"]), min_size=1, max_size=30)
)
def test_redact_dsn_hides_any_password(password: str) -> None:
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    for dsn in (f"host=db password='{quoted}' user=u", f"password='{quoted}'"):
        assert conninfo_to_dict(dsn)["password"] == password
        assert conninfo_to_dict(redact_dsn(dsn))["password"] == "***"


@given(st.text(alphabet=st.characters(codec="ascii", categories=["L", "N", "P", "S", "Zs"]), min_size=1))
def test_redact_masks_any_password_in_text(password: str) -> None:
    encoded = quote(password, safe="")
    assert redact(f"dsn postgresql://u:{encoded}@db/x ok") == "dsn postgresql://u:***@db/x ok"
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    assert redact(f"host=db password='{escaped}' user=u") == "host=db password=*** user=u"


def test_unreadable_systemd_credential_is_a_clear_error(tmp_path: Path) -> None:
    """A credentials directory we may not enter must give a DsnError, not a raw PermissionError."""
    locked = tmp_path / "creds"
    locked.mkdir()
    (locked / "dsn").write_text("host=db password=zz-secret\n")
    locked.chmod(0o000)
    try:
        if os.geteuid() == 0:  # root ignores permissions: check that the credential is read instead
            assert "zz-secret" in resolve_dsn(None, None, {"CREDENTIALS_DIRECTORY": str(locked)})
        else:
            with pytest.raises(DsnError, match="cannot read systemd credential"):
                resolve_dsn(None, None, {"CREDENTIALS_DIRECTORY": str(locked)})
    finally:
        locked.chmod(0o700)
