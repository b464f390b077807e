"""Logging: structlog for our own events, bridged so stdlib loggers (apscheduler, psycopg) share the format.

Output goes to one stream (stderr by default) as JSON lines for journald/Kubernetes, or as a console
rendering for people at a terminal.  Every string value, including rendered tracebacks, passes through
:func:`partitiond.dsn.redact` last, because a DSN can surface anywhere: in a psycopg error message, in an
apscheduler job repr, in a traceback.
"""

from __future__ import annotations

import io
import logging
import sys
from typing import Literal, TextIO

import structlog
from structlog.types import EventDict, ExcInfo, Processor, WrappedLogger

from partitiond.dsn import redact

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _PartitiondHandler(logging.StreamHandler[TextIO]):
    """Marks the root handler we install, so reconfiguring replaces it and leaves other handlers (e.g.
    pytest's capture handler) alone."""


def configure_logging(
    fmt: Literal["auto", "json", "console"], level: str, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to ``stream`` in one format; safe to call again (e.g. on SIGHUP).

    ``auto`` means console at a terminal and JSON otherwise, so ``journalctl`` and ``kubectl logs`` get
    machine-readable lines without anyone passing a flag.
    """
    out = stream if stream is not None else sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    handler = _PartitiondHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_render_chain(console, out),
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _PartitiondHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level.lower()])
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def _render_chain(console: bool, out: TextIO) -> list[Processor]:
    """The final processors: tracebacks rendered, secrets redacted, then the renderer."""
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty(), exception_formatter=_redacted_traceback)
        return [_redact_event, renderer]
    # No locals in tracebacks: a local holding a bare password would not be recognisable to redact().
    tracebacks = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    )
    return [tracebacks, _redact_event, structlog.processors.JSONRenderer()]


def _redact_event(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Run :func:`redact` over every string in the event, however deeply nested.

    ``exc_info`` is left for the console renderer, whose exception formatter redacts the traceback it
    renders; the JSON chain has already turned it into a redactable ``exception`` structure.
    """
    return {key: value if key == "exc_info" else _redact_value(value) for key, value in event_dict.items()}


def _redact_value(value: object) -> object:
    """Strings are redacted; other objects (an exception passed as ``error=exc``) become their redacted
    repr here, because the renderers would repr them after this point, where nothing redacts."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_value(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact_value(item) for item in value)
    if value is None or isinstance(value, int | float):
        return value
    return redact(repr(value))


def _redacted_traceback(sio: TextIO, exc_info: ExcInfo) -> None:
    """The console renderer's plain traceback, redacted (the console chain keeps ``exc_info`` raw)."""
    buffer = io.StringIO()
    structlog.dev.plain_traceback(buffer, exc_info)
    sio.write(redact(buffer.getvalue()))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger whose ``logger`` field is ``name``, like ``logging.getLogger(name)``."""
    return structlog.stdlib.get_logger(name)
