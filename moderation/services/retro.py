"""Looking back: a new ban checks the uploads recorded clean in the HASHGUARD_RETRO_DAYS
before it, through the workers, in the background. An upload it finds is quarantined (or
left for review, as its bank says) and enters the review queue marked "found by a later
ban"; the file must still be the one that was checked."""

import hashlib
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from hashes.detect import probes
from hashes.errors import ImageError
from moderation import files
from moderation.blocklist import Blocklist, build_blocklist
from moderation.models import Bank, RetroCheck, Transition, Upload
from moderation.services.common import Action, audit, in_media, load
from moderation.services.uploads import Decision, apply_decision, judge

logger = logging.getLogger(__name__)

BATCH = 50
RETRO_LEASE = timedelta(minutes=10)


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
    """Send again the checks whose message was lost or whose worker died."""
    now = timezone.now()
    stuck = RetroCheck.objects.filter(
        Q(state=RetroCheck.State.QUEUED, created_at__lt=now - older_than)
        | Q(state=RetroCheck.State.RUNNING, beat_at__lt=now - RETRO_LEASE)
    )
    ids = list(stuck.values_list("pk", flat=True))
    for job_id in ids:
        _send(job_id)
    return len(ids)


def retro_check_run(*, job_id: int) -> RetroCheck | None:
    """Check past clean uploads against a check's bans. A second delivery does nothing
    while the first runs, and takes over (from the last upload checked) once its worker
    went silent."""
    now = timezone.now()
    free = Q(state=RetroCheck.State.QUEUED) | Q(
        state=RetroCheck.State.RUNNING, beat_at__lt=now - RETRO_LEASE
    )
    if not RetroCheck.objects.filter(free, pk=job_id).update(
        state=RetroCheck.State.RUNNING, beat_at=now, started_at=now
    ):
        return RetroCheck.objects.filter(pk=job_id).first()
    job = RetroCheck.objects.get(pk=job_id)
    try:
        _run(job)
    except Exception as exc:  # recorded on the check, whatever it was
        logger.exception("look-back #%s failed", job_id)
        RetroCheck.objects.filter(pk=job_id).update(
            state=RetroCheck.State.FAILED, summary=str(exc), finished_at=timezone.now()
        )
    return RetroCheck.objects.get(pk=job_id)


def _run(job: RetroCheck) -> None:
    window = Upload.objects.filter(
        state=Upload.State.CLEAN,
        decided_at__gte=job.created_at - timedelta(days=settings.HASHGUARD_RETRO_DAYS),
        decided_at__lte=job.created_at,
    )
    total = job.total or window.count()  # counted once: a resumed check keeps it
    RetroCheck.objects.filter(pk=job.pk).update(total=total)
    blocklist = build_blocklist(only=_selection(job.bans))
    done, found = job.done, job.found
    last = job.last_upload
    if not blocklist.detector.is_empty():
        while batch := list(window.filter(pk__gt=last).order_by("pk")[:BATCH]):
            for upload in batch:
                found += _look_again(upload, blocklist)
                last = upload.pk
            done += len(batch)
            RetroCheck.objects.filter(pk=job.pk).update(
                done=done, found=found, last_upload=last, beat_at=timezone.now()
            )
    summary = (
        f"{done} upload(s) recorded clean in the {settings.HASHGUARD_RETRO_DAYS} days "
        f"before checked again; {found} found by the new bans"
    )
    RetroCheck.objects.filter(pk=job.pk).update(
        state=RetroCheck.State.DONE,
        done=done,
        total=max(total, done),
        found=found,
        summary=summary,
        finished_at=timezone.now(),
    )
    audit(Action.RETRO_CHECKED, detail=f"look-back #{job.pk}: {summary}")


def _look_again(upload: Upload, blocklist: Blocklist) -> int:
    """Check one clean upload against the new bans; 1 if it was found, else 0. A file
    gone or changed since is left to the watcher, which records its new content anew."""
    try:
        data = files.read_regular_file(*in_media(upload), max_bytes=settings.HASHGUARD_MAX_BYTES)
    except (OSError, files.UnsafePath):
        return 0
    sha256 = files.sha256_of(data)
    if sha256 != upload.sha256:
        return 0
    try:
        checked = probes(load(data))
    except ImageError:
        return 0
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    found, verdict = judge(blocklist, checked, sha256, md5)
    if verdict.state == Upload.State.CLEAN:
        return 0
    decision = Decision(
        verdict.state, found=found, allowed=verdict.allowed, voided=verdict.voided, later=True
    )
    still_clean = Upload.objects.filter(pk=upload.pk, state__in=Transition.FOUND_LATER.sources)
    apply_decision(upload, still_clean, decision)
    return int(Upload.objects.filter(pk=upload.pk, state=verdict.state).exists())
