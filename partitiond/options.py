"""The settings each command takes, as click options: one definition per setting, shared by every command.

Every setting is a flag, an environment variable ``PARTITIOND_<NAME>`` and a key in an optional TOML file
(``--config``); flags win over the environment, which wins over the file.  Each command's ``--help`` lists
the settings it uses (groups defined once, in :data:`COMMAND_SETTINGS`).  Options are declared as plain
strings and parsed by :mod:`partitiond.config`, so a flag, a variable and a file key are validated by the
same code and produce the same messages.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from partitiond.config import ConfigError, Settings, format_duration, load_settings
from partitiond.logs import configure_logging

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Opt:
    """One setting exposed as a flag; ``field`` is the Settings field it feeds."""

    flags: tuple[str, ...]
    field: str
    help: str
    metavar: str = "VALUE"
    multiple: bool = False
    is_flag_pair: bool = False


D = Settings()
OPTIONS: tuple[Opt, ...] = (
    Opt(
        ("--config",),
        "config",
        "TOML file with settings (keys are the option names with underscores); `partitiond run` reads it "
        "again on SIGHUP.",
        "FILE",
    ),
    Opt(
        ("--dsn",),
        "dsn",
        "libpq conninfo or URL. Default: PG* environment variables. Prefer --dsn-file.",
        "DSN",
    ),
    Opt(
        ("--dsn-file",),
        "dsn_file",
        "File holding the DSN (e.g. a mounted Secret). systemd's "
        "LoadCredential=dsn is picked up automatically.",
        "FILE",
    ),
    Opt(
        ("--schema",),
        "schema",
        f"Schema holding the envelope tables and functions. [default: {D.schema}]",
        "NAME",
    ),
    Opt(
        ("--originator",),
        "originators",
        "Originator id to provision even before it has rows (repeatable; the variable takes a "
        "comma-separated list).",
        "ID",
        multiple=True,
    ),
    Opt(
        ("--band-width",),
        "band_width",
        f"Sequence ids per band; must match existing partitions. [default: {D.band_width:_}]",
        "N",
    ),
    Opt(
        ("--fill-threshold",),
        "fill_threshold",
        f"Create the next band when the current one is more than this full. [default: {D.fill_threshold}]",
        "RATIO",
    ),
    Opt(
        ("--max-bands-ahead",),
        "max_bands_ahead",
        "Most bands above the current one. xmtpd's pruner drops "
        f"empty bands below the highest, so keep 1. [default: {D.max_bands_ahead}]",
        "N",
    ),
    Opt(
        ("--max-creates-per-run",),
        "max_creates_per_run",
        f"Cap on bands created in one run, most urgent first. [default: {D.max_creates_per_run}]",
        "N",
    ),
    Opt(
        ("--interval",),
        "interval",
        f"Time between full runs (e.g. 30m). [default: {format_duration(D.interval)}]",
        "DURATION",
    ),
    Opt(
        ("--jitter",),
        "jitter",
        f"Random delay added to each run. [default: {format_duration(D.jitter)}]",
        "DURATION",
    ),
    Opt(
        ("--runway",),
        "runway",
        "Create the next band when the forecast says the last one ends within "
        "this time. [default: 2 x interval]",
        "DURATION",
    ),
    Opt(
        ("--probe-interval",),
        "probe_interval",
        f"Cheap position probes between runs; 0 disables. [default: {format_duration(D.probe_interval)}]",
        "DURATION",
    ),
    Opt(
        ("--max-jump-bands",),
        "max_jump_bands",
        f"A position jump larger than this many bands is logged as suspicious. [default: {D.max_jump_bands}]",
        "N",
    ),
    Opt(
        ("--lock-timeout",),
        "lock_timeout",
        "Longest wait for a lock before key 5, while partitiond holds nothing xmtpd needs (staging a "
        f"band's tables). [default: {format_duration(D.lock_timeout)}]",
        "DURATION",
    ),
    Opt(
        ("--statement-timeout",),
        "statement_timeout",
        f"Statement timeout outside the key-5 hold. [default: {format_duration(D.statement_timeout)}]",
        "DURATION",
    ),
    Opt(
        ("--hold-budget",),
        "hold_budget",
        "Longest wait for any lock while partitiond holds or queues for key 5 (every insert waits "
        "meanwhile); past it the band is deferred and retried. Kept below the server's "
        f"deadlock_timeout. [default: {format_duration(D.hold_budget)}]",
        "DURATION",
    ),
    Opt(
        ("--hold-timeout",),
        "hold_timeout",
        "Longest a statement may run while partitiond holds key 5; past it the band is deferred. Kept "
        f"below the server's deadlock_timeout. [default: {format_duration(D.hold_timeout)}]",
        "DURATION",
    ),
    Opt(
        ("--idle-in-transaction-timeout",),
        "idle_in_transaction_timeout",
        "The server ends partitiond's session if it sits this long inside a band's transaction (a frozen "
        f"or cut-off partitiond releases key 5). [default: {format_duration(D.idle_in_transaction_timeout)}]",
        "DURATION",
    ),
    Opt(
        ("--reader-wait",),
        "reader_wait",
        "How long one attempt waits, before taking key 5 and holding nothing, for a moment when no query "
        "reads the tables its DDL needs to itself (a new band: the originator's blob L1; a prune: both L1s, "
        "gateway_envelopes_blob, blockchain_messages and payers); then it is deferred (a new band short of "
        "runway is attached the slow way instead). "
        f"[default: {format_duration(D.reader_wait)}]",
        "DURATION",
    ),
    Opt(
        ("--slow-path-runway",),
        "slow_path_runway",
        "While a reader keeps a blob L1 busy, a band is deferred unless its originator has less runway "
        "than this; then it is attached the slow way (validating the blob foreign key under key 5). "
        f"[default: {format_duration(D.slow_path_runway)}]",
        "DURATION",
    ),
    Opt(
        ("--connect-timeout",),
        "connect_timeout",
        f"Connect timeout, whole seconds. [default: {format_duration(D.connect_timeout)}]",
        "DURATION",
    ),
    Opt(
        ("--protocol-lock/--no-protocol-lock",),
        "protocol_lock",
        "Take the exclusive side of xmtpd's partition-creation advisory lock around each band. [default: on]",
        is_flag_pair=True,
    ),
    Opt(
        ("--protocol-lock-key",),
        "protocol_lock_key",
        f"xmtpd's partition-creation advisory lock key. [default: {D.protocol_lock_key}]",
        "KEY",
    ),
    Opt(
        ("--lock-attempts",),
        "lock_attempts",
        "Attempts per band before it is left for the next pass: each deferral (a lock was busy), deadlock "
        f"or serialization failure uses one. [default: {D.lock_attempts}]",
        "N",
    ),
    Opt(
        ("--retry-budget",),
        "retry_budget",
        f"Total retry backoff one run may spend. [default: {format_duration(D.retry_budget)}]",
        "DURATION",
    ),
    Opt(
        ("--leader-lock-key",),
        "leader_lock_key",
        f"Advisory lock key of the leader lease between replicas. [default: {D.leader_lock_key}]",
        "KEY",
    ),
    Opt(
        ("--metrics-address",),
        "metrics_address",
        f"host:port for /metrics, /healthz, /readyz; empty disables. [default: {D.metrics_address}]",
        "HOST:PORT",
    ),
    Opt(
        ("--metrics-textfile",),
        "metrics_textfile",
        "Write the pass's metrics to this node-exporter textfile (*.prom, written atomically).",
        "FILE",
    ),
    Opt(
        ("--shutdown-timeout",),
        "shutdown_timeout",
        f"Longest graceful shutdown. [default: {format_duration(D.shutdown_timeout)}]",
        "DURATION",
    ),
    Opt(
        ("--runway-warning",),
        "runway_warning",
        "Warn when an originator's forecast runway is below this. [default: 2 x interval]",
        "DURATION",
    ),
    Opt(
        ("--log-format",),
        "log_format",
        "auto (console on a TTY, JSON otherwise), json or console. [default: auto]",
        "FORMAT",
    ),
    Opt(("--log-level",), "log_level", "debug, info, warning or error. [default: info]", "LEVEL"),
)

# Option groups, each defined once; a command lists the groups it uses (see COMMAND_SETTINGS).
CONNECTION = ("config", "dsn", "dsn_file", "schema", "connect_timeout")
LOGGING = ("log_format", "log_level")
BANDS = ("originators", "band_width")
PLANNING = ("fill_threshold", "max_bands_ahead", "max_creates_per_run")
LEASE = ("leader_lock_key",)
CREATING = (
    "lock_timeout",
    "statement_timeout",
    "hold_budget",
    "hold_timeout",
    "idle_in_transaction_timeout",
    "protocol_lock",
    "protocol_lock_key",
    "lock_attempts",
    "retry_budget",
    "reader_wait",
)
DAEMON = (
    "interval",
    "jitter",
    "probe_interval",
    "runway",
    "max_jump_bands",
    "slow_path_runway",
    "metrics_address",
    "shutdown_timeout",
)
COMMAND_SETTINGS: dict[str, tuple[str, ...]] = {
    "install-sql": CONNECTION + LOGGING,
    "status": CONNECTION + BANDS + LEASE + LOGGING,
    "check": CONNECTION + BANDS + ("fill_threshold", "runway_warning") + LEASE + LOGGING,
    "plan": CONNECTION + BANDS + PLANNING + LOGGING,
    "run-once": CONNECTION + BANDS + PLANNING + CREATING + LEASE + ("metrics_textfile",) + LOGGING,
    "run": CONNECTION + BANDS + PLANNING + CREATING + LEASE + DAEMON + LOGGING,
    # --originator narrows a prune to those originators; the drops hold key 5 as band creation does.
    "prune": (*CONNECTION, "originators", *CREATING, *LOGGING),
    # repair's DDL: the hold budget bounds each wait for a lock inserts need, --lock-timeout a validation's.
    "repair": (
        *CONNECTION,
        "lock_timeout",
        "statement_timeout",
        "hold_budget",
        "lock_attempts",
        "retry_budget",
        *LOGGING,
    ),
}


def _env_name(field: str) -> str:
    return "PARTITIOND_" + field.upper()


def settings_options(command: str) -> Callable[[F], F]:
    """Attach the settings ``command`` uses as options (default None, so only what the user typed counts
    as a flag), in the order of OPTIONS.

    The other settings are attached too but hidden: like the environment and the config file, a flag a
    command does not use is still validated and then has no effect, so one shared command line or unit
    file keeps working for every command.  ``--help`` lists only what the command uses.
    """
    shown = set(COMMAND_SETTINGS[command])

    def attach(func: F) -> F:
        for opt in reversed(OPTIONS):
            help_text = f"{opt.help}  (env: {_env_name(opt.field)})"
            hidden = opt.field not in shown
            if opt.is_flag_pair:
                decorator = click.option(*opt.flags, opt.field, default=None, hidden=hidden, help=help_text)
            else:
                decorator = click.option(
                    *opt.flags,
                    opt.field,
                    default=None,
                    multiple=opt.multiple,
                    metavar=opt.metavar,
                    hidden=hidden,
                    help=help_text,
                )
            func = decorator(func)
        return func

    return attach


def settings_loader(raw: dict[str, Any]) -> Callable[[], Settings]:
    """Flags + environment + config file -> Settings, re-runnable (SIGHUP reloads call it again)."""
    config = raw.pop("config", None)
    cli = {k: v for k, v in raw.items() if v is not None and v != ()}
    return lambda: load_settings(cli, os.environ, Path(config) if config else None)


def build_settings(raw: dict[str, Any], load: Callable[[], Settings] | None = None) -> Settings:
    """Merge flags, env and file; configuration errors exit 2 with a message naming the option."""
    try:
        settings = (load or settings_loader(raw))()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    configure_logging(settings.log_format, settings.log_level)
    return settings
