"""Settings: one frozen object built from flags, environment, a TOML file and defaults, in that order.

Every value is checked once, here, so the rest of the daemon can trust it.  Error messages name the option
the way the user wrote it (``--band-width``, ``PARTITIOND_BAND_WIDTH`` or ``band_width in <file>``), because
"invalid band_width" is useless to someone who set it in a systemd drop-in they forgot about.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from partitiond.dsn import redact_dsn

ENV_PREFIX = "PARTITIOND_"
CONFIG_ENV = "PARTITIOND_CONFIG"
INT4 = (-(2**31), 2**31 - 1)
INT8 = (-(2**63), 2**63 - 1)
# pg_try_advisory_lock key that elects the one replica doing DDL when several sidecars share a database.
# The number is arbitrary; it only has to be stable across releases and unlikely to collide with keys
# other applications pick (so not a small integer).
PARTITIOND_LEADER_LOCK_KEY = 7_161_636_420_501_652_068

# Flags whose name is not simply the field's: the repeatable --originator fills `originators`.
FLAG_NAMES = {"originators": "--originator"}

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(Exception):
    """A setting is missing, malformed or out of range.

    ``option`` is the field name (``band_width``, or ``config`` for the file itself) for programs; the
    message names the option as the user wrote it, for people.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything partitiond can be told.  Durations are float seconds; construction validates."""

    dsn: str | None = field(default=None, repr=False)
    dsn_file: Path | None = None
    schema: str = "public"
    originators: tuple[int, ...] = ()
    band_width: int = 1_000_000
    fill_threshold: float = 0.7
    max_bands_ahead: int = 1
    max_creates_per_run: int = 100
    interval: float = 1800.0
    jitter: float = 30.0
    runway: float | None = None
    probe_interval: float = 60.0
    max_jump_bands: int = 10
    lock_timeout: float = 0.5
    statement_timeout: float = 30.0
    hold_budget: float = 0.05
    hold_timeout: float = 0.5
    idle_in_transaction_timeout: float = 2.0
    slow_path_runway: float = 600.0
    reader_wait: float = 0.5
    connect_timeout: float = 10.0
    protocol_lock: bool = True
    protocol_lock_key: int = 5
    lock_attempts: int = 5
    retry_budget: float = 30.0
    leader_lock_key: int = PARTITIOND_LEADER_LOCK_KEY
    metrics_address: str = "127.0.0.1:9187"
    metrics_textfile: Path | None = None
    shutdown_timeout: float = 10.0
    runway_warning: float | None = None
    log_format: LogFormat = "auto"
    log_level: LogLevel = "info"

    def __post_init__(self) -> None:
        """Validate and normalise (e.g. ``originators=[2, 1]`` becomes ``(1, 2)``), so no invalid or
        half-typed Settings can exist, whether built by :func:`load_settings` or by hand in a test."""
        for spec in fields(self):
            object.__setattr__(self, spec.name, _coerce(spec.name, getattr(self, spec.name), _Origin()))
        _check_relations(_as_dict(self), _Origin())

    @property
    def runway_seconds(self) -> float:
        """How far ahead partitions must reach; by default two intervals, so one missed run is harmless."""
        return self.runway if self.runway is not None else 2 * self.interval

    @property
    def runway_warning_seconds(self) -> float:
        """``check`` warns below this runway; by default two intervals."""
        return self.runway_warning if self.runway_warning is not None else 2 * self.interval

    @property
    def metrics_endpoint(self) -> tuple[str, int] | None:
        """``(host, port)`` to serve /metrics on, or None when disabled.  IPv6 brackets are removed; an
        empty host means every interface."""
        if not self.metrics_address:
            return None
        host, port = _split_address(self.metrics_address)
        return host, port


# --- value parsers: raw (env string, TOML or click value) -> typed value, ValueError when malformed ------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _finite(number: float) -> float:
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


def _parse_float(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise TypeError("not a number")
    return _finite(float(raw))


def _parse_duration(raw: object) -> float:
    """Seconds from ``1h30m``/``1h 30m``/``500ms``/``30``; bare numbers are seconds."""
    if not isinstance(raw, str):
        return _parse_float(raw)
    text = "".join(raw.lower().split())
    try:
        return _finite(float(text))
    except ValueError:
        pass
    parts = list(_DURATION_PART.finditer(text))
    if not parts or "".join(p.group(0) for p in parts) != text:
        raise ValueError("not a duration")
    return sum(float(p.group(1)) * _UNIT_SECONDS[p.group(2)] for p in parts)


def _parse_int(raw: object) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and _INT_TEXT.fullmatch(raw.strip()):
        return int(raw.strip())
    raise ValueError("not an integer")


def _parse_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = raw.strip().lower() if isinstance(raw, str) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError("not a boolean")


def _parse_str(raw: object) -> str:
    if not isinstance(raw, str):
        raise TypeError("not a string")
    return raw


def _parse_path(raw: object) -> Path:
    if isinstance(raw, Path):
        return raw
    text = _parse_str(raw)
    if not text:
        raise ValueError("empty path")
    return Path(text)


def _parse_originators(raw: object) -> tuple[int, ...]:
    """``"100,200"`` from the environment or a list from TOML/click; sorted and de-duplicated."""
    if isinstance(raw, str):
        items: list[object] = [item for item in raw.replace(" ", "").split(",") if item]
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        raise TypeError("not a list")
    return tuple(sorted({_parse_int(item) for item in items}))


def _choice(*options: str) -> Callable[[object], object]:
    def parse(raw: object) -> str:
        text = _parse_str(raw).strip().lower()
        if text not in options:
            raise ValueError("not an option")
        return text

    return parse


def _optional(parse: Callable[[object], object]) -> Callable[[object], object]:
    return lambda raw: None if raw is None else parse(raw)


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("bad address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _parse_address(raw: object) -> str:
    address = _parse_str(raw).strip()
    if address:
        _split_address(address)
    return address


def format_duration(seconds: float) -> str:
    """Render seconds the way users write them (1800 -> "30m", 0.5 -> "500ms", 5400 -> "1h30m")."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:g}ms" if seconds else "0s"
    total_ms = round(seconds * 1000)
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, millis = divmod(rest, 1000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if millis:
        parts.append(f"{whole}.{millis:03d}".rstrip("0") + "s")
    elif whole:
        parts.append(f"{whole}s")
    return "".join(parts)


# --- per-field rules ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    """How to read one field, what a valid value looks like (``want`` completes "must be ...") and how to
    show it in reload logs."""

    parse: Callable[[object], object]
    ok: Callable[[Any], bool]
    want: str
    render: Callable[[Any], str] = str
    secret: bool = False


def _duration(ok: Callable[[float], bool], want: str, *, optional: bool = False) -> _Rule:
    parse = _optional(_parse_duration) if optional else _parse_duration
    return _Rule(parse, lambda v: v is None or ok(v), want, render=format_duration)


def _count(want: str = "an integer >= 1") -> _Rule:
    return _Rule(_parse_int, lambda v: v >= 1, want)


def _lock_key() -> _Rule:
    return _Rule(_parse_int, lambda v: INT8[0] <= v <= INT8[1], "an int8 advisory lock key")


def _anything(_value: object) -> bool:
    return True


_RULES: dict[str, _Rule] = {
    "dsn": _Rule(_optional(_parse_str), _anything, "a connection string", secret=True),
    "dsn_file": _Rule(_optional(_parse_path), _anything, "a file path"),
    "schema": _Rule(
        lambda raw: _parse_str(raw).strip(), lambda v: 0 < len(v.encode()) <= 63, "a name of 1 to 63 bytes"
    ),
    "originators": _Rule(
        _parse_originators,
        lambda v: all(0 <= o <= INT4[1] for o in v),
        f"a comma-separated list of originator ids from 0 to {INT4[1]} (e.g. 100,200)",
        render=lambda v: ",".join(map(str, v)) or "all",
    ),
    "band_width": _Rule(_parse_int, lambda v: 0 < v <= INT8[1], "a positive integer (e.g. 1_000_000)"),
    "fill_threshold": _Rule(_parse_float, lambda v: 0 < v < 1, "a number strictly between 0 and 1"),
    "max_bands_ahead": _count(),
    "max_creates_per_run": _count(),
    "interval": _duration(lambda v: v > 0, "a positive duration (e.g. 30m)"),
    "jitter": _duration(lambda v: v >= 0, "a duration >= 0 (e.g. 30s)"),
    "runway": _duration(lambda v: v > 0, "a positive duration (e.g. 1h)", optional=True),
    "probe_interval": _duration(lambda v: v >= 0, "a duration >= 0, 0 to disable (e.g. 60s)"),
    "max_jump_bands": _count(),
    "lock_timeout": _duration(lambda v: 0 < v <= 60, "a duration above 0 and at most 60s (e.g. 500ms)"),
    "statement_timeout": _duration(lambda v: v > 0, "a positive duration (e.g. 30s)"),
    "hold_budget": _duration(lambda v: 0.001 <= v <= 1, "a duration from 1ms to 1s (e.g. 50ms)"),
    "hold_timeout": _duration(lambda v: 0.001 <= v <= 60, "a duration from 1ms to 60s (e.g. 500ms)"),
    "idle_in_transaction_timeout": _duration(lambda v: 0.1 <= v <= 600, "a duration from 100ms to 10m"),
    "slow_path_runway": _duration(lambda v: v >= 0, "a duration >= 0 (e.g. 10m)"),
    "reader_wait": _duration(lambda v: 0 <= v <= 60, "a duration from 0 to 60s (e.g. 500ms)"),
    "connect_timeout": _duration(
        lambda v: v >= 1 and v == int(v), "a whole number of seconds >= 1 (e.g. 10s)"
    ),
    "protocol_lock": _Rule(_parse_bool, _anything, "a boolean (true/false, yes/no, on/off, 1/0)"),
    "protocol_lock_key": _lock_key(),
    "lock_attempts": _count(),
    "retry_budget": _duration(lambda v: v >= 0, "a duration >= 0 (e.g. 30s)"),
    "leader_lock_key": _lock_key(),
    "metrics_address": _Rule(_parse_address, _anything, 'host:port with a port of 0-65535, or "" to disable'),
    "metrics_textfile": _Rule(
        _optional(_parse_path),
        lambda v: v is None or v.suffix == ".prom",
        "a path ending in .prom (node_exporter ignores other files)",
    ),
    "shutdown_timeout": _duration(lambda v: v > 0, "a positive duration (e.g. 10s)"),
    "runway_warning": _duration(lambda v: v > 0, "a positive duration (e.g. 1h)", optional=True),
    "log_format": _Rule(_choice("auto", "json", "console"), _anything, "one of auto, json, console"),
    "log_level": _Rule(
        _choice("debug", "info", "warning", "error"), _anything, "one of debug, info, warning, error"
    ),
}


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where each user-given value came from, for error messages: field -> (label, raw value)."""

    given: Mapping[str, tuple[str, object]] = field(default_factory=dict)

    def label(self, name: str) -> str:
        return self.given[name][0] if name in self.given else name

    def shown(self, name: str, value: object) -> str:
        if _RULES[name].secret:
            return "<hidden>"
        raw = self.given[name][1] if name in self.given else value
        if isinstance(raw, list | tuple):  # a repeated flag: show the values as the user typed them
            raw = ",".join(map(str, raw))
        return f'"{raw}"' if isinstance(raw, str) else str(raw)


def _coerce(name: str, raw: object, origin: _Origin) -> Any:
    rule = _RULES[name]
    try:
        value = rule.parse(raw)
        valid = rule.ok(value)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        message = f"{origin.label(name)} must be {rule.want}, got {origin.shown(name, raw)}"
        raise ConfigError(name, message)
    return value


def _check_relations(values: Mapping[str, Any], origin: _Origin) -> None:
    """Rules that tie two fields together; the blame goes to the one the user actually set."""
    _check_below(values, origin, "jitter", "interval")
    _check_below(values, origin, "hold_budget", "hold_timeout")
    if values["probe_interval"] > 0:
        _check_below(values, origin, "probe_interval", "interval")


def _check_below(values: Mapping[str, Any], origin: _Origin, small: str, big: str) -> None:
    if values[small] < values[big]:
        return
    small_text, big_text = format_duration(values[small]), format_duration(values[big])
    if small in origin.given or big not in origin.given:
        message = (
            f"{origin.label(small)} must be less than {origin.label(big)} ({big_text}), got {small_text}"
        )
        raise ConfigError(small, message)
    message = f"{origin.label(big)} must be greater than {origin.label(small)} ({small_text}), got {big_text}"
    raise ConfigError(big, message)


def _as_dict(settings: Settings) -> dict[str, Any]:
    return {spec.name: getattr(settings, spec.name) for spec in fields(settings)}


_DEFAULTS = Settings()


# --- loading ------------------------------------------------------------------------------------------


def load_settings(cli: Mapping[str, object], env: Mapping[str, str], config_file: Path | None) -> Settings:
    """Merge flags > ``PARTITIOND_*`` environment > TOML file > defaults into validated Settings.

    ``cli`` holds only the options the user gave, keyed by field name (a None value counts as not given).
    ``config_file`` falls back to ``$PARTITIOND_CONFIG``.  Unknown ``PARTITIOND_*`` variables are ignored
    because other tools (and partitiond's own tests) share the prefix.
    """
    if config_file is None and env.get(CONFIG_ENV):
        config_file = Path(env[CONFIG_ENV])
    layers: dict[str, tuple[str, object]] = {}
    if config_file is not None:
        layers.update({k: (f"{k} in {config_file}", v) for k, v in _read_toml(config_file).items()})
    for name in _RULES:
        if (text := env.get(ENV_PREFIX + name.upper())) is not None:
            layers[name] = (ENV_PREFIX + name.upper(), text)
    for name, value in cli.items():
        if name not in _RULES:
            raise ValueError(f"load_settings: {name!r} is not a Settings field")
        if value is not None:
            layers[name] = (FLAG_NAMES.get(name, "--" + name.replace("_", "-")), value)
    origin = _Origin(layers)
    values = {name: _coerce(name, raw, origin) for name, (_label, raw) in layers.items()}
    _check_relations(_as_dict(_DEFAULTS) | values, origin)
    return replace(_DEFAULTS, **values)


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError("config", f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"config file {path} is not valid TOML: {exc}") from None
    for key in data:
        if key not in _RULES:
            raise ConfigError("config", _unknown_key_message(key, path))
    return data


def _unknown_key_message(key: str, path: Path) -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), list(_RULES), n=1)
    hint = f'did you mean "{close[0]}"?' if close else f"valid keys: {', '.join(_RULES)}"
    return f'unknown key "{key}" in {path}; {hint}'


# --- rendering ----------------------------------------------------------------------------------------


def describe_changes(old: Settings, new: Settings) -> dict[str, tuple[str, str]]:
    """Changed fields rendered for the SIGHUP reload log, with the DSN's password masked."""
    before, after = _as_dict(old), _as_dict(new)
    return {
        name: (_render(name, before[name]), _render(name, after[name]))
        for name in before
        if before[name] != after[name]
    }


def _render(name: str, value: object) -> str:
    if value is None:
        return "unset"
    if _RULES[name].secret:
        return redact_dsn(str(value))
    return _RULES[name].render(value)
