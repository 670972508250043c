"""Worker liveness: each worker notices when it has work and makes no progress.

A thread in the worker's main process looks every few seconds at what the worker holds:
messages received but not yet started by a pool process, and tasks running. It records
a heartbeat row with them, tells systemd it is alive (sd_notify WATCHDOG=1) while it
is, and when the worker has work but makes no progress, as when its pool processes hang
(billiard's replacements for killed pool processes can block on a lock forever), it
records why, kills the pool and exits, so that its supervisor (systemd's Restart=, or
the embedded runner) starts a fresh one. Messages it held go back to the queue or are
sent again by the watcher; leases let another worker take over what was running.
"""

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connections
from django.utils import timezone

logger = logging.getLogger(__name__)

BEAT_SECONDS = 5.0
# The main loop's own timer has not run for this long: the main process is stuck.
LOOP_SECONDS = 60.0
EXIT_CODE = 70  # EX_SOFTWARE: a supervisor restarts it
# A heartbeat this old is from a worker that is gone: shown as silent until then.
SILENT_AFTER = timedelta(seconds=30)
FORGET_AFTER = timedelta(minutes=10)


@dataclass
class Snapshot:
    """What a worker holds at one moment, as its main process sees it."""

    waiting: dict[str, float]  # request id -> monotonic time it was received
    running: set[str]
    done: int
    pool_size: int
    waiting_uploads: list[int] = field(default_factory=list)
    running_uploads: list[int] = field(default_factory=list)
    # Tasks that may rightly run for long (a hash-list import): they hold pool processes
    # but are not judged by the uploads' time limit.
    long_running: int = 0


class Judge:
    """Decides from successive snapshots whether a worker is stuck; pure, for tests."""

    def __init__(self, *, start_seconds: float, progress_seconds: float) -> None:
        self.start_seconds = start_seconds
        self.progress_seconds = progress_seconds
        self._marker: tuple[int, frozenset[str]] | None = None
        self.progress_at = time.monotonic()

    def stall(self, snapshot: Snapshot, now: float) -> str | None:
        marker = (snapshot.done, frozenset(snapshot.running))
        if marker != self._marker:
            self._marker = marker
            self.progress_at = now
        if not snapshot.waiting and not snapshot.running:
            self.progress_at = now
            return None
        oldest = min(snapshot.waiting.values(), default=now)
        free = snapshot.pool_size - len(snapshot.running) - snapshot.long_running
        if free > 0 and now - oldest > self.start_seconds and now - self.progress_at > (
            self.start_seconds
        ):
            return (
                f"{free} pool process(es) free, but a task received {now - oldest:.0f} s ago "
                "has not started"
            )
        # Uploads running with no progress hang; uploads only waiting while imports hold
        # every pool process are in line, not stuck.
        judged = snapshot.running or not snapshot.long_running
        if judged and now - self.progress_at > self.progress_seconds:
            return f"no task started or finished for {now - self.progress_at:.0f} s"
        return None


class Liveness:
    """The liveness thread of one worker's main process."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        *,
        on_stall: Callable[[str], None],
        connected: Callable[[], bool] = lambda: True,
        beat_seconds: float = BEAT_SECONDS,
        judge: Judge | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.on_stall = on_stall
        self.connected = connected
        self.beat_seconds = min(beat_seconds, settings.HASHGUARD_STALL_SECONDS / 3)
        stall = settings.HASHGUARD_STALL_SECONDS
        self.judge = judge or Judge(
            start_seconds=stall, progress_seconds=settings.CELERY_TASK_TIME_LIMIT + stall
        )
        self.loop_at = time.monotonic()
        self.stop = threading.Event()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = timezone.now()
        self.thread = threading.Thread(target=self.run, name="hashguard-liveness", daemon=True)

    def loop_ticked(self) -> None:
        """Called from the worker's main loop: it still runs."""
        self.loop_at = time.monotonic()

    def start(self) -> None:
        sd_notify("READY=1")
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(self.beat_seconds):
            now = time.monotonic()
            snapshot = self.snapshot()
            stall = self.judge.stall(snapshot, now)
            if not self.connected():
                # Reconnecting to the broker blocks the main loop; that is no hang.
                self.loop_at = now
            elif stall is None and now - self.loop_at > LOOP_SECONDS:
                stall = f"the main loop has not run for {now - self.loop_at:.0f} s"
            if stall is None:
                sd_notify("WATCHDOG=1")  # first: a slow database is no reason to restart
            self.beat(snapshot, stall)
            if stall is not None:
                logger.error("worker stalled: %s; restarting it", stall)
                self.on_stall(stall)
                return

    def beat(self, snapshot: Snapshot, stall: str | None) -> None:
        from moderation.models import WorkerHeartbeat

        now = timezone.now()
        progress_age = time.monotonic() - self.judge.progress_at
        try:
            WorkerHeartbeat.objects.update_or_create(
                name=self.name,
                defaults={
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "started_at": self.started_at,
                    "beat_at": now,
                    "running": snapshot.running_uploads,
                    "waiting": snapshot.waiting_uploads,
                    "last_progress_at": now - timedelta(seconds=progress_age),
                    "stalled_since": now if stall else None,
                    "stall": stall or "",
                },
            )
            WorkerHeartbeat.objects.filter(beat_at__lt=now - FORGET_AFTER).delete()
        except DatabaseError as exc:
            logger.warning("could not record the worker's heartbeat: %s", exc)
        finally:
            # A connection held by this thread would be inherited by the next forked
            # pool process; open one per beat instead.
            connections.close_all()


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify, WatchdogSec=) about this process, when it runs us."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        logger.warning("could not notify systemd: %s", exc)


def children_of(pid: int) -> list[int]:
    """The process ids whose parent is pid (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def exit_for_restart(reason: str) -> None:
    """Kill this worker's pool processes and exit at once, for a supervisor to restart."""
    for child in children_of(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    logging.shutdown()
    os._exit(EXIT_CODE)
