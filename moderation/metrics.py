"""Prometheus metrics, summed over every process on every machine.

Counters and histograms are counted in memory and added to the database (MetricCount)
every FLUSH_SECONDS by a thread of each server process (web and worker processes start it;
see ``start_flushing``), and by the process that answers ``/metrics`` before it answers.
Gauges (uploads by state, queue depth, bank sizes, each process's blocklist) are read from
the database when scraped. A process killed outright loses at most its last few seconds of
counts; nothing else depends on them.
"""

import atexit
import logging
import os
import threading
import time
from collections import defaultdict
from datetime import timedelta

from django.db import Error as DatabaseError
from django.db import close_old_connections, connection, transaction
from django.db.models import Count
from django.utils import timezone

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 2.0
# Seconds from a file being seen to its decision.
DECISION_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800)


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(**labels: object) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in sorted(labels.items()))


class _Buffer:
    """What this process counted since its last flush."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.flushing = False
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        # What the parent counted is the parent's to write; a lock some other thread of
        # the parent held is no one's here; a flushing parent's thread did not come along.
        self.lock = threading.Lock()
        self.counts = defaultdict(float)
        if self.flushing:
            self._start_thread()

    def add(self, name: str, labels: str, amount: float) -> None:
        with self.lock:
            self.counts[(name, labels)] += amount

    def flush(self) -> None:
        with self.lock:
            taken, self.counts = self.counts, defaultdict(float)
        if not taken:
            return
        try:
            _add_to_database(taken)
        except DatabaseError as exc:  # any database fault: kept for the next try
            logger.warning("could not record metrics (kept for the next try): %s", exc)
            with self.lock:
                for key, amount in taken.items():
                    self.counts[key] += amount

    def start(self) -> None:
        with self.lock:
            if not self.flushing:
                self.flushing = True
                self._start_thread()

    def _start_thread(self) -> None:
        threading.Thread(target=self._run, name="hashguard-metrics", daemon=True).start()

    def _run(self) -> None:
        pid = os.getpid()
        while os.getpid() == pid:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # a bug here must not end the counting for good
                logger.exception("recording metrics failed")
            finally:
                close_old_connections()  # this thread's own, if DATABASE_CONN_MAX_AGE is past


_buffer = _Buffer()


def _add_to_database(counts: dict[tuple[str, str], float]) -> None:
    from moderation.models import MetricCount

    table = connection.ops.quote_name(MetricCount._meta.db_table)
    rows = sorted(counts.items())
    values = ", ".join(["(%s, %s, %s)"] * len(rows))
    params: list[str | float] = [
        item for (name, labels), amount in rows for item in (name, labels, amount)
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (name, labels, value) VALUES {values} "
            f"ON CONFLICT (name, labels) DO UPDATE SET value = {table}.value + excluded.value",
            params,
        )


def start_flushing() -> None:
    """Write this process's counts every few seconds, and when it exits."""
    _buffer.start()
    atexit.register(_buffer.flush)


def flush() -> None:
    _buffer.flush()


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        REGISTRY.append(self)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        _buffer.add(self.name, label_text(**labels), amount)

    def render(self, series: dict[str, list[tuple[str, float]]]) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for labels, value in series.get(self.name, []):
            lines.append(
                f"{self.name}{{{labels}}} {value:g}" if labels else f"{self.name} {value:g}"
            )
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        REGISTRY.append(self)

    def observe(self, value: float) -> None:
        for bound in self.buckets:
            if value <= bound:
                # One series per bucket, not cumulative: summed up when rendered.
                _buffer.add(f"{self.name}_bucket", label_text(le=f"{bound:g}"), 1)
                break
        else:
            _buffer.add(f"{self.name}_bucket", label_text(le="+Inf"), 1)
        _buffer.add(f"{self.name}_sum", "", value)
        _buffer.add(f"{self.name}_count", "", 1)

    def render(self, series: dict[str, list[tuple[str, float]]]) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        counted = dict(series.get(f"{self.name}_bucket", []))
        total = 0.0
        for bound in (*(f"{b:g}" for b in self.buckets), "+Inf"):
            total += counted.get(label_text(le=bound), 0)
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {total:g}')
        sums = dict(series.get(f"{self.name}_sum", []))
        lines.append(f"{self.name}_sum {sums.get('', 0):g}")
        lines.append(f"{self.name}_count {total:g}")
        return lines


REGISTRY: list[Counter | Histogram] = []

DECISIONS = Counter("hashguard_decisions_total", "Uploads decided, by the state decided.")
DECISION_SECONDS = Histogram(
    "hashguard_decision_seconds",
    "Seconds from an upload being recorded to its decision.",
    DECISION_BUCKETS,
)
LOOKUPS = Counter("hashguard_lookups_total", "API lookups, by kind (hash, image) and result.")
IMPORTS = Counter("hashguard_imports_total", "Hash lists imported, by bank.")
IMPORTED = Counter(
    "hashguard_imported_hashes_total", "Hashes from imported lists, by bank and result."
)


def _gauge(name: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        lines.append(f"{name}{{{labels}}} {value:g}" if labels else f"{name} {value:g}")
    return lines


def render(*, waiting_in_queue: int | None) -> str:
    """Every metric in Prometheus' text format, after this process's counts are written."""
    from moderation.blocklist import current_state
    from moderation.models import BlocklistLoad, ImportJob, MetricCount, Upload
    from moderation.selectors import banks_with_counts

    flush()
    series: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for name, labels, value in MetricCount.objects.order_by("name", "labels").values_list(
        "name", "labels", "value"
    ):
        series[name].append((labels, value))
    lines: list[str] = []
    for metric in REGISTRY:
        lines += metric.render(series)

    by_state = dict(Upload.objects.values_list("state").annotate(n=Count("id")).order_by())
    lines += _gauge(
        "hashguard_uploads",
        "Uploads recorded, by their state now.",
        [(label_text(state=state), by_state.get(state, 0)) for state in Upload.State.values],
    )
    pending = Upload.objects.filter(state=Upload.State.PENDING).count()
    depth = [(label_text(where="pending"), float(pending))]
    if waiting_in_queue is not None:
        depth.append((label_text(where="broker"), float(waiting_in_queue)))
    lines += _gauge(
        "hashguard_queue_depth",
        "Uploads waiting to be checked (pending records), and messages in the broker's queue.",
        depth,
    )
    lines += _gauge(
        "hashguard_blocklist_fingerprints",
        "Active banned fingerprints, by bank (a disabled bank's match nothing).",
        [
            (label_text(bank=b.name, action=b.action, enabled=str(b.enabled).lower()), count)
            for b, count in banks_with_counts()
        ],
    )
    now = timezone.now()
    current = current_state()
    loads = BlocklistLoad.objects.filter(checked_at__gte=now - timedelta(minutes=10)).order_by(
        "process"
    )
    lines += _gauge(
        "hashguard_blocklist_age_seconds",
        "Seconds since each process (worker pool or web) built the blocklist it holds.",
        [
            (label_text(process=load.process), (now - load.built_at).total_seconds())
            for load in loads
        ],
    )
    lines += _gauge(
        "hashguard_blocklist_current",
        "1 when the process holds the current blocklist, 0 when it has yet to rebuild.",
        [
            (label_text(process=load.process), float((load.version, load.last_change) == current))
            for load in loads
        ],
    )
    jobs = dict(ImportJob.objects.values_list("state").annotate(n=Count("id")).order_by())
    lines += _gauge(
        "hashguard_import_jobs",
        "Hash-list imports started in the admin, by state.",
        [(label_text(state=state), jobs.get(state, 0)) for state in ImportJob.State.values],
    )
    return "\n".join(lines) + "\n"
