"""The watcher: notices new files in the media tree and records them for the workers.

It never decodes an image. Every file is looked at, whatever its name: the content says
what it is. Events only nominate paths; a path is recorded once its writer closed it or
renamed it into place, or, where no such event comes, once its size and mtime have held
still for a while; a periodic walk of the whole tree catches whatever events were
dropped. Recording and queueing go through services.upload_register.
"""

import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.db import DatabaseError, close_old_connections, connections
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from moderation import files, selectors, services
from moderation.tasks import waiting_in_queue

logger = logging.getLogger(__name__)
# How often the watcher deletes quarantined files past their retention.
PURGE_SECONDS = 3600.0

# A file some process still has open for writing is recorded once it is closed, or once
# it has not changed for this many stability windows (the writer hung or the close
# event was lost); a copy recorded half-written is superseded by the finished file.
OPEN_FILE_WINDOWS = 20


class ObserverDied(Exception):
    """The filesystem observer thread stopped; the watcher cannot go on without it."""


def _signature(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_size, info.st_mtime_ns, info.st_ino)


def iter_files(root: Path, directory: bytes = b"") -> Iterator[tuple[bytes, os.stat_result]]:
    """Every file under directory (relative to root, b"" for all of it), whatever its
    name, as a path relative to root with its lstat. Each directory is opened from the
    root one component at a time, never through a symlink, and closed before the next, so
    that neither a deep path nor a wide tree runs out of names or file descriptors;
    symlinks and other non-directories are listed for the caller to record."""
    stack = [directory]
    while stack:
        prefix = stack.pop()
        try:
            with files.open_directory(root, prefix) as fd:
                entries = []
                for listed in os.listdir(fd):
                    raw = os.fsencode(listed)
                    try:
                        entries.append((raw, os.stat(raw, dir_fd=fd, follow_symlinks=False)))
                    except FileNotFoundError:
                        continue  # gone since it was listed
        except (OSError, files.UnsafePath) as exc:
            logger.warning("cannot list %s under %s: %s", files.display(prefix), root, exc)
            continue
        for name, info in entries:
            relative = prefix + b"/" + name if prefix else name
            if stat.S_ISDIR(info.st_mode):
                stack.append(relative)
            else:
                yield relative, info


@dataclass
class _Nominated:
    size: int = -1
    mtime_ns: int = -1
    changed_at: float = field(default_factory=time.monotonic)
    # A close-after-write or a rename into place: the file is complete now.
    complete: bool = False
    # Written to since it was last closed (only observers with close events know).
    open_for_writing: bool = False


class _Nominator(FileSystemEventHandler):
    def __init__(self, watcher: "MediaWatcher") -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Synthetic events are watchdog's own listing of a directory moved or made in:
        # the scan that directory's event asks for covers them.
        if event.event_type in ("opened", "deleted", "closed_no_write") or event.is_synthetic:
            return
        path = event.dest_path if event.event_type == "moved" else event.src_path
        if not path:  # moved out of the tree
            return
        if event.is_directory:
            # A directory moved or made in: its files may never send events of their own.
            # Those of one renamed into place were complete before it moved.
            if event.event_type in ("moved", "created"):
                self.watcher.request_scan(path, complete=event.event_type == "moved")
            return
        self.watcher.nominate(path, event.event_type)


class MediaWatcher:
    def __init__(
        self,
        root: Path,
        *,
        stop: threading.Event,
        stable_seconds: float = 1.0,
        rescan_seconds: float = 300.0,
        requeue_seconds: float = 60.0,
        polling: bool = False,
        tick_seconds: float = 0.2,
    ) -> None:
        self.root = root
        self.stop = stop
        self.stable_seconds = stable_seconds
        self.rescan_seconds = rescan_seconds
        self.requeue_seconds = requeue_seconds
        self.polling = polling
        self.tick_seconds = tick_seconds
        self._lock = threading.Lock()
        self._pending: dict[bytes, _Nominated] = {}
        self._scan_requests: list[tuple[bytes, bool]] = []
        # relative path -> (size, mtime_ns, inode) of files already recorded, so rescans
        # skip them.
        self._recorded: dict[bytes, tuple[int | None, int | None, int | None]] = {}
        self.observer: BaseObserver | None = None
        # Set once events are watched and the files already there are nominated.
        self.ready = threading.Event()

    # -- called from the observer thread ------------------------------------------------

    def _relative(self, path: str | bytes) -> bytes | None:
        try:
            return files.relative_to_store(path, self.root)
        except files.UnsafePath:
            return None

    def nominate(self, path: str | bytes, event_type: str = "created") -> None:
        relative = self._relative(path)
        if relative is None:
            return
        with self._lock:
            nominated = self._pending.setdefault(relative, _Nominated())
            if event_type in ("closed", "moved"):
                nominated.complete = True
                nominated.open_for_writing = False
            elif event_type == "created":  # made here: its writer's close completes it
                nominated.complete = False
            elif not nominated.complete:  # written to, or its attributes changed
                nominated.open_for_writing = not self.polling

    def request_scan(self, directory: str | bytes, *, complete: bool = False) -> None:
        relative = self._relative(directory)
        if relative is not None:
            with self._lock:
                self._scan_requests.append((relative, complete))

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        # Full events: a file renamed in from outside the tree is a move (complete), not a
        # creation whose writer may still be at work.
        self.observer = observer = (
            PollingObserver() if self.polling else InotifyObserver(generate_full_events=True)
        )
        observer.schedule(_Nominator(self), str(self.root), recursive=True)
        observer.start()
        logger.info("watching %s", self.root)
        try:
            self.load_recorded()
            self.scan()
            self.ready.set()
            next_rescan = time.monotonic() + self.rescan_seconds
            next_requeue = time.monotonic()  # at once: what waited while no watcher ran
            next_purge = time.monotonic()
            while not self.stop.is_set():
                if not observer.is_alive():
                    raise ObserverDied(f"the filesystem observer for {self.root} stopped")
                self.settle()
                now = time.monotonic()
                if now >= next_rescan:
                    self.scan()
                    next_rescan = now + self.rescan_seconds
                if now >= next_requeue:
                    self.requeue()
                    next_requeue = now + min(30.0, self.requeue_seconds / 2)
                if now >= next_purge:
                    self.purge()
                    next_purge = now + PURGE_SECONDS
                self.stop.wait(self.tick_seconds)
        finally:
            observer.stop()
            observer.join(timeout=10)
            connections.close_all()
            logger.info("stopped watching %s", self.root)

    def load_recorded(self) -> None:
        """Remember files recorded before this start, so the first scan skips them: those
        whose latest record says the file is still in the tree."""
        close_old_connections()
        for relative, signature in selectors.recorded_files():
            if signature is None:
                self._recorded.pop(relative, None)
            else:
                self._recorded[relative] = signature

    def scan(self, directory: bytes = b"", *, complete: bool = False) -> int:
        """Nominate every file under directory not yet recorded as it is now; as
        ``complete`` (a directory renamed into place), they need no stability window."""
        count = 0
        for relative, info in iter_files(self.root, directory):
            if self._recorded.get(relative) != _signature(info):
                with self._lock:
                    nominated = self._pending.setdefault(relative, _Nominated())
                    nominated.complete = nominated.complete or complete
                count += 1
        return count

    def settle(self) -> None:
        """Record each nominated file that is complete: closed after writing or renamed
        into place, or unchanged for the stability window (longer while a writer has it
        open)."""
        with self._lock:
            requests, self._scan_requests = self._scan_requests, []
        for directory, complete in requests:
            self.scan(directory, complete=complete)
        with self._lock:
            pending = list(self._pending.items())
        now = time.monotonic()
        for relative, nominated in pending:
            try:
                info = files.lstat(self.root, relative)
            except (OSError, files.UnsafePath):
                self._drop(relative)
                continue
            if stat.S_ISDIR(info.st_mode):
                self._drop(relative)
                continue
            if (info.st_size, info.st_mtime_ns) != (nominated.size, nominated.mtime_ns):
                with self._lock:
                    nominated.size, nominated.mtime_ns = info.st_size, info.st_mtime_ns
                    nominated.changed_at = now
                if not nominated.complete:
                    continue
            quiet = now - nominated.changed_at
            window = self.stable_seconds * (OPEN_FILE_WINDOWS if nominated.open_for_writing else 1)
            if nominated.complete or quiet >= window:
                self.record(relative, info)

    def idle(self) -> bool:
        """Whether no file waits to be recorded."""
        with self._lock:
            return not self._pending and not self._scan_requests

    def nominated(self, relative: bytes) -> tuple[bool, float] | None:
        """Whether a nominated file is open for writing, and how long it has been quiet."""
        with self._lock:
            item = self._pending.get(relative)
            if item is None:
                return None
            return item.open_for_writing, time.monotonic() - item.changed_at

    def _drop(self, relative: bytes) -> None:
        with self._lock:
            self._pending.pop(relative, None)

    def record(self, relative: bytes, info: os.stat_result) -> None:
        close_old_connections()
        shown = files.display(relative)
        # Taken out first: an event while the file is read nominates it again.
        self._drop(relative)
        try:
            upload, created = services.upload_register(path=self.root / os.fsdecode(relative))
        except FileNotFoundError:
            return  # gone again before it could be recorded
        except DatabaseError as exc:
            # Nominate it again: the next tick tries again once the database is back.
            logger.error("could not record %s, will retry: %s", shown, exc)
            with self._lock:
                self._pending.setdefault(relative, _Nominated())
            return
        except Exception as exc:
            # Nothing about one file may stop the watcher; skip it until it changes.
            logger.warning("skipped %s: %s", shown, exc)
            self._recorded[relative] = _signature(info)
            return
        if created:
            logger.info("recorded upload %s: %s (%s)", upload.pk, upload.path, upload.state)
        # What was read, not what was seen before: a change meanwhile is seen as one.
        self._recorded[relative] = (upload.size, upload.mtime_ns, upload.inode)

    def purge(self) -> None:
        """Delete the quarantined files past HASHGUARD_RETENTION_DAYS (the one watcher
        does it, hourly)."""
        close_old_connections()
        try:
            count = services.uploads_purge_expired()
        except (DatabaseError, OSError, files.UnsafePath) as exc:
            logger.error("could not delete expired quarantined files: %s", exc)
            return
        if count:
            logger.info("deleted %s quarantined files past the retention period", count)

    def requeue(self) -> None:
        close_old_connections()
        try:
            count = services.uploads_requeue_stale(
                older_than=timedelta(seconds=self.requeue_seconds),
                waiting_in_queue=waiting_in_queue(),
            )
        except DatabaseError as exc:
            logger.error("could not look for stalled uploads: %s", exc)
            return
        if count:
            logger.info("queued %s undecided uploads again", count)
        try:
            resent = services.retro_checks_resend(
                older_than=timedelta(seconds=self.requeue_seconds)
            )
        except DatabaseError as exc:
            logger.error("could not look for stalled look-backs: %s", exc)
            return
        if resent:
            logger.info("sent %s look-back checks again", resent)
