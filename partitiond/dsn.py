"""Where the DSN comes from, how it becomes a conninfo string, and how it is kept out of logs.

The DSN is the one secret partitiond handles.  It may arrive on the command line, in a file mounted from a
Kubernetes Secret, or through systemd's ``LoadCredential=``; everything that might print it (error messages,
SIGHUP change logs, log lines) goes through :func:`redact` or :func:`redact_dsn` first.  A DSN file that
other users may read is logged as a warning (once per file and mode), as ssh and libpq's ``.pgpass`` do.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = structlog.get_logger("partitiond.dsn")

APPLICATION_NAME = "partitiond"
MASK = "***"
CREDENTIAL_NAME = "dsn"
# A dead peer is noticed within about 5 + 2 x 3 = 11 s of silence, or 10 s of unacknowledged data.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}

# scheme://user:PASSWORD@ — up to the last '@' before whitespace: masking too much beats masking too little.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)(\S*)(@)")
# ...?password=PASSWORD&... in a URL's query string.
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)([^&\s#]*)")
# password=PASSWORD or password = 'PASS WORD' in key=value conninfo (also PGPASSWORD=...).
_KV_PASSWORD = re.compile(r"(?i)(?<![?&])\b((?:pg)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:[^\s'\\]|\\.)+)")
# A token libpq quotes in its error messages.
_QUOTED = re.compile(r'"[^"]*"')
# Lenient readings of a DSN libpq refuses to parse, which over-approximate where the password might be:
# a URL's userinfo up to the last '@', a query value up to '&', a key=value value up to the next keyword.
_URL_USERINFO = re.compile(r"(?is)^\s*[a-z][a-z0-9+.-]*://(.*)@")
_LOOSE_QUERY_PASSWORD = re.compile(r"(?is)[?&]password=([^&]*)")
_LOOSE_KV_PASSWORD = re.compile(r"(?is)\bpassword\s*=\s*(.*?)(?=\s+[\w.-]+\s*=|\s*$)")
# How psycopg reports a DSN libpq cannot parse (a %-escape that is not UTF-8 surfaces as a decode error).
_REJECTED = (psycopg.ProgrammingError, UnicodeDecodeError)
# Permission bits of a secret file that let other users in: any for group or others, except that a file
# owned by root may be group-readable (u=rw,g=r or less), as libpq allows for root-owned key files and as a
# Kubernetes Secret is mounted (defaultMode 0440 with the pod's fsGroup).
_OTHERS = 0o077
_ROOT_MAY = 0o040
_warned: set[tuple[str, int]] = set()


class DsnError(Exception):
    """The DSN could not be read or parsed; the message never contains the password."""


def resolve_dsn(settings_dsn: str | None, dsn_file: Path | None, env: Mapping[str, str]) -> str:
    """Pick the DSN: explicit value, then the DSN file, then systemd's credential, then "".

    An empty result is deliberate: libpq then falls back to the ``PG*`` environment variables and
    ``~/.pgpass``, which is how many hosts are already configured.  An empty ``settings_dsn`` counts as
    unset, so ``PARTITIOND_DSN=`` does not hide a DSN file.
    """
    if settings_dsn:
        return settings_dsn
    if dsn_file is not None:
        return _read_secret_file(dsn_file, "DSN file")
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials:
        credential = Path(credentials) / CREDENTIAL_NAME
        try:
            credential.lstat()
        except FileNotFoundError:
            return ""  # systemd passes other credentials, or none named "dsn": not ours to complain about
        except OSError as exc:  # e.g. a directory we may not search: say so, never fall back silently
            raise DsnError(f"cannot read systemd credential {credential}: {exc.strerror or exc}") from None
        return _read_secret_file(credential, "systemd credential")
    return ""


def _read_secret_file(path: Path, what: str) -> str:
    """Read a one-line secret; an empty file is an error because it is almost always a broken mount."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise DsnError(f"cannot read {what} {path}: {reason}") from None
    if not text:
        raise DsnError(f"{what} {path} is empty")
    _warn_if_exposed(path, what)
    return text


def exposed(mode: int, uid: int) -> bool:
    """Whether a secret file with this mode and owner can be read or changed by other users."""
    allowed = _ROOT_MAY if uid == 0 else 0
    return bool(mode & _OTHERS & ~allowed)


def _warn_if_exposed(path: Path, what: str) -> None:
    """Log once per file and mode when others may read the DSN: a warning, not a refusal."""
    try:
        info = path.stat()
    except OSError:
        return
    mode = info.st_mode & 0o7777
    if not exposed(mode, info.st_uid) or (str(path), mode) in _warned:
        return
    _warned.add((str(path), mode))
    log.warning(
        f"{what} is readable by group or others",
        path=str(path),
        mode=f"{mode:04o}",
        fix=f"chmod 600 {shlex.quote(str(path))}",
    )


def connect_kwargs(dsn: str, connect_timeout: float) -> str:
    """Turn the user's DSN into the conninfo partitiond connects with.

    ``application_name`` makes partitiond's sessions recognisable in ``pg_stat_activity`` and lock graphs,
    but a name the user chose wins.  ``connect_timeout`` always comes from the settings (libpq wants whole
    seconds, and anything below 2 s is treated as 2 s by libpq anyway) so that one knob bounds every connect.
    TCP keepalives and ``tcp_user_timeout`` (:data:`KEEPALIVES`) are on unless the DSN sets them: libpq
    sends none by default, so a dead server or a cut network would otherwise go unnoticed for hours while
    partitiond waits on the socket.  (The server side needs no keepalive to release key 5: the band
    transaction's ``idle_in_transaction_session_timeout`` and statement timeouts end such a session.)
    """
    params = _parse(dsn)
    extra: dict[str, str | int] = {"connect_timeout": int(max(1, connect_timeout))}
    if "application_name" not in params:
        extra["application_name"] = APPLICATION_NAME
    extra.update({key: value for key, value in KEEPALIVES.items() if key not in params})
    try:
        return make_conninfo(dsn, **extra)
    except _REJECTED as exc:
        raise _malformed(dsn, exc) from None


def _parse(dsn: str) -> dict[str, str | int | None]:
    try:
        return conninfo_to_dict(dsn)
    except _REJECTED as exc:
        raise _malformed(dsn, exc) from None


def _malformed(dsn: str, exc: Exception) -> DsnError:
    """Build the DsnError for a DSN libpq rejected.

    libpq quotes the offending token, and that token is often the password or a piece of it (a bad
    %-escape, the half of an unquoted password after a space), so a quoted token that overlaps where the
    password might be is masked whole; if any piece of a password candidate still shows, the detail is
    dropped.
    """
    spans = _password_spans(dsn)
    secrets = {variant for start, end in spans for variant in _variants(dsn[start:end].strip())}
    secrets.discard("")

    def overlaps(inner: str) -> bool:
        places = [m.start() for m in re.finditer(re.escape(inner), dsn)] if inner else []
        in_span = any(start < at + len(inner) and at < end for at in places for start, end in spans)
        return in_span or any(inner in secret or secret in inner for secret in secrets)

    def mask(token: re.Match[str]) -> str:
        return f'"{MASK}"' if overlaps(token.group(0)[1:-1]) else token.group(0)

    if isinstance(exc, UnicodeDecodeError):
        return DsnError("malformed DSN: a %-escape does not decode to UTF-8")
    detail = _QUOTED.sub(mask, redact(str(exc).strip()))
    if any(_reveals(detail, secret) for secret in secrets):
        return DsnError("malformed DSN (details withheld: they would reveal the password)")
    return DsnError(f"malformed DSN: {detail}")


def _reveals(detail: str, secret: str) -> bool:
    """Whether ``detail`` shows ``secret`` or a 4-character piece of it, or might: libpq does not escape
    the quotes around the tokens it cites, so a password containing '"' defeats token masking."""
    size = min(4, len(secret))
    return '"' in secret or any(secret[i : i + size] in detail for i in range(len(secret) - size + 1))


def _password_spans(dsn: str) -> list[tuple[int, int]]:
    """Where the password might sit in a DSN libpq could not parse, read as leniently as possible."""
    spans = [m.span(2) for m in _KV_PASSWORD.finditer(dsn)]
    spans += [m.span(1) for m in (*_LOOSE_KV_PASSWORD.finditer(dsn), *_LOOSE_QUERY_PASSWORD.finditer(dsn))]
    if (match := _URL_USERINFO.match(dsn)) and ":" in match.group(1):
        spans.append((match.start(1) + match.group(1).index(":") + 1, match.end(1)))
    return spans


def _mask_spans(text: str, spans: list[tuple[int, int]]) -> str:
    hidden = {index for start, end in spans for index in range(start, end)}
    runs = itertools.groupby(enumerate(text), key=lambda pair: pair[0] in hidden)
    return "".join(MASK if masked else "".join(char for _, char in run) for masked, run in runs)


def _variants(secret: str) -> Iterable[str]:
    """The password as written, %-decoded, and with conninfo quoting undone."""
    return (secret, unquote(secret), _unquote_kv(secret))


def _unquote_kv(value: str) -> str:
    """Undo conninfo quoting: strip the quotes and the backslash escapes."""
    if value.startswith("'"):
        value = value[1:-1] if len(value) > 1 and value.endswith("'") else value[1:]
    return re.sub(r"\\(.)", r"\1", value)


def redact(text: str) -> str:
    """Mask passwords in URLs and key=value conninfo inside arbitrary text, leaving the rest alone."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)
    text = _QUERY_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}", text)
    return _KV_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}", text)


def redact_dsn(dsn: str) -> str:
    """Render a DSN for humans with its password masked.

    Parsing catches every form libpq accepts (URL query parameters, escapes, odd spacing); in a DSN libpq
    rejects, everything that might be the password is masked, generously.
    """
    try:
        params = conninfo_to_dict(dsn)
    except _REJECTED:
        return _mask_spans(dsn, _password_spans(dsn))
    if "password" in params:
        params["password"] = MASK
    return make_conninfo("", **params)
