import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from hashes.evaluation.edits import CATALOGUE, EDITS
from hashes.evaluation.harness import SYSTEMS, Harness, evaluate
from hashes.evaluation.report import LABELS, summary, write_report
from moderation.blocklist import detect_config, match_rule


class Command(BaseCommand):
    help = (
        "Measure matching on your own images: ban every image in BANNED, make each edit of "
        "the catalogue from each, and check that hashguard (with this installation's match "
        "settings) catches them and matches none of the INNOCENT images, beside three "
        "baselines. Writes report.md, summary.json and PNG plots. Touches no database."
    )

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("banned", type=Path, help="Folder of images to ban.")
        parser.add_argument("innocent", type=Path, help="Folder of different, innocent images.")
        parser.add_argument(
            "--out", type=Path, default=Path("evaluation"), help="Report folder (./evaluation)."
        )
        parser.add_argument(
            "--innocent-edits",
            type=int,
            default=2,
            help="Random edits made of each innocent image besides the image itself (2).",
        )
        parser.add_argument(
            "--edits",
            default="",
            help=f"Comma-separated edits to run (default all {len(CATALOGUE)}): "
            + ", ".join(EDITS),
        )
        parser.add_argument("--limit-banned", type=int, default=None)
        parser.add_argument("--limit-innocent", type=int, default=None)
        parser.add_argument(
            "--distractors",
            type=int,
            default=0,
            help="Innocent images to ban as well, for a bigger blocklist (0).",
        )
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument(
            "--jobs",
            type=int,
            default=os.cpu_count() or 1,
            help="Processes to check files in (default: one per CPU).",
        )

    def handle(self, *args, **options) -> None:
        names = [name.strip() for name in options["edits"].split(",") if name.strip()]
        unknown = [name for name in names if name not in EDITS]
        if unknown:
            raise CommandError(f"Unknown edits {unknown}; choose from {', '.join(EDITS)}.")
        edits = [EDITS[name] for name in names] if names else list(CATALOGUE)
        harness = Harness(match_rule(), detect_config())
        with tqdm(desc="checking", unit="file", disable=None) as bar:
            try:
                result = evaluate(
                    options["banned"],
                    options["innocent"],
                    edits=edits,
                    innocent_edits=options["innocent_edits"],
                    limit_banned=options["limit_banned"],
                    limit_innocent=options["limit_innocent"],
                    distractors=options["distractors"],
                    seed=options["seed"],
                    jobs=max(1, options["jobs"]),
                    harness=harness,
                    progress=bar.update,
                    total=lambda count: bar.reset(total=count),
                )
            except (FileNotFoundError, ValueError) as exc:
                raise CommandError(str(exc)) from exc
        report = write_report(result, options["out"])
        figures = summary(result)
        self.stdout.write(f"Report: {report}")
        for system in SYSTEMS:
            self.stdout.write(
                f"{LABELS[system]:>24}: recall {figures['overall_recall'][system]:.1%}, "
                f"false positives {figures['false_positives'][system]}, "
                f"{figures['median_ms'][system]:.0f} ms/file"
            )
        self.stdout.write(f"Targets met: {'yes' if figures['targets_met'] else 'no'}")
