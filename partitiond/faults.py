"""Test-only fault injection: freeze partitiond at a chosen point, to prove what the server does then.

Off unless ``PARTITIOND_FAULT`` names a point.  The only point today is ``holding-key5``: right after the
exclusive side of key 5 is granted, the process stops itself with SIGSTOP, once, exactly as a paused VM, a
stuck runtime or a debugger would freeze it at the worst moment.  The interference benchmark and the
frozen-process test use it to check that the server ends the session (idle_in_transaction_session_timeout)
and xmtpd's inserts resume.  Never set it in production.
"""

from __future__ import annotations

import os
import signal

ENV = "PARTITIOND_FAULT"


def inject(point: str) -> None:
    """Stop this process if ``PARTITIOND_FAULT`` names ``point``; otherwise do nothing.  One-shot: the
    variable is removed first, so a continued process runs on normally."""
    if os.environ.get(ENV) == point:
        del os.environ[ENV]
        os.kill(os.getpid(), signal.SIGSTOP)
