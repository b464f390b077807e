"""Log output: one format for structlog and stdlib loggers, and no passwords in it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

import pytest
import structlog

from partitiond.logs import configure_logging, get_logger

SECRET_URL = "postgresql://partitiond:hunter2@db.internal/xmtpd"


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the root logger and structlog back as they were, so other tests keep their own logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_event_level_and_utc_timestamp() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    get_logger("partitiond.test").info("run_finished", created=3)
    [line] = json_lines(stream)
    assert line["event"] == "run_finished"
    assert line["level"] == "info"
    assert line["logger"] == "partitiond.test"
    assert line["created"] == 3
    assert datetime.fromisoformat(line["timestamp"]).utcoffset() is not None
    assert line["timestamp"].endswith("Z")


def test_stdlib_loggers_share_the_json_format() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    logging.getLogger("apscheduler.scheduler").warning("Run time of job %s was missed", "precreate")
    [line] = json_lines(stream)
    assert line["event"] == "Run time of job precreate was missed"
    assert line["level"] == "warning"
    assert line["logger"] == "apscheduler.scheduler"
    assert "timestamp" in line


def test_level_filters_both_kinds_of_logger() -> None:
    stream = io.StringIO()
    configure_logging("json", "warning", stream)
    get_logger("partitiond.test").info("hidden")
    logging.getLogger("psycopg").info("hidden too")
    get_logger("partitiond.test").error("shown")
    assert [line["event"] for line in json_lines(stream)] == ["shown"]


def test_configuring_twice_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "info", first)
    configure_logging("json", "info", second)
    logging.getLogger("apscheduler").warning("once")
    get_logger("partitiond").info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 2


def test_other_root_handlers_survive_reconfiguration() -> None:
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    configure_logging("json", "info", io.StringIO())
    assert other in logging.getLogger().handlers


def test_password_in_event_values_is_redacted() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    get_logger("partitiond").info("connecting", dsn=SECRET_URL, extra={"conninfo": ["password=hunter2"]})
    logging.getLogger("psycopg").warning("connection to %s failed", SECRET_URL)
    output = stream.getvalue()
    assert "hunter2" not in output
    first, second = json_lines(stream)
    assert first["dsn"] == "postgresql://partitiond:***@db.internal/xmtpd"
    assert first["extra"] == {"conninfo": ["password=***"]}
    assert second["event"] == "connection to postgresql://partitiond:***@db.internal/xmtpd failed"


def test_password_in_an_object_value_is_redacted() -> None:
    json_stream, console_stream = io.StringIO(), io.StringIO()
    cases: list[tuple[Literal["json", "console"], io.StringIO]] = [
        ("json", json_stream),
        ("console", console_stream),
    ]
    for fmt, stream in cases:
        configure_logging(fmt, "info", stream)
        get_logger("partitiond").warning("connect_failed", error=ConnectionError(SECRET_URL))
        assert "hunter2" not in stream.getvalue()
        assert "partitiond:***@db.internal" in stream.getvalue()
    assert json_lines(json_stream)[0]["error"].startswith("ConnectionError(")


def fail_to_connect() -> None:
    password = "hunter2"  # a bare local: never rendered, because tracebacks carry no locals
    raise ConnectionError(f"could not connect to {SECRET_URL} ({len(password)})")


def test_password_in_exception_is_redacted_in_json() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    for logger in (get_logger("partitiond"), logging.getLogger("apscheduler.executors.default")):
        try:
            fail_to_connect()
        except ConnectionError:
            logger.exception("job failed")
    assert "hunter2" not in stream.getvalue()
    for line in json_lines(stream):
        [exception] = line["exception"]
        assert exception["exc_type"] == "ConnectionError"
        assert "partitiond:***@db.internal" in exception["exc_value"]
        assert exception["frames"][-1]["name"] == "fail_to_connect"


def test_console_format_renders_and_redacts() -> None:
    stream = io.StringIO()
    configure_logging("console", "debug", stream)
    get_logger("partitiond.test").debug("probe", dsn=SECRET_URL)
    try:
        fail_to_connect()
    except ConnectionError:
        logging.getLogger("apscheduler.scheduler").exception("job raised")
    output = stream.getvalue()
    assert "probe" in output and "[partitiond.test]" in output
    assert "job raised" in output and "Traceback (most recent call last)" in output
    assert "hunter2" not in output
    assert "\x1b[" not in output  # no colours when the stream is not a terminal
    with pytest.raises(json.JSONDecodeError):
        json.loads(output.splitlines()[0])


def test_auto_is_json_off_a_terminal_and_console_on_one() -> None:
    plain, tty = io.StringIO(), TtyStream()
    configure_logging("auto", "info", plain)
    get_logger("partitiond").info("hello")
    assert json_lines(plain)[0]["event"] == "hello"
    configure_logging("auto", "info", tty)
    get_logger("partitiond").info("hello")
    assert not tty.getvalue().startswith("{")
    assert "hello" in tty.getvalue()


def test_contextvars_are_merged() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    with structlog.contextvars.bound_contextvars(run_id="r1"):
        get_logger("partitiond").info("inside")
    assert json_lines(stream)[0]["run_id"] == "r1"
