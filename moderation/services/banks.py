"""Banks of banned fingerprints, and hash lists imported into them and exported from them."""

import contextlib
import itertools
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np
from django.contrib.auth.models import User
from django.db import connection, models, transaction
from django.db.models import Max, Q
from django.utils import timezone

from hashes.algorithms import ALGORITHMS
from hashes.hashlists import FORMATS, Entry, Problem, detect_format, read, write
from hashes.index import decode_joined
from hashes.matching import low_detail_rows
from moderation import files, metrics
from moderation.blocklist import FOLLOW_LIMIT, match_rule
from moderation.models import AuditEvent, Bank, BannedFingerprint, Category, ImportJob
from moderation.services.bans import blocklist_bump, blocklist_changed
from moderation.services.common import audit
from moderation.services.retro import retro_check_start

Action = AuditEvent.Action
logger = logging.getLogger(__name__)
BATCH = 5000
_ANALYZE_AFTER = 10_000
T = TypeVar("T")
_IMPORT_LOCK = 0x68670001  # the advisory lock's first key: hashguard's bank imports
# The first lines that are not comments looked at to tell a list's format, and at most
# how many lines are read to find them.
_SNIFF_LINES = 5
_SNIFF_LIMIT = 1000
KEPT_PROBLEMS = 1000
KEPT_KINDS = 20


@dataclass
class ImportReport:
    bank: str
    format: str
    added: int = 0
    removed: int = 0
    unchanged: int = 0
    refused: int = 0
    # The first KEPT_PROBLEMS problems; bad_lines counts them all.
    problems: list[Problem] = field(default_factory=list)
    bad_lines: int = 0
    skipped_kinds: Counter[str] = field(default_factory=Counter)

    def note(self, problem: Problem) -> None:
        if len(self.problems) < KEPT_PROBLEMS:
            self.problems.append(problem)
        if not problem.unknown_kind:
            self.bad_lines += 1
            return
        kind = problem.unknown_kind
        if kind not in self.skipped_kinds and len(self.skipped_kinds) >= KEPT_KINDS:
            kind = "other"
        self.skipped_kinds[kind] += 1

    def summary(self) -> str:
        skipped = ", ".join(f"{count} {kind}" for kind, count in self.skipped_kinds.items())
        bad = self.bad_lines
        return (
            f"{self.format} list into bank {self.bank}: {self.added} added, {self.removed} "
            f"removed, {self.unchanged} unchanged, {self.refused} refused, {bad} bad lines"
            + (f"; skipped signal types: {skipped}" if skipped else "")
        )


def bank_get_or_create(*, name: str, source: str = Bank.Source.FILE) -> Bank:
    bank, _ = Bank.objects.get_or_create(name=name, defaults={"source": source})
    return bank


def bank_save(*, bank: Bank, changed: list[str] | None, actor: User | None) -> Bank:
    """Create a bank (``changed`` None) or save a change to its settings: its action and
    limits take effect in every worker at once, and the change is audited."""
    with transaction.atomic():
        bank.full_clean()
        bank.save()
        if changed is None:
            audit(
                Action.BANK_CHANGED,
                actor=actor,
                detail=f"bank {bank.name} created: {_settings(bank)}",
            )
        elif changed:
            audit(
                Action.BANK_CHANGED,
                actor=actor,
                detail=f"bank {bank.name}: {', '.join(changed)} changed; now {_settings(bank)}",
            )
        _bans_changed([bank])
        if changed and {"action", "pdq_limit", "phash_limit", "dhash_limit"} & set(changed):
            # What it matches, or how it acts, changed: its bans look back again.
            retro_check_start(bank=bank, since=bank.created_at)
    return bank


def _bans_changed(banks: list[Bank]) -> None:
    """Tell every process that these banks' settings changed (switched on or off, their
    action or limits): their bans are applied again in place, as a single ban's changes
    are, while they are fewer than a process follows (FOLLOW_LIMIT); more, and each
    builds again. A bank with no bans yet changes nothing."""
    active = BannedFingerprint.objects.filter(bank__in=[bank.pk for bank in banks], active=True)
    if not _followed(list(active.values_list("pk", flat=True)[:FOLLOW_LIMIT]), []):
        blocklist_bump()


def _settings(bank: Bank) -> str:
    limits = ", ".join(f"{name} <= {limit}" for name, limit in bank.limits())
    return f"action {bank.action}, limits {limits or 'as the match rule'}"


def bank_set_enabled(*, bank_ids: Iterable[int], enabled: bool, actor: User | None) -> int:
    """Turn banks on or off; a disabled bank matches nothing, in every worker at once."""
    with transaction.atomic():
        banks = list(Bank.objects.select_for_update().filter(pk__in=list(bank_ids)))
        changed = [bank for bank in banks if bank.enabled != enabled]
        Bank.objects.filter(pk__in=[bank.pk for bank in changed]).update(enabled=enabled)
        for bank in changed:
            audit(
                Action.BANK_ENABLED if enabled else Action.BANK_DISABLED,
                actor=actor,
                detail=f"bank {bank.name}",
            )
        _bans_changed(changed)
        if enabled:
            for bank in changed:  # its bans are new to every upload recorded meanwhile
                retro_check_start(bank=bank, since=bank.created_at)
    return len(changed)


def bank_import(
    *,
    lines: Iterable[str],
    bank: str,
    fmt: str = "auto",
    replace: bool = False,
    actor: User | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import a hash list into a bank, made if it does not exist.

    Idempotent: a hash already in the bank is left as it is; a line marked deleted
    removes its hash; with ``replace`` the bank ends up holding exactly the list. Bad
    lines are reported with their numbers and the good ones imported. Written in batches
    of BATCH lines, each in its own transaction, so a crash leaves whole batches and a
    second run finishes the job; the workers see the change once, at the end.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}.")
    if bank == Bank.LOCAL:
        raise ValueError(
            "The local bank holds this site's moderators' own bans; import lists into a bank "
            "of their own (a list's deleted rows and --replace remove what is not in it)."
        )
    stream = iter(lines)
    head = _head(stream)
    chosen = detect_format(head) if fmt == "auto" else fmt
    target = bank_get_or_create(name=bank)
    with _importing(target):
        return _import_into(target, head, stream, chosen, replace, actor, progress)


@contextlib.contextmanager
def _importing(bank: Bank) -> Iterator[None]:
    """One import into a bank at a time (on PostgreSQL, where imports run in parallel
    workers): a second waits, so that each sees what the first wrote."""
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [_IMPORT_LOCK, bank.pk])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_IMPORT_LOCK, bank.pk])


def _import_into(
    target: Bank,
    head: list[str],
    stream: Iterator[str],
    chosen: str,
    replace: bool,
    actor: User | None,
    progress: Callable[[int], None] | None,
) -> ImportReport:
    # A bank empty at the start holds only what this import wrote: no need to ask it.
    was_empty = not target.fingerprints.exists()
    started = timezone.now()
    report = ImportReport(bank=target.name, format=chosen)
    seen = _Keys()
    # The bank's rows past this id are the ones this import writes (one import into a
    # bank at a time); with the ones it deletes, they are its changes to the blocklist.
    written_after = BannedFingerprint.objects.aggregate(newest=Max("id"))["newest"] or 0
    deleted: list[int] = []
    followed = False
    try:
        parsed = read(itertools.chain(head, stream), chosen)
        for batch in _batched(parsed, BATCH):
            entries = []
            for item in batch:
                if isinstance(item, Problem):
                    report.note(item)
                else:
                    entries.append(item)
            with transaction.atomic():
                _import_batch(target, entries, report, seen, was_empty, deleted)
            if progress:
                progress(len(batch))
        if replace and (report.bad_lines or not len(seen)):
            # A list read wrongly must not empty a bank.
            report.note(
                Problem(0, "--replace was not applied: the list had bad lines or no hashes")
            )
        elif replace:
            with transaction.atomic():
                report.removed += _remove_all_but(target, seen, deleted)
        followed = _changes_followed(target, written_after, deleted)
    finally:
        if not followed:  # too many changes to follow, or an import cut short
            blocklist_bump()
    if connection.vendor == "postgresql" and report.added + report.removed >= _ANALYZE_AFTER:
        # Fresh statistics now rather than at autovacuum's leisure: without them the next
        # import's lookups are planned for the table as it was, many times slower.
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {connection.ops.quote_name(BannedFingerprint._meta.db_table)}")
    audit(Action.BANS_IMPORTED, actor=actor, detail=report.summary())
    if report.added:
        retro_check_start(bank=target, since=started)
    metrics.IMPORTS.inc(bank=report.bank)
    for result in ("added", "removed", "unchanged", "refused"):
        metrics.IMPORTED.inc(getattr(report, result), bank=report.bank, result=result)
    metrics.flush()  # a command's process may end before a flushing thread would run
    return report


def _changes_followed(bank: Bank, written_after: int, deleted: list[int]) -> bool:
    """Tell every process of an import's rows added and deleted, to apply in place as it
    does a single ban's, where they are fewer than it follows (FOLLOW_LIMIT): a list's
    daily additions then cost no process a build of the whole blocklist. False where they
    are more: each builds again."""
    if len(deleted) >= FOLLOW_LIMIT:
        return False
    written = BannedFingerprint.objects.filter(bank=bank, pk__gt=written_after)
    return _followed(list(written.values_list("pk", flat=True)[:FOLLOW_LIMIT]), deleted)


def _followed(added: list[int], removed: list[int]) -> bool:
    """Tell every process of these bans added (or changed) and removed, to apply in place,
    where they are fewer than it follows (FOLLOW_LIMIT); False where they are more (the
    caller makes each build again)."""
    if len(added) + len(removed) >= FOLLOW_LIMIT:
        return False
    if added or removed:
        blocklist_changed(added=added, removed=removed)
    return True


def _head(stream: Iterator[str]) -> list[str]:
    """The first lines of a list, up to _SNIFF_LINES that are not blank or comments."""
    head: list[str] = []
    found = 0
    for line in itertools.islice(stream, _SNIFF_LIMIT):
        head.append(line)
        text = line.lstrip("\ufeff").strip()
        if text and not text.startswith("#"):
            found += 1
            if found == _SNIFF_LINES:
                break
    return head


def _import_batch(
    bank: Bank,
    entries: list[Entry],
    report: ImportReport,
    seen: "_Keys",
    was_empty: bool,
    deleted: list[int],
) -> None:
    """Write one batch. ``seen`` holds the keys the bank holds from this import so far
    (written or found there); only the others, and deletions, are looked up. The rows
    deleted are noted in ``deleted``."""
    before = seen.holding([entry.key for entry in entries])
    existing = _existing(
        bank, [e for e in entries if e.deleted or (not was_empty and e.key not in before)]
    )
    plain = _too_plain(entries, match_rule().pdq_min_quality)
    now = timezone.now()
    new: dict[tuple[str, str], dict[str, object]] = {}
    # What this batch changed of ``seen``, applied to it at the end.
    added: set[tuple[str, str]] = set()
    removed: set[tuple[str, str]] = set()
    for entry, refused in zip(entries, plain, strict=True):
        key = entry.key
        if entry.deleted:
            ids = existing.pop(key, [])
            if ids:
                report.removed += BannedFingerprint.objects.filter(pk__in=ids).delete()[0]
                _note_deleted(deleted, ids)
            new.pop(key, None)
            added.discard(key)
            removed.add(key)
            continue
        if refused:
            report.refused += 1
            continue
        held = key in added or (key in before and key not in removed)
        added.add(key)
        removed.discard(key)
        if held or key in existing:
            report.unchanged += 1
            continue
        new[key] = entry_fields(bank, entry, now)
    _insert(list(new.values()))
    seen.update(added, removed)
    report.added += len(new)


def _insert(rows: list[dict[str, object]]) -> None:
    """Insert many rows given as their fields: with PostgreSQL's COPY, straight from the
    values, several times faster than making model instances and INSERTing them."""
    if connection.vendor != "postgresql":
        objects = [BannedFingerprint(**row) for row in rows]
        BannedFingerprint.objects.bulk_create(objects, batch_size=1000)
        return
    fields = [field for field in BannedFingerprint._meta.concrete_fields if not field.primary_key]
    table = connection.ops.quote_name(BannedFingerprint._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(str(field.column)) for field in fields)
    defaults = {field.attname: field.get_default() for field in fields}
    # JSON goes as its text; every other value as it is.
    json_fields = {f.attname for f in fields if isinstance(f, models.JSONField)}
    names = [field.attname for field in fields]
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
    ):
        for row in rows:
            values = {**defaults, **row}
            copy.write_row(
                [
                    json.dumps(values[name]) if name in json_fields else values[name]
                    for name in names
                ]
            )


def _existing(bank: Bank, entries: list[Entry]) -> dict[tuple[str, str], list[int]]:
    found: dict[tuple[str, str], list[int]] = {}
    for kind, values in _by_kind(entry.key for entry in entries).items():
        for value, pk in _lookup(bank, kind, set(values)):
            found.setdefault((kind, value), []).append(pk)
    return found


def _lookup(bank: Bank, kind: str, values: set[str]) -> Iterable[tuple[str, int]]:
    """(hash, id) of the bank's rows holding any of values; on PostgreSQL as one array
    parameter, which is far cheaper to send than thousands of IN parameters."""
    if connection.vendor != "postgresql":
        rows = BannedFingerprint.objects.filter(bank=bank, **{f"{kind}__in": values})
        return rows.values_list(kind, "pk")
    table = connection.ops.quote_name(BannedFingerprint._meta.db_table)
    column = connection.ops.quote_name(kind)  # the hash fields' columns bear their names
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {column}, id FROM {table} "
            f"WHERE {column} = ANY(%s) AND {column} <> '' AND bank_id = %s",
            [list(values), bank.pk],
        )
        return list(cursor.fetchall())


def entry_refusal(entry: Entry, pdq_min_quality: int) -> str:
    """Why an entry cannot be banned fuzzily, or "" when it can."""
    if _too_plain([entry], pdq_min_quality)[0]:
        return "too plain to match fuzzily (PDQ quality below the minimum, or a flat hash)"
    return ""


def _too_plain(entries: list[Entry], pdq_min_quality: int) -> np.ndarray:
    """Which entries are perceptual hashes too plain to match fuzzily (file digests match
    exact copies only, and never are), all at once: a Fingerprint each would cost more
    than the rest of an import's work on the line."""
    rows = len(entries)
    kinds = np.array([entry.kind for entry in entries], dtype=object)
    codes = {}
    for name, spec in ALGORITHMS.items():
        present = kinds == name
        values = "".join(entry.value for entry, here in zip(entries, present, strict=True) if here)
        codes[name] = (present, decode_joined(values, int(present.sum()), spec.bits))
    qualities = np.fromiter(
        (
            -1 if entry.quality is None or entry.kind != "pdq" else entry.quality
            for entry in entries
        ),
        np.int32,
        rows,
    )
    fuzzy = np.isin(kinds, list(ALGORITHMS))
    return fuzzy & low_detail_rows(codes, qualities, pdq_min_quality)


_CATEGORIES = frozenset(Category.values)


def entry_fields(bank: Bank, entry: Entry, now: datetime) -> dict[str, object]:
    """The fields of the banned fingerprint a list's entry makes (by attribute name)."""
    known = entry.category.lower() in _CATEGORIES
    tags = list(entry.tags)
    if entry.category and not known:
        tags.append(f"category:{entry.category}")
    fields: dict[str, object] = {entry.kind: entry.value}
    if entry.kind == "pdq":
        fields["pdq_quality"] = entry.quality if entry.quality is not None else 100
    if entry.kind in ALGORITHMS:
        fields["algorithm_versions"] = {entry.kind: ALGORITHMS[entry.kind].version}
    return {
        **fields,
        "bank_id": bank.pk,
        "source": BannedFingerprint.Source.LIST.value,
        "category": entry.category.lower() if known else Category.OTHER.value,
        "reason": entry.reason,
        "external_id": entry.external_id[:255],
        "tags": tags,
        "imported_at": now,
        "created_at": now,
        "updated_at": now,
    }


def _remove_all_but(bank: Bank, kept: "_Keys", deleted: list[int]) -> int:
    """Delete the bank's fingerprints whose hashes are none of ``kept`` (noted in
    ``deleted``)."""
    stale: list[int] = []
    kinds = ("pdq", "phash", "dhash", "md5", "sha256")
    rows = BannedFingerprint.objects.filter(bank=bank).values_list("pk", *kinds)
    for batch in _batched(rows.iterator(chunk_size=10_000), 10_000):
        keyed = [
            (pk, [(kind, value) for kind, value in zip(kinds, values, strict=True) if value])
            for pk, *values in batch
        ]
        held = kept.holding(key for _, keys in keyed for key in keys)
        stale.extend(pk for pk, keys in keyed if not any(key in held for key in keys))
    removed = 0
    for start in range(0, len(stale), BATCH):
        removed += BannedFingerprint.objects.filter(pk__in=stale[start : start + BATCH]).delete()[0]
    _note_deleted(deleted, stale)
    return removed


def _note_deleted(deleted: list[int], ids: list[int]) -> None:
    """Add ``ids`` to an import's ``deleted``, up to FOLLOW_LIMIT of them: past it, every
    process builds again anyway, and a list replacing millions need not keep them all."""
    deleted.extend(ids[: max(0, FOLLOW_LIMIT - len(deleted))])


def _batched(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


class _Keys:
    """The (kind, hash) keys an import has seen, compactly: a 30-million-line list held
    as Python tuples would take gigabytes. Each kind's hashes are kept as raw bytes in a
    few sorted numpy runs, each under half the size of the one before it (merged when
    not), and asked about a batch at a time; keys removed after being added are kept
    aside until added again."""

    def __init__(self) -> None:
        self._runs: dict[str, list[np.ndarray]] = {}
        self._removed: set[tuple[str, str]] = set()  # all of them in the runs

    def __len__(self) -> int:
        return sum(len(run) for runs in self._runs.values() for run in runs) - len(self._removed)

    def holding(self, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Those of ``keys`` it holds."""
        return self._in_runs(keys) - self._removed

    def update(self, added: set[tuple[str, str]], removed: set[tuple[str, str]]) -> None:
        """Add ``added`` and forget ``removed`` (the two are disjoint)."""
        self._removed -= added
        self._removed |= self._in_runs(removed)
        for kind, values in _by_kind(added).items():
            raw = _raw(values)
            fresh = np.unique(raw[~self._found(kind, raw)])
            if not len(fresh):
                continue
            runs = self._runs.setdefault(kind, [])
            runs.append(fresh)
            while len(runs) > 1 and len(runs[-2]) <= 2 * len(runs[-1]):
                merged = np.concatenate(runs[-2:])
                merged.sort()  # in place: the merge holds the two runs twice, not three times
                runs[-2:] = [merged]

    def _in_runs(self, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        held: set[tuple[str, str]] = set()
        for kind, values in _by_kind(keys).items():
            found = self._found(kind, _raw(values))
            held.update((kind, value) for value, hit in zip(values, found, strict=True) if hit)
        return held

    def _found(self, kind: str, raw: np.ndarray) -> np.ndarray:
        found = np.zeros(len(raw), dtype=bool)
        for run in self._runs.get(kind, []):
            at = np.minimum(np.searchsorted(run, raw), len(run) - 1)
            found |= run[at] == raw
        return found


def _by_kind(keys: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    by_kind: dict[str, list[str]] = {}
    for kind, value in keys:
        by_kind.setdefault(kind, []).append(value)
    return by_kind


def _raw(values: list[str]) -> np.ndarray:
    """Hex hashes of one kind (one length) as fixed-width byte strings, which sort and
    compare as their bytes do."""
    width = len(values[0]) // 2 if values else 1
    return np.frombuffer(bytes.fromhex("".join(values)), dtype=f"S{width}")


def bank_entries(*, bank: str) -> Iterator[Entry]:
    """Every hash of a bank's active fingerprints, as list entries."""
    rows = BannedFingerprint.objects.filter(bank__name=bank, active=True).order_by("pk")
    for row in rows.iterator(chunk_size=10_000):
        tags = tuple(tag for tag in row.tags if not tag.startswith("category:"))
        raw = [tag.removeprefix("category:") for tag in row.tags if tag.startswith("category:")]
        for kind in ("pdq", "phash", "dhash", "md5", "sha256"):
            value = getattr(row, kind)
            if value:
                yield Entry(
                    kind,
                    value,
                    quality=row.pdq_quality if kind == "pdq" else None,
                    category=raw[0] if raw else row.category,
                    tags=tags,
                    external_id=row.external_id,
                    reason=row.reason,
                )


def bank_export(*, bank: str, fmt: str) -> Iterator[str]:
    """A bank as a hash list in format ``fmt``, line by line."""
    if not Bank.objects.filter(name=bank).exists():
        raise ValueError(f"There is no bank named {bank!r}.")
    return write(bank_entries(bank=bank), fmt)


# --- imports from the admin, run by a worker ------------------------------------------------


def imports_dir() -> Path:
    """Where uploaded lists wait for a worker: beside the reference images, a store every
    machine sees."""
    return files.reference_dir() / "imports"


def import_job_create(
    *, chunks: Iterable[bytes], bank: str, fmt: str, replace: bool, actor: User | None
) -> ImportJob:
    """Keep an uploaded list privately and queue its import for a worker."""
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}.")
    if bank == Bank.LOCAL:
        raise ValueError("Import lists into a bank of their own, not local.")
    name = f"{uuid.uuid4().hex}.list"
    lines = 0
    last = b"\n"

    def counted() -> Iterator[bytes]:
        # Streamed to the file, never held whole: a list may be gigabytes.
        nonlocal lines, last
        for chunk in chunks:
            lines += chunk.count(b"\n")
            last = chunk[-1:] or last
            yield chunk

    files.write_private(imports_dir(), name.encode(), counted())
    with transaction.atomic():
        job = ImportJob.objects.create(
            bank=bank,
            format=fmt,
            replace=replace,
            file_name=name,
            lines_total=lines + (last != b"\n"),
            created_by=actor,
        )
        transaction.on_commit(lambda: _queue_import(job.pk))
    return job


def _queue_import(job_id: int) -> None:
    from moderation.tasks import run_import

    run_import.delay(job_id)


# A running import renews its beat with every batch of BATCH lines; one silent this long
# lost its worker, and the job's next delivery takes it over.
IMPORT_LEASE = timedelta(minutes=10)


def import_job_run(*, job_id: int) -> ImportJob | None:
    """Import a queued list; a second delivery of the same job does nothing while the
    first runs, and takes over once its worker went silent (imports are idempotent)."""
    now = timezone.now()
    free = Q(state=ImportJob.State.QUEUED) | Q(
        Q(beat_at__lt=now - IMPORT_LEASE) | Q(beat_at__isnull=True),
        state=ImportJob.State.RUNNING,
    )
    if not ImportJob.objects.filter(free, pk=job_id).update(
        state=ImportJob.State.RUNNING, beat_at=now, lines_done=0
    ):
        return ImportJob.objects.filter(pk=job_id).first()
    job = ImportJob.objects.get(pk=job_id)
    done = 0

    def progress(count: int) -> None:
        nonlocal done
        done += count
        ImportJob.objects.filter(pk=job_id).update(lines_done=done, beat_at=timezone.now())

    path = imports_dir() / job.file_name
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as lines:
            report = bank_import(
                lines=lines,
                bank=job.bank,
                fmt=job.format,
                replace=job.replace,
                actor=job.created_by,
                progress=progress,
            )
    except Exception as exc:  # recorded for the moderator who queued it, whatever it was
        logger.exception("import #%s failed", job_id)
        ImportJob.objects.filter(pk=job_id).update(
            state=ImportJob.State.FAILED, summary=f"{exc}", finished_at=timezone.now()
        )
    else:
        ImportJob.objects.filter(pk=job_id).update(
            state=ImportJob.State.DONE,
            lines_done=done,
            summary=report.summary(),
            problems=[f"line {p.line}: {p.message}" for p in report.problems[:200]],
            finished_at=timezone.now(),
        )
        files.unlink(imports_dir(), job.file_name.encode())
    return ImportJob.objects.get(pk=job_id)
