from django.conf import settings
from django.core.management.base import BaseCommand

from moderation import services


class Command(BaseCommand):
    help = (
        "Delete the files of confirmed quarantined uploads past HASHGUARD_RETENTION_DAYS "
        "(the watcher does this hourly), keeping their records, matches and audit."
    )

    def handle(self, *args, **options) -> None:
        days = settings.HASHGUARD_RETENTION_DAYS
        if days <= 0:
            self.stdout.write("HASHGUARD_RETENTION_DAYS keeps every file; nothing deleted.")
            return
        count = services.uploads_purge_expired()
        self.stdout.write(f"{count} quarantined file(s) older than {days} days deleted.")
