"""systemd's sd_notify protocol in a few lines, instead of an unmaintained or C-compiled dependency.

Modelled on systemd's MIT-0 ``man/notify-selfcontained-example.py``: one datagram per message to the
AF_UNIX socket named by ``$NOTIFY_SOCKET``.  Outside systemd (tests, Kubernetes, a terminal) the variable is
unset and every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``); True if it was sent.

    Failures are reported as False, never raised: a hiccup in the supervisor's channel must not take the
    daemon down with it (a missed watchdog ping is systemd's call to make, not ours).
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace.
    elif not address.startswith("/"):
        return False  # Unset, or a transport we do not speak (vsock).
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings, or None when systemd's watchdog is not watching this process.

    systemd recommends pinging at half of ``WATCHDOG_USEC``; ``WATCHDOG_PID`` (when set) says which process
    the watchdog is meant for, so a child that inherited the environment stays quiet.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000
