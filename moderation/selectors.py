"""Reads: what the commands, the admin and the tests ask of the database."""

import csv
import io
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import timedelta

from django.db.models import Count, Min, Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from hashes.matching import is_low_detail
from moderation.blocklist import match_rule
from moderation.models import (
    AuditEvent,
    Bank,
    BannedFingerprint,
    Match,
    Upload,
    WorkerHeartbeat,
)


def upload_list(*, states: Iterable[str] = (), ids: Iterable[int] | None = None) -> QuerySet:
    uploads = Upload.objects.all().prefetch_related("matches")
    states = list(states)
    if states:
        uploads = uploads.filter(state__in=states)
    if ids is not None:
        uploads = uploads.filter(pk__in=list(ids))
    return uploads


def upload_as_dict(upload: Upload) -> dict[str, object]:
    return {
        "id": upload.pk,
        "path": upload.path,
        "state": upload.state,
        "size": upload.size,
        "sha256": upload.sha256,
        "format": upload.format,
        "error_code": upload.error_code,
        "error": upload.error,
        "quarantine_name": upload.quarantine_name,
        "created_at": upload.created_at.isoformat(),
        "decided_at": upload.decided_at.isoformat() if upload.decided_at else None,
        "matches": [
            {
                "fingerprint": m.fingerprint_id,
                "rule": m.rule,
                "distances": m.distances,
                "frame": m.frame,
                "voided": m.voided,
            }
            for m in upload.matches.all()
        ],
    }


def upload_state_counts(*, ids: Iterable[int]) -> Counter[str]:
    states = Upload.objects.filter(pk__in=list(ids)).values_list("state", flat=True)
    return Counter(states)


def review_queue() -> QuerySet:
    """Quarantined, held and left-for-review uploads no moderator has looked at yet,
    oldest first."""
    return (
        Upload.objects.filter(
            state__in=[Upload.State.QUARANTINED, Upload.State.HELD, Upload.State.REVIEW]
        )
        .prefetch_related(
            "matches",
            "matches__fingerprint",
            "matches__fingerprint__bank",
        )
        .order_by("decided_at", "id")
    )


def banks_with_counts(*, name: str | None = None) -> list[tuple[Bank, int]]:
    """Banks by name, each with its number of active fingerprints."""
    banks = Bank.objects.annotate(
        active=Count("fingerprints", filter=Q(fingerprints__active=True))
    ).order_by("name")
    if name is not None:
        banks = banks.filter(name=name)
    return [(bank, bank.active) for bank in banks]  # type: ignore[attr-defined]


def waiting_for_ban(*, fingerprint_id: int) -> QuerySet:
    """The uploads waiting for review that matched one banned fingerprint (and for which
    that match counted)."""
    return (
        review_queue()
        .filter(matches__fingerprint_id=fingerprint_id, matches__voided=False)
        .distinct()
    )


def workers_in_trouble() -> list[str]:
    """A line for each worker that stalled or went silent recently, for operators."""
    from moderation.liveness import SILENT_AFTER

    now = timezone.now()
    lines = []
    for worker in WorkerHeartbeat.objects.all():
        if worker.stalled_since:
            lines.append(
                f"worker {worker.name} stalled at {worker.stalled_since:%Y-%m-%d %H:%M:%S} "
                f"({worker.stall}) holding uploads "
                f"{sorted(worker.running + worker.waiting) or 'none'}; it was restarted"
                " if a supervisor runs it"
            )
        elif now - worker.beat_at > SILENT_AFTER:
            lines.append(
                f"worker {worker.name} silent since {worker.beat_at:%Y-%m-%d %H:%M:%S}: "
                "stopped, or its main process hangs"
            )
    return lines


def banned_low_detail(*, rows: Iterable[BannedFingerprint]) -> list[BannedFingerprint]:
    """The rows too plain to match fuzzily: only exact copies of their file are caught."""
    minimum = match_rule().pdq_min_quality
    return [row for row in rows if is_low_detail(row.fingerprint(), minimum)]


def low_detail_message(row: BannedFingerprint) -> str:
    """Why a ban catches exact copies only, for the moderator who made it."""
    quality = f"PDQ quality {row.pdq_quality}" if row.pdq_quality is not None else "its hashes"
    return (
        f"#{row.pk} is too plain to match edited copies ({quality}, below "
        f"{match_rule().pdq_min_quality}): a flat colour, gradient or near-blank image hashes "
        "like every other smooth image, so matching it approximately would quarantine "
        "innocent uploads. Only exact copies of this file will be caught."
    )


# Records whose file left the media tree: a file at their path is a new one.
_MOVED_AWAY = {
    Upload.State.QUARANTINED,
    Upload.State.CONFIRMED,
    Upload.State.HELD,
    Upload.State.SUPERSEDED,
}


def recorded_files() -> Iterator[tuple[bytes, tuple[int, int | None, int | None] | None]]:
    """Each recorded path, oldest record first, with the size, mtime and inode it was
    recorded with, or None when that record's file left the media tree."""
    rows = Upload.objects.order_by("id").values_list(
        "path", "raw_path", "state", "size", "mtime_ns", "inode"
    )
    for path, raw_path, state, size, mtime_ns, inode in rows.iterator(chunk_size=10_000):
        relative = bytes(raw_path) if raw_path is not None else path.encode()
        yield relative, None if state in _MOVED_AWAY else (size, mtime_ns, inode)


DECISIONS = (
    AuditEvent.Action.UPLOAD_CONFIRMED,
    AuditEvent.Action.UPLOAD_RELEASED,
    AuditEvent.Action.UPLOAD_FLAGGED,
    AuditEvent.Action.UPLOAD_RETRIED,
)


def dashboard(*, days: int = 30) -> dict[str, object]:
    """What the admin's front page shows: where uploads stand, the queue, quarantines per
    day, the bans that catch most, and who decided what, over the last ``days``."""
    now = timezone.now()
    since = now - timedelta(days=days)
    by_state = dict(Upload.objects.values_list("state").annotate(n=Count("id")).order_by())
    queue = review_queue()
    oldest = queue.aggregate(oldest=Min("decided_at"))["oldest"]
    per_day = dict(
        AuditEvent.objects.filter(
            action__in=[AuditEvent.Action.UPLOAD_QUARANTINED, AuditEvent.Action.UPLOAD_HELD],
            created_at__gte=since,
        )
        .annotate(day=TruncDate("created_at"))
        .values_list("day")
        .annotate(n=Count("id"))
        .order_by()
    )
    today = timezone.localdate()
    days_shown = [today - timedelta(days=offset) for offset in range(days - 1, -1, -1)]
    top_bans = list(
        Match.objects.filter(voided=False, fingerprint__isnull=False)
        .values_list("fingerprint_id", "fingerprint__category", "fingerprint__bank__name")
        .annotate(hits=Count("id"))
        .order_by("-hits", "fingerprint_id")[:10]
    )
    decisions = list(
        AuditEvent.objects.filter(action__in=DECISIONS, created_at__gte=since, actor__isnull=False)
        .values_list("actor__username")
        .annotate(n=Count("id"))
        .order_by("-n", "actor__username")
    )
    return {
        "states": [
            (value, label, by_state.get(value, 0)) for value, label in Upload.State.choices
        ],
        "waiting": queue.count(),
        "oldest": oldest,
        "per_day": [(day, per_day.get(day, 0)) for day in days_shown],
        "top_bans": top_bans,
        "decisions": decisions,
        "days": days,
    }


def _spreadsheet_safe(text: str) -> str:
    """Text a spreadsheet shows as text: upload paths and notes are written by others, and
    one starting with = + - @ would otherwise run as a formula."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def audit_csv(*, events: QuerySet) -> Iterator[str]:
    """The audit log as CSV lines, header first, for a download."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = ["time", "action", "moderator", "upload", "path", "banned_fingerprint"]
    writer.writerow([*columns, "detail", "note", "label"])
    rows = events.select_related("actor", "upload").iterator(chunk_size=2000)
    cell = _spreadsheet_safe
    for event in itertools.chain([None], rows):
        if event is not None:
            writer.writerow(
                [
                    event.created_at.isoformat(),
                    event.action,
                    cell(event.actor.get_username() if event.actor else ""),
                    event.upload_id or "",
                    cell(event.upload.path if event.upload else ""),
                    event.fingerprint_id or "",
                    cell(event.detail),
                    cell(event.note),
                    cell(event.label),
                ]
            )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
