import os
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from moderation import files, selectors, services
from moderation.models import Upload
from moderation.watcher import iter_files

UNDECIDED = {Upload.State.PENDING, Upload.State.PROCESSING}


class Command(BaseCommand):
    help = (
        "Check every image already under a directory of the media tree, through the same "
        "queue as the watcher, and wait until each is decided."
    )

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("directory", type=Path, help="A directory inside HASHGUARD_MEDIA_DIR.")
        parser.add_argument(
            "--no-wait", action="store_true", help="Queue the files and return at once."
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=0,
            help="Give up waiting after this many seconds (default: wait as long as it takes).",
        )

    def handle(self, *args, **options) -> None:
        root = files.media_dir().resolve()
        directory = options["directory"].resolve()
        if not directory.is_dir():
            raise CommandError(f"{directory} is not a directory")
        if not directory.is_relative_to(root):
            raise CommandError(
                f"{directory} is outside the media directory {root}; the workers only read "
                "files under HASHGUARD_MEDIA_DIR. Move the backlog there, then scan it."
            )
        ids = []
        inside = files.relative_to_store(directory, root) if directory != root else b""
        for relative, _ in tqdm(
            list(iter_files(root, inside)),
            desc="recording",
            unit="file",
            disable=None,
        ):
            try:
                upload, _ = services.upload_register(path=root / os.fsdecode(relative))
            except (OSError, files.UnsafePath) as exc:
                self.stderr.write(f"skipped {files.display(relative)}: {exc}")
                continue
            ids.append(upload.pk)
        if not options["no_wait"]:
            self._wait(ids, options["timeout"])
        counts = selectors.upload_state_counts(ids=ids)
        summary = ", ".join(f"{counts[state]} {state}" for state in sorted(counts))
        self.stdout.write(f"{len(ids)} files: {summary or 'nothing to do'}")

    def _wait(self, ids: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout if timeout else None
        with tqdm(total=len(ids), desc="deciding", unit="file", disable=None) as progress:
            while True:
                counts = selectors.upload_state_counts(ids=ids)
                undecided = sum(counts[state] for state in UNDECIDED)
                progress.n = len(ids) - undecided
                progress.refresh()
                if not undecided:
                    return
                if deadline and time.monotonic() > deadline:
                    raise CommandError(
                        f"{undecided} files still undecided after {timeout:g}s; "
                        "is a worker running?"
                    )
                time.sleep(0.5)
