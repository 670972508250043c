"""Each process's in-memory detector over the active banned fingerprints.

Before every image a process reads the blocklist version and the changes since it last
looked. A ban added, deactivated or deleted is a change (BlocklistChange), applied to the
detector in place: every worker uses it from its next file on, without a rebuild. Wider
changes (a bank enabled or changed, a wide import, a rehash) give a new version, and the
detector is built again from every row: by one process of the machine, which saves it to
a file that every process maps (see "one copy a machine" below).

The detector keeps hashes and colour signatures in memory; the ORB features of the few
candidates the second stage verifies are read from the database when needed, and kept in
a small cache that lives as long as this version of the blocklist.
"""

import ctypes
import ctypes.util
import fcntl
import gc
import hashlib
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import QuerySet
from django.utils import timezone

import hashes
from hashes import snapshot
from hashes.algorithms import Fingerprint
from hashes.detect import (
    COLOUR_BINS,
    DEFAULT_DETECT_CONFIG,
    BannedPicture,
    DetectConfig,
    Detection,
    Detector,
    HashRows,
    KeySet,
)
from hashes.feature_index import words_from_bytes
from hashes.local import LocalFeatures
from hashes.matching import DEFAULT_RULE_CONFIG, MatchRule
from moderation.hash_rows import hash_rows
from moderation.models import (
    HASH_ONLY,
    Bank,
    BannedFingerprint,
    BlocklistChange,
    BlocklistLoad,
    BlocklistVersion,
    Upload,
)

logger = logging.getLogger(__name__)
_CACHED_FEATURES = 2048


@dataclass
class _FeatureCache:
    entries: OrderedDict[int, LocalFeatures | None] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self, keys: Iterable[int]) -> dict[int, LocalFeatures]:
        keys = list(keys)
        with self.lock:
            missing = [key for key in keys if key not in self.entries]
        if missing:
            rows = BannedFingerprint.objects.filter(pk__in=missing).values_list("id", "features")
            stored = {key: bytes(data) if data else None for key, data in rows}
            with self.lock:
                for key in missing:
                    data = stored.get(key)
                    self.entries[key] = LocalFeatures.from_bytes(data) if data else None
                while len(self.entries) > _CACHED_FEATURES:
                    self.entries.popitem(last=False)
        with self.lock:
            found = {key: self.entries.get(key) for key in keys}
        return {key: value for key, value in found.items() if value is not None}


@dataclass(frozen=True)
class Verdict:
    """What the banks say of an upload's detections."""

    state: str  # Upload.State: CLEAN, QUARANTINED or REVIEW
    allowed: frozenset[int]  # the known-good pictures found (allow banks)
    voided: frozenset[int]  # the detections they account for, which do not count


@dataclass
class Blocklist:
    version: str
    detector: Detector
    # The fingerprints of banks whose action is review: a match leaves the file in place.
    review: KeySet = field(default_factory=KeySet)
    built_at: float = field(default_factory=time.time)
    # The newest change applied (a BlocklistChange id), and its key, op and time, to tell
    # that the feed is still the one followed: a database restored from a backup gives
    # the same ids to other changes, which may even be of the same key.
    seq: int = 0
    seq_change: tuple[int, str, datetime] | None = None
    # The newest change in the machine's file it is mapped from (None: a copy of its own),
    # and how many changes it has applied in place since: each costs pages of its own.
    saved_seq: int | None = None
    followed: int = 0
    # Held while the detector is changed in place, and while it is searched: a process
    # may search in one thread while another follows changes.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __getstate__(self) -> dict[str, object]:
        """Saved (``hashes.snapshot``) without the lock, which belongs to the process."""
        return {name: value for name, value in self.__dict__.items() if name != "lock"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state, lock=threading.Lock())

    def verdict(self, found: Mapping[int, Detection]) -> Verdict:
        """Act as the matching banks say: matches a known-good picture accounts for do not
        count (Detector.voided); of the rest, any quarantine bank's match quarantines, and
        review banks' alone leave the file in place."""
        detector = self.detector
        allowed = frozenset(key for key in found if detector.is_allowed(key))
        voided = detector.voided(found)
        counted = [key for key in found if key not in allowed and key not in voided]
        if any(key not in self.review for key in counted):
            state = Upload.State.QUARANTINED
        else:
            state = Upload.State.REVIEW if counted else Upload.State.CLEAN
        return Verdict(state, allowed, voided)


def match_rule() -> MatchRule:
    return MatchRule.from_config(settings.HASHGUARD_MATCH_RULE or DEFAULT_RULE_CONFIG)


def detect_config() -> DetectConfig:
    return DetectConfig.from_config(settings.HASHGUARD_DETECT or DEFAULT_DETECT_CONFIG)


def current_version() -> str:
    return current_state()[0]


def current_state() -> tuple[str, int]:
    """The version token and the newest change's id, in one read."""
    row = BlocklistVersion.objects.values_list("token", "last_change").first()
    return (row[0], row[1]) if row else ("", 0)


_ROW_FIELDS = (
    "id",
    "bank_id",
    "phash",
    "dhash",
    "pdq",
    "pdq_quality",
    "sha256",
    "md5",
    "colours",
    "words",
    "mirrored_words",
)


def _pictures(
    rows: Iterable[tuple], banks: Mapping[int, Bank]
) -> Iterator[tuple[int, BannedPicture, str]]:
    """(key, picture, its bank's action) for rows of _ROW_FIELDS of enabled banks."""
    limits = {pk: bank.limits() for pk, bank in banks.items()}
    for key, bank, phash, dhash, pdq, pdq_quality, sha256, md5, colours, words, mirrored in rows:
        if bank not in banks:
            continue  # enabled since the banks were read: a rebuild follows
        hashes = {
            name: value
            for name, value in (("phash", phash), ("dhash", dhash), ("pdq", pdq))
            if value
        }
        fingerprint = Fingerprint(hashes=hashes, pdq_quality=pdq_quality if pdq else None)
        signature = (
            np.frombuffer(bytes(colours), dtype=np.float16)
            if colours and len(colours) == 2 * COLOUR_BINS**3
            else None
        )
        action = banks[bank].action
        picture = BannedPicture(
            fingerprint,
            signature,
            sha256,
            md5,
            limits[bank],
            action == Bank.Act.ALLOW,
            words_from_bytes(words) if words else None,
            words_from_bytes(mirrored) if mirrored is not None else None,
        )
        yield key, picture, action


def _enabled_banks() -> dict[int, Bank]:
    return {bank.pk: bank for bank in Bank.objects.filter(enabled=True)}


def build_blocklist() -> Blocklist:
    """The active fingerprints of enabled banks."""
    # A build makes millions of small objects, freed by reference counting as it goes:
    # the collector's passes over them would find nothing and cost a third of the time.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _build()
    finally:
        if paused:
            gc.enable()
        _release_freed_memory()


def _release_freed_memory() -> None:
    """Hand the heap the build freed back to the system (glibc keeps it otherwise): at 1M
    bans, 110 MB of a worker's memory, which its pool processes would all inherit."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _libc()
# One malloc arena for every thread: what the build's threads (hashes.index) freed stays
# in arenas of their own otherwise, out of malloc_trim's reach; at 3M bans, 70 MB that the
# process that built kept for good, beside none.
_M_ARENA_MAX = -8
if _LIBC is not None and hasattr(_LIBC, "mallopt"):
    _LIBC.mallopt(_M_ARENA_MAX, 1)


def _build() -> Blocklist:
    # Read the version and the newest change before the rows: a change committed in
    # between is seen by the next check, never missed.
    version, last_change = current_state()
    if not version:
        # There is always a version to hold: a database restored from an older backup
        # then has another, and every process builds again rather than follow changes
        # from rows it no longer has.
        version = BlocklistVersion.objects.get_or_create(
            pk=1, defaults={"token": uuid.uuid4().hex}
        )[0].token
    detector = Detector(match_rule(), detect_config(), _FeatureCache().load)
    banks = _enabled_banks()
    # Hashes alone, as lists give them (millions of rows), are read as columns, bank by
    # bank, at a fraction of the cost of a picture object for each; the rest one by one
    # (known-good ones too, which Detector.voided needs as pictures).
    active = BannedFingerprint.objects.filter(active=True).order_by()
    allow = [pk for pk, bank in banks.items() if bank.action == Bank.Act.ALLOW]
    banning = [bank for pk, bank in banks.items() if pk not in allow]
    selected = [active.filter(bank__in=allow), active.filter(~HASH_ONLY, bank__in=banning)]
    rows = (
        row
        for query in selected
        for row in query.values_list(*_ROW_FIELDS).iterator(chunk_size=10_000)
    )
    review: set[int] = set()

    def pictures() -> Iterator[tuple[int, BannedPicture]]:
        for key, picture, action in _pictures(rows, banks):
            if action == Bank.Act.REVIEW:
                review.add(key)
            yield key, picture

    detector.add_all(pictures())
    for bank in banning:
        in_bank = active.filter(HASH_ONLY, bank=bank)
        held = review if bank.action == Bank.Act.REVIEW else None
        detector.add_hash_rows(_hash_rows(in_bank, held), bank.limits())
    if not detector.mirrors_all:
        logger.warning(
            "Some banned pictures have no mirrored keypoint words (banned before they were "
            "stored): their mirrored copies are found through each upload mirrored, which "
            "costs about 4 ms more an upload. `manage.py rehash` adds them."
        )
    return Blocklist(
        version, detector, KeySet(review), seq=last_change, seq_change=_change_at(last_change)
    )


def _hash_rows(
    selected: "QuerySet[BannedFingerprint]", review: set[int] | None
) -> Iterator[HashRows]:
    """The rows ``selected``, in batches of columns; their keys are added to ``review``
    when it is given."""
    for batch in hash_rows(selected):
        if review is not None:
            review.update(batch.keys.tolist())
        yield batch


_CHANGE_FIELDS = ("fingerprint_id", "op", "created_at")


def _change_at(change_id: int) -> tuple[int, str, datetime] | None:
    row = BlocklistChange.objects.filter(pk=change_id).values_list(*_CHANGE_FIELDS)
    found = row.first()
    return (found[0], found[1], found[2]) if found else None


# More changes than this at once are read as a rebuild.
FOLLOW_LIMIT = 5000


def _follow(blocklist: Blocklist, last_change: int) -> bool:
    """Apply, in place, the changes after the newest one the blocklist has, up to
    ``last_change``: each changed key's row is read again, so whatever the changes said,
    the blocklist ends as the rows are. False when a rebuild is needed: too many changes,
    or the feed is not the one followed (a database restored from a backup)."""
    if last_change == blocklist.seq:
        return True
    if last_change < blocklist.seq:
        return False  # the feed went back
    changes = list(
        BlocklistChange.objects.filter(id__gte=blocklist.seq, id__lte=last_change)
        .order_by("id")
        .values_list("id", *_CHANGE_FIELDS)[: FOLLOW_LIMIT + 1]
    )
    if blocklist.seq:
        # The change it followed last must still be there, as it was.
        if not changes or (changes[0][0], changes[0][1:]) != (blocklist.seq, blocklist.seq_change):
            return False
        changes = changes[1:]
    if len(changes) >= FOLLOW_LIMIT:
        return False
    keys = {key for _, key, _, _ in changes}
    rows = BannedFingerprint.objects.filter(
        pk__in=keys, active=True, bank__enabled=True
    ).values_list(*_ROW_FIELDS)
    pictures: dict[int, BannedPicture] = {}
    review: set[int] = set()
    for key, picture, action in _pictures(list(rows), _enabled_banks()):
        pictures[key] = picture
        if action == Bank.Act.REVIEW:
            review.add(key)
    with blocklist.lock:
        for key in keys:
            blocklist.detector.remove(key)
            blocklist.review.discard(key)
        blocklist.detector.add_all(pictures)
        for key in review:
            blocklist.review.add(key)
        if changes:
            newest = changes[-1]
            blocklist.seq, blocklist.seq_change = newest[0], (newest[1], newest[2], newest[3])
        blocklist.followed += len(changes)
    return True


# -- one copy a machine ----------------------------------------------------------------
#
# A process that builds the blocklist saves it in DATA_DIR/blocklists/<host>, and every
# process on the machine maps that file (hashes.snapshot): its arrays, nearly all of its
# memory, are then one copy in the page cache, shared by every worker and web process
# however many there are, and a process started later (a pool process replaced, a web
# process added) maps it in milliseconds. One process builds at a time (a file lock), so that
# after a wide change the others wait for its file rather than each build its own. The
# newest file is the machine's; those it replaces are removed as it is written, and live
# on only for the processes that still map them.

_SNAPSHOT_SUFFIX = ".blocklist"


def _snapshots() -> Path:
    """This machine's folder: a data folder shared by several machines (over NFS, say)
    still gives each its own files, which no other machine removes while it maps them."""
    return Path(settings.DATA_DIR) / "blocklists" / socket.gethostname()


def _code_digest() -> str:
    """The code that builds and reads a blocklist (hashes, and this app's modules, its
    models among them): a file saved by other code is not loaded."""
    digest = hashlib.sha256(f"{sys.version} numpy {np.__version__}".encode())
    for package in (Path(hashes.__file__).parent, Path(__file__).parent):
        for source in sorted(package.glob("*.py")):
            digest.update(source.read_bytes())
    return digest.hexdigest()


# Read as the process starts: code replaced on disk while it runs is not its code.
_CODE_DIGEST = _code_digest()


def _snapshot_kind() -> str:
    """What a saved blocklist must have been built with to be used here: this code, this
    rule and this detection's settings."""
    digest = hashlib.sha256(_CODE_DIGEST.encode())
    digest.update(repr((match_rule(), detect_config())).encode())
    return digest.hexdigest()[:16]


def _snapshot_name(blocklist: Blocklist) -> str:
    return f"{blocklist.version}.{blocklist.seq}.{_snapshot_kind()}{_SNAPSHOT_SUFFIX}"


def _newest_snapshot() -> tuple[Path, str, int] | None:
    """The machine's newest saved blocklist of this code and settings: its file, version
    and newest change."""
    found = []
    for path in _snapshots().glob(f"*.{_snapshot_kind()}{_SNAPSHOT_SUFFIX}"):
        version, seq = path.name.split(".")[:2]
        if not seq.isdigit():
            continue
        try:
            found.append((path.stat().st_mtime_ns, path, version, int(seq)))
        except FileNotFoundError:
            continue  # replaced meanwhile
    return max(found)[1:] if found else None


def _load(path: Path) -> Blocklist:
    loaded = snapshot.load(path)
    if not isinstance(loaded, Blocklist):
        raise snapshot.SnapshotError(f"{path} holds no blocklist")
    loaded.detector.load_features = _FeatureCache().load
    loaded.saved_seq, loaded.followed = loaded.seq, 0
    return loaded


def _mapped() -> Blocklist | None:
    """The machine's saved blocklist, when it is of the current version, mapped and
    brought up to date; else None."""
    newest = _newest_snapshot()
    if newest is None:
        return None
    path = newest[0]
    try:
        loaded = _load(path)
    except FileNotFoundError:
        return None  # replaced since it was listed: the process that did so built anew
    except Exception:  # whatever is wrong with the file, a build replaces it
        logger.exception("could not map the saved blocklist %s, building it again", path)
        return None
    # Read after the file: a file saved after the caller read the state is not taken for
    # a feed gone back.
    version, last_change = current_state()
    if loaded.version != version or not _follow(loaded, last_change):
        return None
    logger.info("mapped the machine's blocklist %s", path.name)
    return loaded


def _saved(blocklist: Blocklist) -> Blocklist:
    """``blocklist``, saved for the machine's processes, and mapped from its file; or
    ``blocklist`` itself when it cannot be saved (each process then holds its own).
    Called holding the build lock: every other file there is a replaced one, or one cut
    short by a process killed while it wrote, and goes."""
    path = _snapshots() / _snapshot_name(blocklist)
    try:
        snapshot.save(blocklist, path)
        for other in _snapshots().iterdir():
            if other.name not in (path.name, _LOCK_NAME):
                other.unlink(missing_ok=True)
        return _load(path)
    except Exception:  # whatever it was, matching goes on with this process's own copy
        logger.exception(
            "could not save the blocklist for this machine's processes to share; each "
            "builds its own copy"
        )
        return blocklist


_LOCK_NAME = "build.lock"
_building_lock: int | None = None  # the descriptor of the machine's build lock, while held


@contextmanager
def _building() -> Iterator[None]:
    """Held while this process builds: the machine's other processes wait for it."""
    global _building_lock
    try:
        _snapshots().mkdir(parents=True, exist_ok=True)
        descriptor = os.open(_snapshots() / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        logger.warning("building without the machine's build lock: %s", exc)
        yield
        return
    _building_lock = descriptor  # from now: a child forked while this waits closes it
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError as exc:
            logger.warning("building without the machine's build lock: %s", exc)
        else:
            # Files are written holding the lock: one part-written now is a dead writer's.
            for part in _snapshots().glob(".*.part"):
                part.unlink(missing_ok=True)
        yield
    finally:
        _building_lock = None
        os.close(descriptor)


def _forget_inherited_lock() -> None:
    """A process forked while its parent builds shares the lock's descriptor, which would
    keep the lock held until both closed it: the child closes its copy."""
    global _building_lock
    if _building_lock is not None:
        os.close(_building_lock)
        _building_lock = None


os.register_at_fork(after_in_child=_forget_inherited_lock)


def _machine_blocklist() -> Blocklist:
    """The current blocklist: mapped from the machine's saved one, or built (by one
    process at a time) and saved."""
    found = _mapped()
    if found is not None:
        return found
    with _building():
        found = _mapped()  # saved by another while this one waited
        if found is not None:
            return found
        started = time.monotonic()
        shared = _saved(build_blocklist())
        logger.info(
            "built the blocklist of version %s (%d fingerprints) in %.1f s",
            shared.version,
            len(shared.detector),
            time.monotonic() - started,
        )
    _release_freed_memory()  # the copy built, which the file stands for now
    return shared


def _rebased(held: Blocklist) -> Blocklist:
    """``held``, which has followed FOLLOW_LIMIT changes since its file was saved, mapped
    from a newer file: another process's, or its own saved now. Changes applied in place
    cost each process pages of its own, and, past a share of an index (1/64 of its codes
    added), a private copy of that index rebuilt."""
    with _building():
        if current_state()[0] != held.version:
            return held  # a wide change meanwhile: the next check builds anew
        newest = _newest_snapshot()
        newer = (
            newest is not None and newest[1] == held.version and newest[2] > (held.saved_seq or 0)
        )
        found = _mapped() if newer else None
        if found is not None:
            return found
        started = time.monotonic()
        with held.lock:  # no change is applied while it is saved
            shared = _saved(held)
        if shared is held:  # not saved: it goes on as this process's own copy
            held.saved_seq = None
            return held
        logger.info(
            "saved the blocklist again, %d changes on, in %.1f s",
            held.followed,
            time.monotonic() - started,
        )
        return shared


_lock = threading.Lock()
_current: Blocklist | None = None
_recorded_at = 0.0
_unrecorded = False  # changes followed that BlocklistLoad does not show yet
# How often a process says, in BlocklistLoad, that it still holds its blocklist.
RECORD_SECONDS = 30.0
FOLLOWED_RECORD_SECONDS = 2.0


def current_blocklist() -> Blocklist:
    """This process's blocklist, brought up to date: the changes since applied, or, after
    a wide change, the machine's new one mapped (or built and saved)."""
    global _current
    version, last_change = current_state()
    with _lock:
        held = _current
        followed = held is not None and held.version == version and held.seq != last_change
        rebuilt = held is None or held.version != version or not _follow(held, last_change)
        if rebuilt:
            held = _current = None  # not held while another is made
            _current = _machine_blocklist()
        elif held is not None and held.saved_seq is not None and held.followed >= FOLLOW_LIMIT:
            _current = _rebased(held)
        current = _current
        assert current is not None
    _record(current, rebuilt, followed)
    return current


def preload() -> None:
    """Make sure the machine's blocklist is saved, in a worker's main process before its
    pool processes fork: built, unless a file of the current version is there already
    (an earlier run's, another process's). Each pool process maps it at its first check;
    this process, which checks no files, keeps no copy that a wide change would leave
    behind. A database that cannot be read is logged: the pool processes then build it.

    The objects made so far are frozen, so that the collector in the forked processes
    does not write to the pages they share.
    """
    try:
        with _lock:
            _machine_blocklist()
    except DatabaseError as exc:
        logger.warning("could not build the blocklist before forking: %s", exc)
    finally:
        connections.close_all()
    gc.collect()  # the file's mapping goes with the last of the copy loaded from it
    gc.freeze()


def held_blocklist() -> Blocklist | None:
    """The blocklist this process holds now, current or not, without building one."""
    return _current


_loading = threading.Lock()


def load_in_background() -> None:
    """Build this process's blocklist in a thread, unless one is building it already:
    a new web process becomes ready for lookups without a request waiting for it."""
    if not _loading.acquire(blocking=False):
        return

    def load() -> None:
        try:
            current_blocklist()
        except Exception:
            logger.exception("loading the blocklist failed")
        finally:
            connections.close_all()
            _loading.release()

    threading.Thread(target=load, name="hashguard-blocklist", daemon=True).start()


def _record(blocklist: Blocklist, rebuilt: bool, followed: bool = False) -> None:
    """Say which blocklist this process holds, for /metrics: after each rebuild, and
    every RECORD_SECONDS while it checks."""
    global _recorded_at, _unrecorded
    now = time.monotonic()
    # After a rebuild at once; after changes followed soon (a stream of bans added through
    # the API must not cost a write per upload); else now and then.
    _unrecorded = _unrecorded or followed
    wait = 0.0 if rebuilt else FOLLOWED_RECORD_SECONDS if _unrecorded else RECORD_SECONDS
    if now - _recorded_at < wait:
        return
    _recorded_at, _unrecorded = now, False
    at = timezone.now()
    try:
        with transaction.atomic():  # a savepoint, should a caller's transaction be open
            _write_load(blocklist, at)
    except DatabaseError as exc:
        logger.warning("could not record this process's blocklist: %s", exc)


def _write_load(blocklist: Blocklist, at: datetime) -> None:
    BlocklistLoad.objects.update_or_create(
        process=f"{socket.gethostname()}:{os.getpid()}",
        defaults={
            "version": blocklist.version,
            "last_change": blocklist.seq,
            "built_at": datetime.fromtimestamp(blocklist.built_at, tz=UTC),
            "checked_at": at,
            "fingerprints": len(blocklist.detector),
        },
    )
    BlocklistLoad.objects.filter(checked_at__lt=at - timedelta(days=1)).delete()
