import json

from django.core.management.base import BaseCommand

from moderation import selectors
from moderation.models import Upload


class Command(BaseCommand):
    help = "List uploads by state."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument(
            "--state",
            action="append",
            choices=Upload.State.values,
            default=[],
            help="Only uploads in this state (repeat for several).",
        )
        parser.add_argument("--limit", type=int, default=0, help="At most this many (newest).")
        parser.add_argument("--json", action="store_true", help="One JSON array, for scripts.")

    def handle(self, *args, **options) -> None:
        for line in selectors.workers_in_trouble():
            self.stderr.write(f"warning: {line}")
        uploads = selectors.upload_list(states=options["state"])
        if options["limit"]:
            uploads = uploads[: options["limit"]]
        if options["json"]:
            self.stdout.write(json.dumps([selectors.upload_as_dict(u) for u in uploads]))
            return
        for upload in uploads:
            note = upload.error or "; ".join(
                f"banned #{m.fingerprint_id} by {m.rule}" for m in upload.matches.all()
            )
            self.stdout.write(f"{upload.pk:>7}  {upload.state:<11}  {upload.path}  {note}".rstrip())
