"""The pipeline: recording files, queueing them, claiming, checking and deciding them."""

import contextlib
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from hashes.detect import Detection, Probe, probes
from hashes.errors import ImageError
from hashes.loading import SNIFF_BYTES, describe_content, image_kind
from moderation import files, metrics
from moderation.blocklist import Blocklist, Verdict, current_blocklist
from moderation.models import (
    BannedFingerprint,
    ErrorCode,
    Match,
    Transition,
    Upload,
)
from moderation.services.common import (
    Action,
    ActionRefused,
    State,
    audit,
    check_seen,
    in_media,
    in_quarantine,
    load,
)
from moderation.tasks import is_transient

logger = logging.getLogger(__name__)


def _path_fields(relative: bytes) -> dict[str, object]:
    text = files.display(relative)
    return {
        "path": text,
        "raw_path": None if text.encode() == relative else relative,
        "path_key": hashlib.sha256(relative).hexdigest(),
    }


def upload_path_key(path: str | bytes | os.PathLike) -> str:
    """How the records of a file in the media tree are found: by its exact path bytes."""
    relative = files.relative_to_store(path, files.media_dir())
    return str(_path_fields(relative)["path_key"])


# --- uploads: the pipeline ------------------------------------------------------------

# States whose record still describes the file at its path; a newer file there supersedes
# them. Quarantined, held and released records stay: they are moderators' history.
_LIVE = Transition.SUPERSEDE.sources


def upload_register(*, path: str | bytes | os.PathLike) -> tuple[Upload, bool]:
    """Record a file in the media tree and queue it, unless it is already recorded.

    A file is a new upload when its bytes or inode changed since its path was last
    recorded, or that record is closed (quarantined, held, an error, superseded); the
    same bytes again while the first copy waits for its decision are the same upload.
    A new upload supersedes the older live records of its path, and those of the same
    inode under a name it no longer has (a write-then-rename). Content that is no image
    is recorded as such at once and left alone; a file hashguard must not or cannot read
    (a symlink, a device, no permission) is recorded as an error with the reason.

    Returns the upload and whether it is new. Raises files.UnsafePath for paths outside
    the media tree or through a symlinked directory, and FileNotFoundError if the file
    is gone.
    """
    media = files.media_dir()
    relative = files.relative_to_store(path, media)
    info = files.lstat(media, relative)
    fields: dict[str, object] = {
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "inode": info.st_ino,
        "file_mode": stat.S_IMODE(info.st_mode),
        "sha256": "",
    }
    problem = _unreadable(info)
    head = b""
    if problem is None:
        try:
            if info.st_size <= settings.HASHGUARD_MAX_BYTES:
                fields["sha256"], fields["size"], head = files.sha256_of_file(media, relative)
            else:  # the worker holds it as too large to check, if it is an image
                head = files.read_regular_file(media, relative, max_bytes=SNIFF_BYTES - 1)
        except PermissionError as exc:
            problem = (ErrorCode.UNREADABLE, f"hashguard may not read this file ({exc.strerror}).")
        except files.UnsafePath as exc:
            problem = (ErrorCode.UNSAFE_PATH, str(exc))
    if problem is not None:
        fields.update(state=State.ERROR, error_code=problem[0], error=problem[1])
    elif image_kind(head[:SNIFF_BYTES]) is None:
        fields.update(
            state=State.NOT_IMAGE,
            error_code=ErrorCode.NOT_IMAGE,
            error=f"The content is not an image{describe_content(head)}, whatever the name "
            "says; it was left alone.",
        )
    if fields.get("state") in (State.ERROR, State.NOT_IMAGE):
        fields["decided_at"] = timezone.now()
    path_fields = _path_fields(relative)
    try:
        with transaction.atomic():
            latest = (
                Upload.objects.select_for_update()
                .filter(path_key=path_fields["path_key"])
                .order_by("-id")
                .first()
            )
            if latest is not None and _same_upload(latest, fields):
                if latest.state in (State.PENDING, State.PROCESSING):
                    # Copied anew while it waits: the record describes the file there now.
                    for name in ("mtime_ns", "inode", "file_mode"):
                        setattr(latest, name, fields[name])
                    latest.save(update_fields=["mtime_ns", "inode", "file_mode"])
                return latest, False
            upload = Upload.objects.create(**path_fields, **fields)
            _supersede(upload)
            if upload.state == State.PENDING:
                upload_enqueue(upload_id=upload.pk)
            else:
                _count_decision(upload, upload.state)
    except IntegrityError:
        # Another process recorded the same file between the check and the insert.
        upload = Upload.objects.filter(path_key=path_fields["path_key"]).latest("id")
        return upload, False
    return upload, True


def _same_upload(latest: Upload, fields: Mapping[str, object]) -> bool:
    if latest.sha256 != fields["sha256"]:
        return False
    same_file = (latest.size, latest.mtime_ns, latest.inode) == (
        fields["size"],
        fields["mtime_ns"],
        fields["inode"],
    )
    if not latest.sha256:
        return same_file  # unhashed (unreadable, too large): only its metadata tells
    if latest.state in (State.PENDING, State.PROCESSING):
        return True  # the same bytes again while the first copy waits for its decision
    # A released file is put back as it was: it is the record's own file. One left in place
    # for review never moved.
    return (
        latest.state in (State.CLEAN, State.NOT_IMAGE, State.RELEASED, State.REVIEW) and same_file
    )


def _supersede(upload: Upload) -> None:
    older = Upload.objects.filter(state__in=_LIVE).exclude(pk=upload.pk)
    at_path = older.filter(path_key=upload.path_key)
    renamed = [
        other.pk
        for other in older.filter(inode=upload.inode).exclude(path_key=upload.path_key)
        if not _still_there(other)
    ]
    (at_path | older.filter(pk__in=renamed)).update(
        state=State.SUPERSEDED, superseded_by=upload, lease_expires_at=None
    )


def _still_there(upload: Upload) -> bool:
    """Whether the file the record describes is still at its path."""
    try:
        info = files.lstat(*in_media(upload))
    except (OSError, files.UnsafePath):
        return False
    return info.st_ino == upload.inode


def _unreadable(info: os.stat_result) -> tuple[str, str] | None:
    if stat.S_ISLNK(info.st_mode):
        return ErrorCode.UNSAFE_PATH, "This is a symlink; hashguard never follows symlinks."
    if not stat.S_ISREG(info.st_mode):
        return ErrorCode.UNSAFE_PATH, "This is not a regular file."
    return None


def upload_enqueue(*, upload_id: int) -> None:
    """Queue the upload for a worker once the current transaction commits."""
    transaction.on_commit(lambda: _send_to_worker(upload_id))


def _send_to_worker(upload_id: int) -> bool:
    from moderation.tasks import process_upload

    now = timezone.now()
    try:
        process_upload.delay(upload_id)
    except Exception as exc:  # the broker is down: keep the upload pending, say why
        logger.warning("could not queue upload %s: %s", upload_id, exc)
        Upload.objects.filter(pk=upload_id, state=State.PENDING).update(
            queued_at=now,
            error_code=ErrorCode.QUEUE_UNAVAILABLE,
            error=f"Could not reach the task queue ({exc}); it will be queued again.",
        )
        return False
    Upload.objects.filter(pk=upload_id, state=State.PENDING).update(
        queued_at=now, error_code="", error=""
    )
    return True


# A file that stopped a worker this often (out of memory, a decoder crash) is not retried.
MAX_ATTEMPTS = 3
REQUEUE_BATCH = 1000
# A worker's claim on an upload lasts this long unless renewed; it renews it every third
# of it while it works, so an upload whose worker died is taken over within this time.
LEASE = timedelta(seconds=30)


def uploads_requeue_stale(*, older_than: timedelta, waiting_in_queue: int | None) -> int:
    """Queue again what a lost message, a dead worker or a broker outage left undecided.

    Uploads whose claim's lease ran out go back to the queue, as do uploads never sent.
    An upload sent more than older_than ago is sent again unless its message may still
    be waiting: the queue is first in, first out, so of the uploads sent, the newest
    waiting_in_queue (the broker's count, None when unknown) can still be in it.
    """
    now = timezone.now()
    Upload.objects.filter(state=State.PROCESSING).filter(
        Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True)
    ).update(state=State.PENDING, lease_expires_at=None, queued_at=None)
    pending = Upload.objects.filter(state=State.PENDING)
    never_sent = pending.filter(
        Q(queued_at__isnull=True) | Q(error_code=ErrorCode.QUEUE_UNAVAILABLE)
    )
    ids = list(never_sent.order_by("id").values_list("pk", flat=True)[:REQUEUE_BATCH])
    sent = pending.filter(queued_at__isnull=False).exclude(error_code=ErrorCode.QUEUE_UNAVAILABLE)
    outside_queue = REQUEUE_BATCH
    if waiting_in_queue is not None:
        outside_queue = min(REQUEUE_BATCH, max(0, sent.count() - waiting_in_queue))
    stale = sent.filter(queued_at__lt=now - older_than).order_by("queued_at", "id")
    ids += list(stale.values_list("pk", flat=True)[:outside_queue])
    count = 0
    for upload_id in ids:
        if not _send_to_worker(upload_id):
            break  # the queue is down: the next pass tries again
        count += 1
    return count


def upload_retry(
    *, upload_id: int, actor: User | None, seen: str | None = None, note: str = ""
) -> Upload:
    """Check an upload that ended in an error or was held again, e.g. after a fault was
    fixed. A held file is checked where it waits, and put back if it is clean."""
    with transaction.atomic():
        current = Upload.objects.select_for_update().filter(pk=upload_id).first()
        if current is not None:
            check_seen(current, seen)
        failed = Upload.objects.filter(pk=upload_id, state__in=Transition.RETRY.sources).exclude(
            sha256=""
        )
        if not failed.update(
            state=State.PENDING, error_code="", error="", decided_at=None, attempts=0
        ):
            raise ActionRefused(
                "Only an upload in error or held whose file could be read can be checked "
                "again; a file that could not be read is recorded anew once it changes."
            )
        upload = Upload.objects.get(pk=upload_id)
        audit(Action.UPLOAD_RETRIED, actor=actor, upload=upload, note=note)
        upload_enqueue(upload_id=upload_id)
    return upload


class _Claim:
    """A worker's lease on one upload: decisions are written only while it holds."""

    def __init__(self, upload_id: int, claimed_at: datetime) -> None:
        self.upload_id = upload_id
        self.claimed_at = claimed_at

    @property
    def rows(self) -> QuerySet:
        return Upload.objects.filter(
            pk=self.upload_id, state=State.PROCESSING, claimed_at=self.claimed_at
        )

    @classmethod
    def take(cls, upload_id: int) -> "_Claim | None":
        """Claim a pending upload, or one whose last claim's lease ran out."""
        now = timezone.now()
        free = Q(state=State.PENDING) | Q(
            Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True),
            state=State.PROCESSING,
        )
        claimed = Upload.objects.filter(free, pk=upload_id).update(
            state=State.PROCESSING,
            claimed_at=now,
            lease_expires_at=now + LEASE,
            attempts=F("attempts") + 1,
        )
        return cls(upload_id, now) if claimed else None

    def renew(self) -> bool:
        return bool(self.rows.update(lease_expires_at=timezone.now() + LEASE))

    def give_back(self) -> None:
        """Hand the upload back after a fault that may pass: that attempt does not count
        towards MAX_ATTEMPTS, which is for files that kill their worker."""
        self.rows.update(state=State.PENDING, lease_expires_at=None, attempts=F("attempts") - 1)

    @contextlib.contextmanager
    def renewed(self) -> Iterator[None]:
        """Renew the lease from a thread for as long as the work inside takes."""
        stop = threading.Event()

        def renew() -> None:
            try:
                while not stop.wait(LEASE.total_seconds() / 3):
                    if not self.renew():
                        return
            except DatabaseError as exc:
                logger.warning("could not renew the claim on upload %s: %s", self.upload_id, exc)
            finally:
                connections.close_all()

        thread = threading.Thread(target=renew, name=f"lease-{self.upload_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def upload_process(*, upload_id: int) -> Upload | None:
    """Fingerprint one upload, match it, and quarantine it or record it as clean.

    Claims the upload first, under a lease that it renews while it works, so that a
    second delivery of the same task does nothing while the first works, and takes over
    once the first's worker died. The decision is written only if the claim still holds,
    so a worker that was presumed dead cannot overwrite its successor's. Files that
    cannot be checked are held for a moderator (HASHGUARD_UNCHECKABLE); database and
    filesystem faults are raised for the task to retry, with the claim given back.
    """
    claim = _Claim.take(upload_id)
    if claim is None:
        return Upload.objects.filter(pk=upload_id).first()
    upload = Upload.objects.get(pk=upload_id)
    if upload.attempts > MAX_ATTEMPTS:
        _decide_uncheckable(
            claim.rows,
            upload,
            ErrorCode.WORKER_DIED,
            f"Checking this file stopped a worker {MAX_ATTEMPTS} times (out of memory or a "
            "crash while decoding); it will not be tried again.",
        )
        return Upload.objects.get(pk=upload_id)
    try:
        with claim.renewed():
            _process_claimed(upload, claim.rows)
    except Exception:
        claim.give_back()
        raise
    return Upload.objects.get(pk=upload_id)


def upload_fail(*, upload_id: int, code: str, message: str) -> None:
    """Record that an upload could not be checked: held or left, by HASHGUARD_UNCHECKABLE."""
    rows = Upload.objects.filter(pk=upload_id, state__in=Transition.FAIL.sources)
    upload = rows.first()
    if upload is not None:
        _decide_uncheckable(rows, upload, code, message)


@dataclass(frozen=True)
class Decision:
    """What checking an upload found, before anything is written."""

    state: str  # CLEAN, QUARANTINED, or one of _decide_error's and _decide_uncheckable's
    code: str = ""
    message: str = ""
    # Where the file is: still in media, or already in quarantine from a lost attempt.
    already_moved: bool = False
    # What was learned of the image: format, size, frames, fingerprints.
    fields: Mapping[str, object] = field(default_factory=dict)
    found: Mapping[int, Detection] = field(default_factory=dict)
    # Known-good pictures found (allow banks), and the matches they account for.
    allowed: frozenset[int] = frozenset()
    voided: frozenset[int] = frozenset()
    # Found by a ban added after the upload was recorded clean (services/retro.py).
    later: bool = False


def _process_claimed(upload: Upload, claim: QuerySet) -> None:
    apply_decision(upload, claim, _decide(upload))


def _decide(upload: Upload) -> Decision:
    """Read and check the upload's file; writes nothing."""
    # 1. Read the file, from quarantine if a lost attempt already moved it there.
    try:
        data, already_moved = _read(upload)
    except FileNotFoundError:
        return Decision(
            State.ERROR, ErrorCode.MISSING, "The file was removed before it could be checked."
        )
    except files.UnsafePath as exc:
        return Decision(State.ERROR, ErrorCode.UNSAFE_PATH, str(exc))
    except PermissionError as exc:
        return Decision(
            State.ERROR,
            ErrorCode.UNREADABLE,
            f"hashguard may not read this file ({exc.strerror}).",
        )
    # 2. It must be what was recorded.
    sha256 = files.sha256_of(data)
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if upload.sha256 and sha256 != upload.sha256:
        return Decision(
            State.ERROR,
            ErrorCode.CHANGED,
            "The file changed after it was recorded; its new content is a new upload.",
        )
    # 3. Decode it; an exact copy of a banned file is caught even if it cannot be decoded.
    blocklist = current_blocklist()
    detector = blocklist.detector
    fields: dict[str, object] = {"error_code": "", "error": ""}
    try:
        loaded = load(data)
    except ImageError as exc:
        with blocklist.lock:
            banned_file = detector.bans_file(sha256, md5)
        if not banned_file:
            if exc.uncheckable:
                return Decision(State.HELD, exc.code, str(exc), already_moved)
            if exc.code == ErrorCode.NOT_IMAGE:
                return Decision(State.NOT_IMAGE, exc.code, str(exc), already_moved)
            return Decision(State.ERROR, exc.code, str(exc), already_moved)
        checked = []
    else:
        checked = probes(loaded)
        fields.update(
            format=loaded.format,
            width=loaded.width,
            height=loaded.height,
            frame_count=loaded.frame_count,
            fingerprints=[
                {"hashes": item.fingerprint.hashes, "pdq_quality": item.fingerprint.pdq_quality}
                for item in checked
            ],
        )
        if loaded.damage:
            fields["error"] = (
                f"The file is damaged or cut short ({loaded.damage}); it was checked as far "
                "as it decodes, as a browser would show it."
            )
    # 4. Match it, and act as the banks say.
    found, verdict = judge(blocklist, checked, sha256, md5)
    return Decision(
        verdict.state,
        already_moved=already_moved,
        fields=fields,
        found=found,
        allowed=verdict.allowed,
        voided=verdict.voided,
    )


def judge(
    blocklist: Blocklist,
    checked: list[Probe],
    sha256: str,
    md5: str,
    among: QuerySet[BannedFingerprint] | None = None,
) -> tuple[dict[int, Detection], Verdict]:
    """Both stages on a file's probes, less the bans a moderator let this content pass,
    and what the banks say of the rest: what a worker decides, and the API answers. With
    ``among``, only the bans it selects count, and the known-good ones (a look-back)."""
    with blocklist.lock:  # not changed by another thread meanwhile
        found = blocklist.detector.detect(checked, sha256, md5)
    released = released_keys(sha256, found)
    found = {key: hit for key, hit in found.items() if key not in released}
    chosen = None
    if among is not None:
        chosen = set(among.filter(pk__in=found).values_list("pk", flat=True))
    with blocklist.lock:
        if chosen is not None:
            allowed = blocklist.detector.is_allowed
            found = {key: hit for key, hit in found.items() if key in chosen or allowed(key)}
        return found, blocklist.verdict(found)


def _read(upload: Upload) -> tuple[bytes, bool]:
    """The upload's bytes, and whether they were found already moved to quarantine."""
    limit = settings.HASHGUARD_MAX_BYTES
    try:
        return files.read_regular_file(*in_media(upload), max_bytes=limit), False
    except FileNotFoundError:
        # An earlier attempt moved it but did not get to record that.
        return files.read_regular_file(*in_quarantine(upload), max_bytes=limit), True


def apply_decision(upload: Upload, claim: QuerySet, decision: Decision) -> bool:
    """Write a decision, only while the claim holds, and move the file to match it;
    whether it was written (the decisions of errors and held files say nothing)."""
    if decision.state == State.HELD:
        _decide_uncheckable(
            claim,
            upload,
            decision.code,
            decision.message,
            already_moved=decision.already_moved,
        )
        return False
    if decision.state not in (State.CLEAN, State.QUARANTINED, State.REVIEW):
        _decide_error(claim, upload, decision.code, decision.message, state=decision.state)
        return False
    source, quarantined = in_media(upload), in_quarantine(upload)
    quarantine = decision.state == State.QUARANTINED
    with transaction.atomic():
        # 1. The conditional update: nothing more happens if the claim was lost.
        written = claim.update(
            state=decision.state,
            quarantine_name=files.display(quarantined[1]) if quarantine else "",
            decided_at=timezone.now(),
            lease_expires_at=None,
            **decision.fields,
        )
        if not written:
            return False
        _count_decision(upload, decision.state)
        # 2. What it matched: a row per fingerprint (known-good ones too), and the audit.
        Match.objects.bulk_create(
            (
                Match(
                    upload=upload,
                    fingerprint_id=key,
                    distances=detection.distances,
                    rule=detection.rule,
                    stage=detection.stage,
                    variant=detection.variant[:255],
                    placement={
                        "turn": detection.turn,
                        "box": list(detection.box) if detection.box else None,
                        "rotation": round(detection.rotation, 1),
                    },
                    frame=detection.frame,
                    voided=key in decision.voided,
                    found_later=decision.later,
                )
                for key, detection in decision.found.items()
            ),
            # A clean upload looked at again had rows (known-good matches): they now say
            # what this decision found.
            update_conflicts=True,
            unique_fields=["upload", "fingerprint"],
            update_fields=[
                "distances",
                "rule",
                "stage",
                "variant",
                "placement",
                "frame",
                "voided",
                "found_later",
            ],
        )
        later = "found by a later ban: " if decision.later else ""
        if quarantine:
            audit(Action.UPLOAD_QUARANTINED, upload=upload, detail=later + _describe(decision))
        elif decision.state == State.REVIEW:
            audit(Action.UPLOAD_TO_REVIEW, upload=upload, detail=later + _describe(decision))
        elif decision.voided:
            audit(Action.UPLOAD_ALLOWED, upload=upload, detail=_describe(decision))
        # 3. The file leaves the media tree, inside the transaction: if it cannot, nothing
        # was decided and the task tries again. One whose ban is gone since goes back.
        if quarantine and not decision.already_moved:
            files.move_file(*source, *quarantined, private=True)
        elif not quarantine and decision.already_moved:
            files.move_file(*quarantined, *source, private=False, mode=upload.file_mode)
    return True


def _decide_error(
    claim: QuerySet, upload: Upload, code: str, message: str, *, state: str = State.ERROR
) -> None:
    if claim.update(
        state=state,
        error_code=code,
        error=message,
        decided_at=timezone.now(),
        lease_expires_at=None,
    ):
        _count_decision(upload, state)


def _count_decision(upload: Upload, state: str) -> None:
    """For /metrics: a decision and how long after the file was recorded, once written."""
    seconds = (timezone.now() - upload.created_at).total_seconds()

    def count() -> None:
        metrics.DECISIONS.inc(state=state)
        metrics.DECISION_SECONDS.observe(seconds)

    transaction.on_commit(count)


def _decide_uncheckable(
    rows: QuerySet, upload: Upload, code: str, message: str, *, already_moved: bool = False
) -> None:
    """A file that may show a picture but could not be checked: held in quarantine for a
    moderator, or left in place as an error, as HASHGUARD_UNCHECKABLE says."""
    if settings.HASHGUARD_UNCHECKABLE != "hold":
        _decide_error(rows, upload, code, message)
        return
    quarantined = in_quarantine(upload)
    try:
        with transaction.atomic():
            if not rows.update(
                state=State.HELD,
                error_code=code,
                error=f"Could not be checked, so it is held for a moderator: {message}",
                quarantine_name=files.display(quarantined[1]),
                decided_at=timezone.now(),
                lease_expires_at=None,
            ):
                return
            audit(Action.UPLOAD_HELD, upload=upload, detail=message)
            _count_decision(upload, State.HELD)
            if not already_moved:
                files.move_file(*in_media(upload), *quarantined, private=True)
    except FileNotFoundError:
        if files.exists(*quarantined):
            # An earlier attempt moved it and died before recording that.
            _decide_uncheckable(rows, upload, code, message, already_moved=True)
        else:
            _decide_error(rows, upload, ErrorCode.MISSING, f"The file was removed. {message}")
    except (OSError, files.UnsafePath) as exc:
        if isinstance(exc, OSError) and is_transient(exc):
            raise  # the task tries again later
        _decide_error(
            rows,
            upload,
            code,
            f"{message} It could not be moved to quarantine ({exc}); it was left.",
        )


def released_keys(sha256: str, found: Mapping[int, object]) -> set[int]:
    """Banned fingerprints a moderator said this same content may pass from now on."""
    if not found:
        return set()
    return set(
        Match.objects.filter(
            fingerprint_id__in=list(found),
            upload__sha256=sha256,
            upload__state=State.RELEASED,
            allowed=True,
        ).values_list("fingerprint_id", flat=True)
    )


def _describe(decision: Decision) -> str:
    parts = []
    for key, detection in decision.found.items():
        kind = "known-good" if key in decision.allowed else "banned"
        void = " (void: it is the known-good picture found)" if key in decision.voided else ""
        parts.append(f"{kind} #{key}{void} {detection.describe()}")
    return "; ".join(parts)
