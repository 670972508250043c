from django.core.management.base import BaseCommand

from moderation import services


class Command(BaseCommand):
    help = (
        "Recompute banned fingerprints made by an older version of an algorithm, from "
        "their reference images. Run it after an upgrade that changes an algorithm."
    )

    def handle(self, *args, **options) -> None:
        recomputed, pasted = services.banned_rehash()
        self.stdout.write(f"{recomputed} banned fingerprints recomputed.")
        if pasted:
            self.stdout.write(
                f"{pasted} were pasted as hashes from an older algorithm version and have "
                "no image to recompute from; re-import them from their source."
            )
