"""Settings loading: precedence, parsing, validation and the wording of errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from partitiond.config import (
    PARTITIOND_LEADER_LOCK_KEY,
    ConfigError,
    Settings,
    describe_changes,
    format_duration,
    load_settings,
)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "partitiond.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(cli: dict[str, object] | None = None, env: dict[str, str] | None = None) -> Settings:
    return load_settings(cli or {}, env or {}, None)


def config_error(cli: dict[str, object] | None = None, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(cli, env)
    return caught.value


def test_defaults() -> None:
    settings = load()
    assert settings == Settings()
    assert settings.schema == "public"
    assert settings.band_width == 1_000_000
    assert settings.interval == 1800.0
    assert settings.connect_timeout == 10.0
    assert settings.leader_lock_key == PARTITIOND_LEADER_LOCK_KEY
    assert settings.runway_seconds == 3600.0
    assert settings.runway_warning_seconds == 3600.0
    assert settings.metrics_endpoint == ("127.0.0.1", 9187)


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'band_width = 10\nschema = "from_file"\nmax_bands_ahead = 3\n')
    env = {"PARTITIOND_BAND_WIDTH": "20", "PARTITIOND_SCHEMA": "from_env"}
    settings = load_settings({"band_width": 30}, env, path)
    assert settings.band_width == 30
    assert settings.schema == "from_env"
    assert settings.max_bands_ahead == 3
    assert settings.lock_attempts == 5


def test_config_file_from_env(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'interval = "1h"\n')
    assert load(env={"PARTITIOND_CONFIG": str(path)}).interval == 3600.0


def test_explicit_config_file_beats_env(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "lock_attempts = 9\n")
    env = {"PARTITIOND_CONFIG": str(tmp_path / "missing.toml")}
    assert load_settings({}, env, path).lock_attempts == 9


def test_none_in_cli_counts_as_not_given() -> None:
    assert load({"interval": None}, {"PARTITIOND_INTERVAL": "5m"}).interval == 300.0


def test_unknown_cli_key_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="band_widht"):
        load({"band_widht": 5})


def test_unknown_and_foreign_env_vars_are_ignored() -> None:
    env = {"PARTITIOND_PG_BINDIR": "/usr/lib/postgresql/15/bin", "PARTITIOND_NONSENSE": "x"}
    assert load(env=env) == Settings()


def test_dsn_and_dsn_file_from_env() -> None:
    settings = load(env={"PARTITIOND_DSN": "host=db", "PARTITIOND_DSN_FILE": "/run/secrets/dsn"})
    assert settings.dsn == "host=db"
    assert settings.dsn_file == Path("/run/secrets/dsn")


def test_dsn_is_not_in_repr() -> None:
    settings = Settings(dsn="postgresql://u:hunter2@db/x")
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1.5s", 1.5),
        ("90", 90.0),
        ("2.5", 2.5),
        (" 45S ", 45.0),
    ],
)
def test_duration_strings(text: str, seconds: float) -> None:
    assert load(env={"PARTITIOND_STATEMENT_TIMEOUT": text}).statement_timeout == seconds


def test_durations_from_toml_numbers_and_strings(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'interval = 600\nlock_timeout = 0.25\nretry_budget = "1m"\n')
    settings = load_settings({}, {}, path)
    assert (settings.interval, settings.lock_timeout, settings.retry_budget) == (600.0, 0.25, 60.0)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1d", "m", "30x", "1h-5m", "", "true"])
def test_bad_durations(text: str) -> None:
    error = config_error(env={"PARTITIOND_INTERVAL": text})
    assert error.option == "interval"
    assert f'PARTITIOND_INTERVAL must be a positive duration (e.g. 30m), got "{text}"' == str(error)


def test_negative_duration_message_names_the_flag() -> None:
    error = config_error({"interval": "-5"})
    assert str(error) == '--interval must be a positive duration (e.g. 30m), got "-5"'


@pytest.mark.parametrize(("text", "value"), [("1_000_000", 1_000_000), ("1000000", 1_000_000), ("+7", 7)])
def test_int_strings(text: str, value: int) -> None:
    assert load(env={"PARTITIOND_BAND_WIDTH": text}).band_width == value


@pytest.mark.parametrize("text", ["1e6", "1.0", "1__0", "_1", "0x10", "", "ten"])
def test_bad_int_strings(text: str) -> None:
    assert config_error(env={"PARTITIOND_BAND_WIDTH": text}).option == "band_width"


def test_toml_int_field_rejects_bool_and_float(tmp_path: Path) -> None:
    for text in ("band_width = true\n", "band_width = 5.0\n"):
        with pytest.raises(ConfigError, match=r"band_width in .*partitiond\.toml must be a positive integer"):
            load_settings({}, {}, write_toml(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("FALSE", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("no", False),
        ("on", True),
        ("off", False),
    ],
)
def test_bool_strings(text: str, value: bool) -> None:
    assert load(env={"PARTITIOND_PROTOCOL_LOCK": text}).protocol_lock is value


def test_bad_bool() -> None:
    error = config_error(env={"PARTITIOND_PROTOCOL_LOCK": "maybe"})
    assert str(error).startswith("PARTITIOND_PROTOCOL_LOCK must be a boolean")


def test_originators_from_env_and_toml(tmp_path: Path) -> None:
    assert load(env={"PARTITIOND_ORIGINATORS": "200, 100,200"}).originators == (100, 200)
    assert load(env={"PARTITIOND_ORIGINATORS": ""}).originators == ()
    path = write_toml(tmp_path, "originators = [3, 1]\n")
    assert load_settings({}, {}, path).originators == (1, 3)


@pytest.mark.parametrize("text", ["2147483648", "1,x", "1.5", "-5", "100,-1", "-2147483648"])
def test_bad_originators(text: str) -> None:
    assert config_error(env={"PARTITIOND_ORIGINATORS": text}).option == "originators"


ORIGINATOR_RULE = "must be a comma-separated list of originator ids from 0 to 2147483647 (e.g. 100,200)"


def test_a_negative_originator_is_rejected_from_every_source(tmp_path: Path) -> None:
    """Node ids start at 0: -5 used to make partitiond create gateway_envelopes_meta_o-5."""
    error = config_error(cli={"originators": ("100", "-5")})
    assert (error.option, str(error)) == ("originators", f'--originator {ORIGINATOR_RULE}, got "100,-5"')
    error = config_error(env={"PARTITIOND_ORIGINATORS": "-5"})
    assert str(error) == f'PARTITIOND_ORIGINATORS {ORIGINATOR_RULE}, got "-5"'
    path = write_toml(tmp_path, "originators = [100, -5]\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, {}, path)
    assert str(caught.value) == f'originators in {path} {ORIGINATOR_RULE}, got "100,-5"'
    with pytest.raises(ConfigError, match="originators must be"):
        Settings(originators=(-1,))
    assert load(env={"PARTITIOND_ORIGINATORS": "0,2147483647"}).originators == (0, 2_147_483_647)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("band_width", "0"),
        ("fill_threshold", "0"),
        ("fill_threshold", "1"),
        ("fill_threshold", "nan"),
        ("max_bands_ahead", "0"),
        ("max_creates_per_run", "0"),
        ("interval", "0"),
        ("jitter", "-1s"),
        ("runway", "0"),
        ("probe_interval", "-1"),
        ("max_jump_bands", "0"),
        ("lock_timeout", "0"),
        ("lock_timeout", "61s"),
        ("statement_timeout", "0"),
        ("hold_budget", "0"),
        ("hold_budget", "2s"),
        ("hold_timeout", "0"),
        ("idle_in_transaction_timeout", "10ms"),
        ("slow_path_runway", "-1s"),
        ("connect_timeout", "500ms"),
        ("connect_timeout", "1.5"),
        ("protocol_lock_key", str(2**63)),
        ("lock_attempts", "0"),
        ("retry_budget", "-1"),
        ("leader_lock_key", str(-(2**63) - 1)),
        ("metrics_address", "localhost"),
        ("metrics_address", "localhost:65536"),
        ("metrics_address", "localhost:http"),
        ("metrics_textfile", "/var/lib/node_exporter/partitiond.txt"),
        ("shutdown_timeout", "0"),
        ("runway_warning", "-1m"),
        ("log_format", "xml"),
        ("log_level", "trace"),
        ("schema", ""),
        ("schema", "x" * 64),
    ],
)
def test_out_of_range_values_name_the_option(name: str, value: str) -> None:
    error = config_error({name: value})
    assert error.option == name
    assert str(error).startswith("--" + name.replace("_", "-") + " must be ")
    assert str(error).endswith(f'got "{value}"')


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("lock_timeout", "60s", 60.0),
        ("connect_timeout", "1", 1.0),
        ("jitter", "0", 0.0),
        ("probe_interval", "0", 0.0),
        ("retry_budget", "0", 0.0),
        ("protocol_lock_key", str(-(2**63)), -(2**63)),
        ("metrics_address", "", ""),
        ("metrics_address", "[::1]:0", "[::1]:0"),
        ("log_level", "DEBUG", "debug"),
        ("log_format", "Json", "json"),
    ],
)
def test_boundary_values_are_accepted(name: str, value: str, expected: object) -> None:
    assert getattr(load({name: value}), name) == expected


def test_metrics_endpoint() -> None:
    assert load({"metrics_address": ""}).metrics_endpoint is None
    assert load({"metrics_address": "[::1]:9000"}).metrics_endpoint == ("::1", 9000)
    assert load({"metrics_address": ":9000"}).metrics_endpoint == ("", 9000)


def test_runway_overrides() -> None:
    settings = load({"runway": "3h", "runway_warning": "90m", "interval": "10m"})
    assert (settings.runway_seconds, settings.runway_warning_seconds) == (10800.0, 5400.0)
    assert load({"interval": "10m"}).runway_seconds == 1200.0


def test_jitter_must_stay_below_interval_blames_what_the_user_set() -> None:
    error = config_error({"jitter": "1h"})
    assert (error.option, str(error)) == ("jitter", "--jitter must be less than interval (30m), got 1h")
    error = config_error(env={"PARTITIOND_INTERVAL": "20s"})
    assert error.option == "interval"
    assert str(error) == "PARTITIOND_INTERVAL must be greater than jitter (30s), got 20s"


def test_the_hold_budget_must_stay_below_the_hold_timeout() -> None:
    error = config_error({"hold_budget": "600ms"})
    assert (error.option, str(error)) == (
        "hold_budget",
        "--hold-budget must be less than hold_timeout (500ms), got 600ms",
    )
    assert load({"hold_budget": "600ms", "hold_timeout": "1s"}).hold_budget == 0.6


def test_probe_interval_must_stay_below_interval_unless_off() -> None:
    error = config_error({"interval": "1m", "jitter": "0", "probe_interval": "2m"})
    assert error.option == "probe_interval"
    assert load({"interval": "1m", "jitter": "0", "probe_interval": "0"}).probe_interval == 0.0


def test_file_values_are_labelled_with_the_path(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_jump_bands = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, {}, path)
    assert str(caught.value) == f"max_jump_bands in {path} must be an integer >= 1, got 0"


def test_unknown_toml_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "band_widht = 5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, {}, path)
    assert caught.value.option == "config"
    assert str(caught.value) == f'unknown key "band_widht" in {path}; did you mean "band_width"?'


def test_unknown_toml_key_with_dashes_suggests_snake_case(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='did you mean "lock_timeout"'):
        load_settings({}, {}, write_toml(tmp_path, 'lock-timeout = "1s"\n'))


def test_unknown_toml_key_without_close_match_lists_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid keys: dsn, dsn_file, schema"):
        load_settings({}, {}, write_toml(tmp_path, "zzzzzz = 1\n"))


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"cannot read config file {path}: No such file or directory"):
        load_settings({}, {}, path)


def test_config_file_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot read config file {tmp_path}: Is a directory"):
        load_settings({}, {}, tmp_path)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "interval = \n")
    with pytest.raises(ConfigError, match=f"config file {path} is not valid TOML: "):
        load_settings({}, {}, path)


def test_dsn_value_is_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, {}, write_toml(tmp_path, "dsn = 12345\n"))
    assert "12345" not in str(caught.value)
    assert "<hidden>" in str(caught.value)


def test_direct_construction_validates_and_normalises() -> None:
    settings = Settings(originators=(3, 1, 3), interval=60, jitter=0, probe_interval=0)
    assert settings.originators == (1, 3)
    assert isinstance(settings.interval, float)
    with pytest.raises(ConfigError, match="interval must be a positive duration"):
        Settings(interval=-1)
    with pytest.raises(ConfigError, match="jitter must be less than interval"):
        dataclasses.replace(Settings(), interval=10.0)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().interval = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1800, "30m"),
        (0.5, "500ms"),
        (5400, "1h30m"),
        (0, "0s"),
        (1, "1s"),
        (90, "1m30s"),
        (1.25, "1.25s"),
        (3600, "1h"),
        (3601, "1h1s"),
        (-30, "-30s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=1, max_value=10**9))
def test_format_duration_round_trips_whole_milliseconds(millis: int) -> None:
    seconds = millis / 1000
    parsed = load({"interval": format_duration(seconds), "jitter": 0, "probe_interval": 0}).interval
    assert parsed == pytest.approx(seconds)


def test_describe_changes_renders_and_redacts() -> None:
    old = Settings(dsn="postgresql://u:oldpw@db/x")
    new = dataclasses.replace(old, dsn="postgresql://u:newpw@db/x", interval=600.0, originators=(1, 2))
    changes = describe_changes(old, new)
    assert changes["interval"] == ("30m", "10m")
    assert changes["originators"] == ("all", "1,2")
    assert set(changes) == {"dsn", "interval", "originators"}
    assert "oldpw" not in str(changes) and "newpw" not in str(changes)
    assert changes["dsn"][1] == "user=u password=*** dbname=x host=db"


def test_describe_changes_unset_and_unchanged() -> None:
    assert describe_changes(Settings(), Settings()) == {}
    changes = describe_changes(Settings(), Settings(runway=7200.0, metrics_textfile=Path("/t/p.prom")))
    assert changes == {"runway": ("unset", "2h"), "metrics_textfile": ("unset", "/t/p.prom")}
