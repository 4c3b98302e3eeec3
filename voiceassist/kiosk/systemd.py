"""systemd integration through sd_notify: READY=1, STATUS=, RELOADING=1, STOPPING=1 and a WATCHDOG heartbeat.

Harmless when not under systemd: without ``$NOTIFY_SOCKET`` every call does nothing. The ``sdnotify``
package (the ``kiosk`` extra) is used when installed; the protocol is one datagram per message on a UNIX
socket, so a few lines stand in when it is not.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger("voiceassist.kiosk")

SEND_TIMEOUT_S = 0.2  # longest wait for room in the notify socket's queue, s


class Notifier:
    """Sends sd_notify messages; every method is a no-op without ``$NOTIFY_SOCKET``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and bool(os.environ.get("NOTIFY_SOCKET"))
        self._lock = threading.Lock()
        self._send: Callable[[str], None] | None = None
        if not self.enabled:
            return
        try:
            import sdnotify

            notifier = sdnotify.SystemdNotifier()
            if notifier.socket is not None:
                # A full socket queue must not block the heartbeat or the event loop: drop the message.
                notifier.socket.settimeout(SEND_TIMEOUT_S)
            self._send = notifier.notify
        except ImportError:
            addr = os.environ["NOTIFY_SOCKET"]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.settimeout(SEND_TIMEOUT_S)
            try:
                sock.connect("\0" + addr[1:] if addr.startswith("@") else addr)
                self._send = lambda msg: sock.sendall(msg.encode("utf-8"))
            except OSError:
                sock.close()

    def notify(self, message: str) -> None:
        if self._send is None:
            return
        with self._lock:
            try:
                self._send(message)
            except OSError:
                pass  # systemd went away (shutdown); nothing to tell

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={' '.join(text.split())}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets Type=notify-reload units match the reload to this notification.
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def watchdog_trigger(self) -> None:
        """Ask systemd to act as if the watchdog timed out (restart per the unit's Restart=)."""
        self.notify("WATCHDOG=trigger")


def watchdog_interval_s() -> float | None:
    """Half the unit's WatchdogSec (systemd's advice), or None when no watchdog is asked for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(0.05, int(usec) / 2e6)
    except ValueError:
        return None


class Heartbeat:
    """A thread that sends WATCHDOG=1 every ``interval_s`` while ``check()`` returns no dead workers.

    ``check`` returns the names of workers that are not alive. When one dies the heartbeat stops pinging,
    asks systemd to restart us (WATCHDOG=trigger) and calls ``on_dead(names)`` once, so the daemon can log it
    and exit non-zero (which restarts the service under Restart=on-failure even without a watchdog).
    """

    def __init__(
        self,
        notifier: Notifier,
        check: Callable[[], list[str]],
        interval_s: float,
        on_dead: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.notifier = notifier
        self.check = check
        self.interval_s = interval_s
        self.on_dead = on_dead
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kiosk-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                dead = self.check()
            except Exception as err:  # a broken check must not look like a healthy service
                dead = [f"health check ({err})"]
            if dead:
                if not self._stop.is_set():
                    self.notifier.status(f"worker stopped: {', '.join(dead)}")
                    self.notifier.watchdog_trigger()
                    if self.on_dead:
                        self.on_dead(dead)
                return
            self.notifier.watchdog()
            self.beats += 1
            self._stop.wait(self.interval_s)
