"""An ``Evaluation`` as a Markdown report with PNG plots, and its summary as JSON."""

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from hashes.algorithms import ALGORITHMS
from hashes.evaluation.edits import TARGETS
from hashes.evaluation.harness import SYSTEMS, Evaluation, median_ms, recall

LABELS = {
    "hashguard": "hashguard",
    "dhash_exact": "dHash exact (tutorial)",
    "phash_10": "pHash <= 10",
    "pdq_31": "PDQ <= 31",
}


def summary(result: Evaluation) -> dict:
    """The figures of the report, as plain data."""
    scored = result.scored
    by_edit = defaultdict(list)
    for sample in scored:
        by_edit[sample.edit].append(sample)
    edits: list[dict[str, Any]] = []
    for edit in result.edits:
        samples = by_edit[edit.name]
        edits.append(
            {
                "edit": edit.name,
                "family": edit.family,
                "tier": edit.tier,
                "description": edit.description,
                "target": TARGETS[edit.tier],
                "recall": {system: recall(samples, system) for system in SYSTEMS},
                "missed": sorted(s.source for s in samples if not s.hits["hashguard"]),
            }
        )
    innocent = result.innocent_samples
    comparisons = result.comparisons()
    false_positives = {system: sum(s.hits[system] for s in innocent) for system in SYSTEMS}
    return {
        "banned_images": len(result.banned),
        "refused_low_detail": result.refused,
        "distractors": len(result.distractors),
        "innocent_images": len(result.innocent),
        "innocent_files": len(innocent),
        "skipped": result.skipped,
        "overall_recall": {system: recall(scored, system) for system in SYSTEMS},
        "tier_recall": {
            tier: {
                system: recall([s for s in scored if _tier(result, s.edit) == tier], system)
                for system in SYSTEMS
            }
            for tier in TARGETS
        },
        "edits": edits,
        "false_positives": false_positives,
        "comparisons": comparisons,
        "false_positive_rate": {
            system: _rate(count, comparisons) for system, count in false_positives.items()
        },
        "wrong_banned_matches": sum(s.wrong["hashguard"] for s in scored),
        "false_positive_files": [
            {"file": s.source, "edit": s.edit, "matched": _named(result, s.explanation)}
            for s in innocent
            if s.hits["hashguard"]
        ],
        "median_ms": {system: median_ms(result.samples, system) for system in SYSTEMS},
        "distances": _distance_stats(result),
        "targets_met": all(
            entry["recall"]["hashguard"] >= entry["target"]
            for entry in edits
            if not math.isnan(entry["recall"]["hashguard"])
        )
        and false_positives["hashguard"] == 0,
    }


def _distance_stats(result: Evaluation) -> dict:
    """Percentiles per algorithm: edited copies vs their source, innocent vs banned."""
    stats = {}
    for name in ALGORITHMS:
        same = np.array([s.distances[name] for s in result.scored if name in s.distances])
        different = np.array(result.innocent_distances.get(name, []))
        stats[name] = {
            "same_p50": float(np.percentile(same, 50)) if same.size else None,
            "same_p90": float(np.percentile(same, 90)) if same.size else None,
            "different_min": int(different.min()) if different.size else None,
            "different_p01": float(np.percentile(different, 0.1)) if different.size else None,
            "different_p50": float(np.percentile(different, 50)) if different.size else None,
        }
    return stats


def _named(result: Evaluation, explanation: str) -> str:
    """The detector's explanation with banned keys replaced by the banned files' names."""
    for key, name in reversed(list(enumerate(result.banned))):
        explanation = explanation.replace(f"#{key} by", f"{name} by")
    return explanation


def _tier(result: Evaluation, name: str) -> str:
    return next(edit.tier for edit in result.edits if edit.name == name)


def _rate(count: int, comparisons: int) -> dict:
    """Observed rate, and the 95% upper bound (the rule of three when none were seen)."""
    if not comparisons:
        return {"observed": float("nan"), "upper_95": float("nan")}
    upper = 3 / comparisons if count == 0 else (count + 2 * math.sqrt(count)) / comparisons
    return {"observed": count / comparisons, "upper_95": upper}


def write_report(result: Evaluation, folder: Path) -> Path:
    """Write report.md, summary.json, recall.png and distances.png; return report.md."""
    folder.mkdir(parents=True, exist_ok=True)
    figures = summary(result)
    (folder / "summary.json").write_text(json.dumps(figures, indent=2) + "\n")
    _plot_recall(figures, folder / "recall.png")
    _plot_distances(result, folder / "distances.png")
    path = folder / "report.md"
    path.write_text(_markdown(figures))
    return path


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1%}"


def _markdown(figures: dict) -> str:
    systems = " | ".join(LABELS[system] for system in SYSTEMS)
    lines = [
        "# hashguard evaluation",
        "",
        f"- Banned images: {figures['banned_images']}, of which "
        f"{len(figures['refused_low_detail'])} were refused for fuzzy matching as too plain "
        "(exact copies only) and are left out of recall"
        + (f": {', '.join(figures['refused_low_detail'])}" if figures["refused_low_detail"] else "")
        + ".",
        *(
            [
                f"- Distractors: {figures['distractors']} innocent images banned as well, for a "
                "bigger blocklist; not scored, not counted as innocent."
            ]
            if figures["distractors"]
            else []
        ),
        f"- Innocent images: {figures['innocent_images']}, checked as "
        f"{figures['innocent_files']} files (each as it is and with edits).",
        f"- Targets met: **{'yes' if figures['targets_met'] else 'no'}** "
        "(99% recall on whole-picture edits, 90% on partial ones, no false positive).",
        "",
        "## Summary",
        "",
        f"| Measure | {systems} |",
        "|---|" + "---|" * len(SYSTEMS),
        "| Recall, all edits | "
        + " | ".join(_pct(figures["overall_recall"][s]) for s in SYSTEMS)
        + " |",
    ]
    for tier, target in TARGETS.items():
        lines.append(
            f"| Recall, {tier} edits (target {target:.0%}) | "
            + " | ".join(_pct(figures["tier_recall"][tier][s]) for s in SYSTEMS)
            + " |"
        )
    lines += [
        "| False positives (innocent files) | "
        + " | ".join(str(figures["false_positives"][s]) for s in SYSTEMS)
        + " |",
        "| False-positive rate per comparison (95% upper bound) | "
        + " | ".join(f"{figures['false_positive_rate'][s]['upper_95']:.1e}" for s in SYSTEMS)
        + " |",
        "| Median time per file, ms | "
        + " | ".join(f"{figures['median_ms'][s]:.1f}" for s in SYSTEMS)
        + " |",
        "",
        f"Comparisons (innocent files x banned images): {figures['comparisons']:,}. "
        f"Edited banned files that also matched another banned image: "
        f"{figures['wrong_banned_matches']}.",
        "",
        "## Recall per edit",
        "",
        f"| Edit | Tier | Target | {systems} | Missed (hashguard) |",
        "|---|---|---|" + "---|" * len(SYSTEMS) + "---|",
    ]
    for entry in figures["edits"]:
        recall_hg = entry["recall"]["hashguard"]
        flag = "" if math.isnan(recall_hg) or recall_hg >= entry["target"] else " **below**"
        missed = ", ".join(entry["missed"][:5]) + (" ..." if len(entry["missed"]) > 5 else "")
        lines.append(
            f"| {entry['edit']} ({entry['description']}) | {entry['tier']} | "
            f"{entry['target']:.0%} | "
            + " | ".join(_pct(entry["recall"][s]) + (flag if s == "hashguard" else "")
                         for s in SYSTEMS)
            + f" | {missed} |"
        )  # fmt: skip
    lines += [
        "",
        "![Recall per edit](recall.png)",
        "",
        "## Distances",
        "",
        "Between whole-file fingerprints: each edited banned file and its source (same "
        "picture), and each innocent image and each banned one (different pictures).",
        "",
        "| Algorithm | same: median | same: 90th pct | different: min | different: 0.1th pct "
        "| different: median |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in figures["distances"].items():
        cells = [row[key] for key in ("same_p50", "same_p90", "different_min", "different_p01")]
        cells.append(row["different_p50"])
        lines.append(
            f"| {name} | " + " | ".join("n/a" if v is None else f"{v:g}" for v in cells) + " |"
        )
    lines += ["", "![Distances](distances.png)", ""]
    if figures["false_positive_files"]:
        lines += ["## False positives (hashguard)", ""]
        lines += [
            f"- {entry['file']} ({entry['edit']}): {entry['matched']}"
            for entry in figures["false_positive_files"][:100]
        ]
        lines.append("")
    if figures["skipped"]:
        lines += ["## Skipped files", ""]
        lines += [f"- {path}: {reason}" for path, reason in figures["skipped"]]
        lines.append("")
    return "\n".join(lines)


def _pyplot() -> Any:
    """matplotlib, drawing to files: imported only when a report is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_recall(figures: dict, path: Path) -> None:
    plt = _pyplot()
    edits = figures["edits"]
    fig, ax = plt.subplots(figsize=(12, max(6, len(edits) * 0.28)))
    positions = np.arange(len(edits))
    height = 0.8 / len(SYSTEMS)
    for offset, system in enumerate(SYSTEMS):
        values = [np.nan_to_num(entry["recall"][system]) for entry in edits]
        ax.barh(positions + offset * height, values, height, label=LABELS[system])
    ax.set_yticks(positions + 0.4 - height / 2, [entry["edit"] for entry in edits])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("recall")
    for target in TARGETS.values():
        ax.axvline(target, color="grey", linestyle=":", linewidth=1)
    # Above the bars, where it hides none of them.
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=len(SYSTEMS), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_distances(result: Evaluation, path: Path) -> None:
    plt = _pyplot()
    names = list(ALGORITHMS)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4))
    for ax, name in zip(axes, names, strict=True):
        bits = ALGORITHMS[name].bits
        same = [s.distances[name] for s in result.scored if name in s.distances]
        different = result.innocent_distances.get(name, [])
        bins = np.linspace(0, bits, 65 if bits > 64 else bits + 1)
        if same:
            ax.hist(same, bins=bins, alpha=0.6, density=True, label="edited copy vs source")
        if different:
            ax.hist(different, bins=bins, alpha=0.6, density=True, label="innocent vs banned")
        ax.set_title(f"{name} ({bits} bits)")
        ax.set_xlabel("Hamming distance")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
