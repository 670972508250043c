import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from moderation import files
from moderation.watcher import MediaWatcher, ObserverDied


class Command(BaseCommand):
    help = "Watch the media directory and queue every new image for the workers."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument(
            "--polling",
            action="store_true",
            help="Poll instead of using inotify; needed on network filesystems such as NFS.",
        )

    def handle(self, *args, **options) -> None:
        root = files.media_dir()
        if not root.is_dir():
            raise CommandError(
                f"The media directory {root} does not exist. Create it, or point "
                "HASHGUARD_MEDIA_DIR at the directory uploads land in."
            )
        files.ensure_directories()
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        watcher = MediaWatcher(
            root,
            stop=stop,
            stable_seconds=settings.HASHGUARD_STABLE_SECONDS,
            rescan_seconds=settings.HASHGUARD_RESCAN_SECONDS,
            requeue_seconds=settings.HASHGUARD_REQUEUE_SECONDS,
            polling=options["polling"],
        )
        try:
            watcher.run()
        except ObserverDied as exc:
            raise CommandError(
                f"{exc}; exiting so the service manager restarts the watcher"
            ) from exc
