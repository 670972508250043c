"""Looking back: a new ban checks the uploads recorded clean in the HASHGUARD_RETRO_DAYS
before it, through the workers, in the background. An upload it finds is quarantined (or
left for review, as its bank says) and enters the review queue marked "found by a later
ban"; the file must still be the one that was checked."""

import hashlib
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from hashes.detect import probes
from hashes.errors import ImageError
from moderation import files
from moderation.blocklist import current_blocklist
from moderation.models import Bank, BannedFingerprint, RetroCheck, Transition, Upload
from moderation.services.common import Action, audit, in_media, load
from moderation.services.uploads import Decision, apply_decision, judge

logger = logging.getLogger(__name__)

BATCH = 50
RETRO_LEASE = timedelta(minutes=10)
RESEND_AFTER = timedelta(minutes=10)  # a queued check's message waits this long for a worker
MAX_ATTEMPTS = 3


def retro_check_start(
    *, ids: Iterable[int] = (), bank: Bank | None = None, since: datetime | None = None
) -> RetroCheck | None:
    """Check bans just added (by ``ids``, or every one added to ``bank`` since ``since``)
    against past clean uploads, once the caller's transaction commits. Bans added while a
    check waits to start join it. None when looking back is off, or the bans are
    known-good ones (which can only clear uploads)."""
    if settings.HASHGUARD_RETRO_DAYS <= 0:
        return None
    criterion: dict[str, object]
    if bank is not None:
        if bank.action == Bank.Act.ALLOW:
            return None
        criterion = {"bank": bank.pk, "since": (since or timezone.now()).isoformat()}
    else:
        criterion = {"ids": sorted(set(ids))}
        if not criterion["ids"]:
            return None
    with transaction.atomic():
        waiting = RetroCheck.objects.select_for_update().filter(state=RetroCheck.State.QUEUED)
        job = waiting.order_by("id").first()
        if job is None:
            job = RetroCheck.objects.create(bans=[criterion])
            transaction.on_commit(lambda: _send(job.pk))
        else:
            job.bans = [*job.bans, criterion]
            job.save(update_fields=["bans"])
    return job


def _send(job_id: int) -> None:
    from moderation.tasks import run_retro_check

    RetroCheck.objects.filter(pk=job_id).update(sent_at=timezone.now())
    try:
        run_retro_check.delay(job_id)
    except Exception:  # the broker is down: the watcher's sweep sends it later
        logger.exception("look-back #%s could not be queued yet", job_id)


def _selection(criteria: list[dict[str, object]]) -> Q:
    """The bans the criteria name."""
    chosen = Q(pk__in=[])
    for criterion in criteria:
        if "ids" in criterion:
            chosen |= Q(pk__in=criterion["ids"])
        else:
            since = datetime.fromisoformat(str(criterion["since"]))
            chosen |= Q(bank_id=criterion["bank"], created_at__gte=since)
    return chosen


def retro_checks_resend(*, older_than: timedelta) -> int:
    """Send again the checks whose message was lost (queued, sent long ago), whose worker
    died (running, silent), or that failed (a few times at most, from where they
    stopped)."""
    now = timezone.now()
    stuck = RetroCheck.objects.filter(
        Q(state=RetroCheck.State.QUEUED)
        | Q(state=RetroCheck.State.RUNNING, beat_at__lt=now - RETRO_LEASE)
        | Q(state=RetroCheck.State.FAILED, attempts__lt=MAX_ATTEMPTS),
    ).filter(Q(sent_at__isnull=True) | Q(sent_at__lt=now - max(older_than, RESEND_AFTER)))
    ids = list(stuck.values_list("pk", flat=True))
    for job_id in ids:
        _send(job_id)
    return len(ids)


def retro_check_run(*, job_id: int) -> RetroCheck | None:
    """Check past clean uploads against a check's bans. A second delivery does nothing
    while the first runs; it takes over (from the last upload checked) once the first's
    worker went silent, or after a failure, and the first then writes nothing more."""
    now = timezone.now()
    free = (
        Q(state=RetroCheck.State.QUEUED)
        | Q(state=RetroCheck.State.RUNNING, beat_at__lt=now - RETRO_LEASE)
        | Q(state=RetroCheck.State.FAILED, attempts__lt=MAX_ATTEMPTS)
    )
    owner = uuid.uuid4().hex
    if not RetroCheck.objects.filter(free, pk=job_id).update(
        state=RetroCheck.State.RUNNING,
        beat_at=now,
        started_at=now,
        owner=owner,
        attempts=F("attempts") + 1,
    ):
        return RetroCheck.objects.filter(pk=job_id).first()
    job = RetroCheck.objects.get(pk=job_id)
    try:
        _run(job, RetroCheck.objects.filter(pk=job_id, owner=owner))
    except Exception as exc:  # recorded on the check, whatever it was; it is sent again
        logger.exception("look-back #%s failed", job_id)
        RetroCheck.objects.filter(pk=job_id, owner=owner).update(
            state=RetroCheck.State.FAILED, summary=str(exc)[:2000], finished_at=timezone.now()
        )
    return RetroCheck.objects.get(pk=job_id)


class _Lost(Exception):
    """Another run took the check over: this one stops."""


def _run(job: RetroCheck, mine: "QuerySet[RetroCheck]") -> None:
    """Run the check while ``mine`` (the check, held by this run) still matches."""
    try:
        _checked(job, mine)
    except _Lost:
        logger.info("look-back #%s was taken over by another run", job.pk)


def _checked(job: RetroCheck, mine: "QuerySet[RetroCheck]") -> None:
    started = timezone.now()
    # Every upload recorded clean since the window opened, up to the end of this run
    # (an upload a worker decided with the blocklist from before the ban counts too).
    window = Upload.objects.filter(
        state=Upload.State.CLEAN,
        decided_at__gte=job.created_at - timedelta(days=settings.HASHGUARD_RETRO_DAYS),
    )
    total = job.total or window.count()  # counted once: a resumed check keeps it
    if not mine.update(total=total):
        raise _Lost
    # The process's own blocklist, which holds every ban, the new ones included: a second
    # one of the new bans alone would double a worker's memory after a large import.
    new = BannedFingerprint.objects.filter(_selection(job.bans), active=True, bank__enabled=True)
    done, found, skipped, last = job.done, job.found, 0, job.last_upload
    checked: set[int] = set()

    def check(upload: Upload) -> None:
        nonlocal done, found, skipped
        if upload.pk in checked:
            return
        checked.add(upload.pk)
        result = _look_again(upload, new)
        found += result == "found"
        skipped += result == "skipped"
        done += 1
        # Renewed with each upload: a large animation takes a while, a batch longer.
        if not mine.update(done=done, found=found, last_upload=last, beat_at=timezone.now()):
            raise _Lost

    if new.exists():
        while batch := list(window.filter(pk__gt=last).order_by("pk")[:BATCH]):
            for upload in batch:
                last = upload.pk
                check(upload)
        # Those decided while this ran, whose ids came before where it had got to.
        for upload in window.filter(pk__lte=last, decided_at__gte=started):
            check(upload)
    summary = (
        f"{done} upload(s) recorded clean in the {settings.HASHGUARD_RETRO_DAYS} days "
        f"before checked again; {found} found by the new bans"
        + (
            f"; {skipped} could not be checked again (changed, gone or unreadable)"
            if skipped
            else ""
        )
    )
    if mine.update(
        state=RetroCheck.State.DONE,
        done=done,
        total=max(total, done),
        found=found,
        summary=summary,
        finished_at=timezone.now(),
    ):
        audit(Action.RETRO_CHECKED, detail=f"look-back #{job.pk}: {summary}")


def _look_again(upload: Upload, new: "QuerySet[BannedFingerprint]") -> str:
    """Check one clean upload against the new bans: "found", "clean" or "skipped". A file
    gone or changed since is left to the watcher, which records its new content anew;
    one that cannot be moved is skipped with the reason logged, not the whole check."""
    source = in_media(upload)
    try:
        before = files.lstat(*source)
        data = files.read_regular_file(*source, max_bytes=settings.HASHGUARD_MAX_BYTES)
    except (OSError, files.UnsafePath):
        return "skipped"
    sha256 = files.sha256_of(data)
    if sha256 != upload.sha256:
        return "skipped"
    try:
        checked = probes(load(data))
    except ImageError:
        return "skipped"
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    found, verdict = judge(current_blocklist(), checked, sha256, md5, among=new)
    if verdict.state == Upload.State.CLEAN:
        return "clean"
    decision = Decision(
        verdict.state, found=found, allowed=verdict.allowed, voided=verdict.voided, later=True
    )
    still_clean = Upload.objects.filter(pk=upload.pk, state__in=Transition.FOUND_LATER.sources)
    try:
        # The file that was checked, not one put in its place since.
        after = files.lstat(*source)
        if (after.st_ino, after.st_size, after.st_mtime_ns) != (
            before.st_ino,
            before.st_size,
            before.st_mtime_ns,
        ):
            return "skipped"
        return "found" if apply_decision(upload, still_clean, decision) else "clean"
    except (OSError, files.UnsafePath) as exc:
        logger.warning("look-back could not quarantine upload %s: %s", upload.pk, exc)
        return "skipped"
