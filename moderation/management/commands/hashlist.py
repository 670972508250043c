import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from hashes.hashlists import FORMATS
from moderation import services


class Command(BaseCommand):
    help = (
        "Import a hash list into a bank, or export a bank as a hash list, in the formats "
        "hash-sharing programmes use (HMA, python-threatexchange CSV, CSV, PDQ hasher)."
    )

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        actions = parser.add_subparsers(dest="action", required=True)
        load = actions.add_parser("import", help="Import FILE into a bank (made if missing).")
        load.add_argument("file", type=Path, help="The list; - reads standard input.")
        load.add_argument("--bank", required=True, help="The bank's name, e.g. ncmec.")
        load.add_argument("--format", default="auto", choices=["auto", *FORMATS])
        load.add_argument(
            "--replace",
            action="store_true",
            help="Make the bank hold exactly the list: remove what the list does not have.",
        )
        save = actions.add_parser("export", help="Write a bank as a hash list.")
        save.add_argument("--bank", required=True)
        save.add_argument("--format", required=True, choices=FORMATS)
        save.add_argument("-o", "--output", type=Path, help="A file (default: standard output).")

    def handle(self, *args, **options) -> None:
        if options["action"] == "import":
            self._import(options)
        else:
            self._export(options)

    def _import(self, options: dict) -> None:
        path: Path = options["file"]
        if str(path) != "-" and not path.is_file():
            raise CommandError(f"{path} is not a file.")
        if str(path) == "-":
            handle, total = sys.stdin, None
        else:
            with path.open("rb") as counted:
                total = sum(1 for _ in counted)
            handle = path.open(encoding="utf-8-sig", errors="replace")
        try:
            with tqdm(total=total, desc="importing", unit="line", disable=None) as bar:
                report = services.bank_import(
                    lines=handle,
                    bank=options["bank"],
                    fmt=options["format"],
                    replace=options["replace"],
                    progress=bar.update,
                )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            if handle is not sys.stdin:
                handle.close()
        for problem in report.problems[:50]:
            self.stderr.write(f"{path}:{problem.line}: {problem.message}")
        if len(report.problems) > 50:
            self.stderr.write(f"... and {len(report.problems) - 50} more lines left out")
        self.stdout.write(report.summary())

    def _export(self, options: dict) -> None:
        try:
            lines = services.bank_export(bank=options["bank"], fmt=options["format"])
            if options["output"]:
                with options["output"].open("w", encoding="utf-8") as out:
                    count = sum(out.write(line) > 0 for line in lines)
                self.stderr.write(f"wrote {count} lines to {options['output']}")
            else:
                for line in lines:
                    self.stdout.write(line, ending="")
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
