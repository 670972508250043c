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
        Path(app.conf.broker_transport_options[key]).mkdir(parents=True, exist_ok=True)


@signals.worker_init.connect
def refuse_to_start_misconfigured(**kwargs: object) -> None:
    """Run Django's system checks, which `celery worker` skips, before taking any task."""
    from django.core.checks import run_checks

    serious = [message for message in run_checks() if message.is_serious()]
    if serious:
        raise SystemExit("\n".join(str(message) for message in serious))
