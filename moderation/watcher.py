"""The watcher: notices new files in the media tree and records them for the workers.

It never decodes an image. Events only nominate paths; a path is recorded once its size
and mtime have held still for a while, and a periodic walk of the whole tree catches
whatever events were dropped. Recording and queueing go through services.upload_register.
"""

import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from moderation import services
from moderation.models import Upload

logger = logging.getLogger(__name__)

TEMPORARY_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".swp", "~")


class ObserverDied(Exception):
    """The filesystem observer thread stopped; the watcher cannot go on without it."""


def is_candidate(path: Path, root: Path, suffixes: frozenset[str]) -> bool:
    """Whether a path names a file the watcher should look at, by its name alone."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return False
    if not parts or any(part.startswith((".", "~")) for part in parts):
        return False
    name = parts[-1].lower()
    if name.endswith(TEMPORARY_SUFFIXES):
        return False
    return Path(name).suffix in suffixes


def _signature(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_size, info.st_mtime_ns, info.st_ino)


def image_suffixes() -> frozenset[str]:
    return frozenset(suffix.lower() for suffix in settings.HASHGUARD_IMAGE_SUFFIXES)


def iter_candidates(
    directory: Path, root: Path, suffixes: frozenset[str]
) -> Iterator[tuple[Path, os.stat_result]]:
    """Every candidate file under directory, never following symlinks (a symlink with an
    image name is a candidate: it is recorded as an error, not read)."""
    stack = [directory]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            logger.warning("cannot list %s: %s", current, exc)
            continue
        for entry in entries:
            if entry.name.startswith((".", "~")):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                    path = Path(entry.path)
                    if is_candidate(path, root, suffixes):
                        yield path, entry.stat(follow_symlinks=False)
            except OSError:
                continue


class _Nominator(FileSystemEventHandler):
    def __init__(self, watcher: "MediaWatcher") -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "deleted", "closed_no_write"):
            return
        path = event.dest_path if event.event_type == "moved" else event.src_path
        path = Path(os.fsdecode(path))
        if event.is_directory:
            # A directory moved or made in: its files may never send events of their own.
            if event.event_type in ("moved", "created"):
                self.watcher.request_scan(path)
            return
        self.watcher.nominate(path)


class MediaWatcher:
    def __init__(
        self,
        root: Path,
        *,
        stop: threading.Event,
        suffixes: frozenset[str],
        stable_seconds: float = 1.0,
        rescan_seconds: float = 300.0,
        requeue_seconds: float = 600.0,
        polling: bool = False,
        tick_seconds: float = 0.2,
    ) -> None:
        self.root = root
        self.stop = stop
        self.suffixes = suffixes
        self.stable_seconds = stable_seconds
        self.rescan_seconds = rescan_seconds
        self.requeue_seconds = requeue_seconds
        self.polling = polling
        self.tick_seconds = tick_seconds
        self._lock = threading.Lock()
        # path -> (size, mtime_ns, monotonic time the signature last changed)
        self._pending: dict[Path, tuple[int, int, float]] = {}
        self._scan_requests: list[Path] = []
        # path -> (size, mtime_ns, inode) of files already recorded, so rescans skip them.
        self._recorded: dict[Path, tuple[int | None, int | None, int | None]] = {}
        self.observer: BaseObserver | None = None

    # -- called from the observer thread ------------------------------------------------

    def nominate(self, path: Path) -> None:
        if is_candidate(path, self.root, self.suffixes):
            with self._lock:
                self._pending[path] = (-1, -1, time.monotonic())

    def request_scan(self, directory: Path) -> None:
        with self._lock:
            self._scan_requests.append(directory)

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        self.observer = observer = PollingObserver() if self.polling else Observer()
        observer.schedule(_Nominator(self), str(self.root), recursive=True)
        observer.start()
        logger.info("watching %s", self.root)
        try:
            self.load_recorded()
            self.scan(self.root)
            next_rescan = time.monotonic() + self.rescan_seconds
            next_requeue = time.monotonic()  # at once: what waited while no watcher ran
            while not self.stop.is_set():
                if not observer.is_alive():
                    raise ObserverDied(f"the filesystem observer for {self.root} stopped")
                self.settle()
                now = time.monotonic()
                if now >= next_rescan:
                    self.scan(self.root)
                    next_rescan = now + self.rescan_seconds
                if now >= next_requeue:
                    self.requeue()
                    next_requeue = now + min(30.0, self.requeue_seconds)
                self.stop.wait(self.tick_seconds)
        finally:
            observer.stop()
            observer.join(timeout=10)
            connections.close_all()
            logger.info("stopped watching %s", self.root)

    def load_recorded(self) -> None:
        """Remember files recorded before this start, so the first scan skips them."""
        close_old_connections()
        rows = Upload.objects.values_list("path", "size", "mtime_ns", "inode")
        for relative, size, mtime_ns, inode in rows.iterator(chunk_size=10_000):
            self._recorded[self.root / relative] = (size, mtime_ns, inode)

    def scan(self, directory: Path) -> int:
        """Nominate every candidate file under directory not yet recorded as it is now."""
        count = 0
        for path, info in iter_candidates(directory, self.root, self.suffixes):
            if self._recorded.get(path) != _signature(info):
                with self._lock:
                    self._pending.setdefault(path, (-1, -1, time.monotonic()))
                count += 1
        return count

    def settle(self) -> None:
        """Record each nominated file whose size and mtime have held still long enough."""
        with self._lock:
            requests, self._scan_requests = self._scan_requests, []
        for directory in requests:
            self.scan(directory)
        with self._lock:
            pending = list(self._pending.items())
        now = time.monotonic()
        for path, (size, mtime_ns, changed_at) in pending:
            try:
                info = os.lstat(path)
            except OSError:
                self._drop(path)
                continue
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
                self._drop(path)
                continue
            if (info.st_size, info.st_mtime_ns) != (size, mtime_ns):
                with self._lock:
                    self._pending[path] = (info.st_size, info.st_mtime_ns, now)
            elif now - changed_at >= self.stable_seconds:
                self.record(path, info)

    def _drop(self, path: Path) -> None:
        with self._lock:
            self._pending.pop(path, None)

    def record(self, path: Path, info: os.stat_result) -> None:
        close_old_connections()
        try:
            upload, created = services.upload_register(path=path)
        except FileNotFoundError:
            self._drop(path)  # gone again before it could be recorded
            return
        except DatabaseError as exc:
            # Keep it pending: the next tick tries again once the database is back.
            logger.error("could not record %s, will retry: %s", path, exc)
            return
        except Exception as exc:
            # Nothing about one file may stop the watcher; skip it until it changes.
            logger.warning("skipped %s: %s", path, exc)
        else:
            if created:
                logger.info("recorded upload %s: %s (%s)", upload.pk, upload.path, upload.state)
        self._drop(path)
        self._recorded[path] = _signature(info)

    def requeue(self) -> None:
        close_old_connections()
        try:
            count = services.uploads_requeue_stale(
                older_than=timedelta(seconds=self.requeue_seconds)
            )
        except DatabaseError as exc:
            logger.error("could not look for stalled uploads: %s", exc)
            return
        if count:
            logger.info("queued %s undecided uploads again", count)
