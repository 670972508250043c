from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from hashes.errors import ImageError
from moderation import selectors, services
from moderation.models import Category


class Command(BaseCommand):
    help = "Ban images: add their fingerprints to the blocklist, effective at once."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("files", nargs="+", type=Path, help="Image files to ban.")
        parser.add_argument(
            "--category",
            choices=Category.values,
            default=Category.OTHER,
            help="Why these images are banned (default: other).",
        )
        parser.add_argument("--reason", default="", help="A note for other moderators.")

    def handle(self, *args, **options) -> None:
        failures = 0
        for path in options["files"]:
            try:
                data = path.read_bytes()
                rows = services.banned_add_image(
                    data=data, category=options["category"], reason=options["reason"]
                )
            except (OSError, ImageError) as exc:
                failures += 1
                self.stderr.write(f"{path}: not banned: {exc}")
                continue
            ids = ", ".join(f"#{row.pk}" for row in rows)
            self.stdout.write(f"{path}: banned as {ids}")
            for row in selectors.banned_low_detail(rows=rows):
                self.stderr.write(f"{path}: warning: {selectors.low_detail_message(row)}")
        if failures:
            raise CommandError(f"{failures} of {len(options['files'])} files were not banned")
