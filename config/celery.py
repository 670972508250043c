import os
from pathlib import Path

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("hashguard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

if app.conf.broker_url.startswith("filesystem://"):
    # The file broker expects its folders to exist; the first process to start makes them.
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        folder = Path(app.conf.broker_transport_options[key])
        for private in (folder.parent, folder):  # the broker's own folder, then its parts
            private.mkdir(parents=True, exist_ok=True, mode=0o700)


@signals.worker_init.connect
def refuse_to_start_misconfigured(**kwargs: object) -> None:
    """Run Django's system checks, which `celery worker` skips, before taking any task."""
    from django.core.checks import run_checks

    serious = [message for message in run_checks() if message.is_serious()]
    if serious:
        raise SystemExit("\n".join(str(message) for message in serious))


@signals.worker_init.connect
def preload_blocklist(**kwargs: object) -> None:
    """Build the blocklist before the pool's processes fork, so that they share one copy."""
    from django.conf import settings

    if settings.HASHGUARD_PRELOAD_BLOCKLIST:
        from moderation import blocklist

        blocklist.preload()


@signals.worker_init.connect
def share_cores(sender: object = None, **kwargs: object) -> None:
    """Keep the threads of each pool process, forked after this, to its share of the
    cores (``hashes.use_threads``): with BLAS spread over both cores, 3,000 files at
    20/s were decided at 14.3 a second where one thread each kept up."""
    concurrency = getattr(sender, "concurrency", None)
    if isinstance(concurrency, int) and concurrency > 0:
        from hashes import use_threads

        use_threads(concurrency)


@signals.task_prerun.connect
@signals.task_postrun.connect
def close_old_connections(task: object = None, **kwargs: object) -> None:
    """Close the connections past DATABASE_CONN_MAX_AGE, or broken, before and after each
    task, as Django does around a request; the others are kept for the next task."""
    if not getattr(getattr(task, "request", None), "is_eager", False):
        from django import db

        db.close_old_connections()


@signals.worker_process_init.connect
def write_metrics(**kwargs: object) -> None:
    """Each pool process writes what it counted for /metrics every few seconds."""
    from moderation import metrics

    metrics.start_flushing()


@signals.worker_process_shutdown.connect
def write_last_metrics(**kwargs: object) -> None:
    from moderation import metrics

    metrics.flush()


_received: dict[str, float] = {}
# Tasks that may rightly take minutes; the liveness check does not judge them by time.
LONG_TASKS = {"moderation.tasks.run_import", "moderation.tasks.run_retro_check"}


@signals.task_received.connect
def note_received(request: object = None, **kwargs: object) -> None:
    """When each message reached this worker, for the liveness check."""
    import time

    _received[request.id] = time.monotonic()  # type: ignore[attr-defined]


@signals.worker_ready.connect
def start_liveness(sender: object = None, **kwargs: object) -> None:
    """Watch this worker for work it holds and does not get done; see liveness.py."""
    import time

    from celery.worker import state

    from moderation import liveness

    pool_size = int(getattr(sender.controller, "concurrency", 1) or 1)  # type: ignore[attr-defined]

    def upload_ids(requests: object) -> list[int]:
        ids = []
        for request in list(requests):  # type: ignore[call-overload]
            try:
                ids.append(int(request.args[0]))
            except (AttributeError, IndexError, TypeError, ValueError):
                continue
        return ids

    def snapshot() -> liveness.Snapshot:
        reserved = list(state.reserved_requests)
        everything_active = list(state.active_requests)
        long_running = sum(1 for r in everything_active if r.name in LONG_TASKS)
        active = [r for r in everything_active if r.name not in LONG_TASKS]
        started = {r.id for r in everything_active}
        held = {request.id for request in reserved} | started
        for request_id in list(_received):
            if request_id not in held:
                del _received[request_id]
        running = {request.id for request in active}
        now = time.monotonic()
        waiting = {
            request.id: _received.setdefault(request.id, now)
            for request in reserved
            if request.id not in started and request.name not in LONG_TASKS
        }
        return liveness.Snapshot(
            waiting=waiting,
            running=running,
            done=sum(state.total_count.values()),
            pool_size=pool_size,
            waiting_uploads=upload_ids(
                r for r in reserved if r.id not in started and r.name not in LONG_TASKS
            ),
            running_uploads=upload_ids(active),
            long_running=long_running,
        )

    def connected() -> bool:
        connection = getattr(sender, "connection", None)
        return bool(connection is not None and connection.connected)

    watch = liveness.Liveness(
        snapshot, on_stall=liveness.exit_for_restart, connected=connected
    )
    sender.timer.call_repeatedly(liveness.BEAT_SECONDS, watch.loop_ticked)  # type: ignore[attr-defined]
    watch.start()
