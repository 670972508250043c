import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from hashes.evaluation.edits import CATALOGUE, EDITS, EXACT, PARTIAL
from hashes.evaluation.harness import SYSTEMS, Harness, evaluate
from hashes.evaluation.report import summary, write_report
from hashes.loading import load_image
from tests.images import encode, photo, photo_path


def test_the_catalogue_covers_what_the_issue_lists() -> None:
    assert len(CATALOGUE) >= 25
    families = {edit.family for edit in CATALOGUE}
    assert families >= {
        "resize", "recompress", "format", "colour", "filter", "overlay", "orientation",
        "animation", "crop", "aspect", "border", "rotation", "embed",
    }  # fmt: skip
    assert {edit.tier for edit in CATALOGUE} == {EXACT, PARTIAL}


@pytest.mark.parametrize("edit", CATALOGUE, ids=lambda edit: edit.name)
def test_each_edit_makes_a_readable_file_showing_the_picture(edit) -> None:
    source = photo("coffee")
    data = edit.apply(source, random.Random(0), [photo("chelsea")])
    loaded = load_image(data)
    assert loaded.width >= 40 and loaded.height >= 40
    if edit.name == "animated_gif":
        assert loaded.frame_count == 3
    if edit.name == "exif_orientation":
        # Shown as its tag says, the file is the picture the right way up.
        assert loaded.frames[0].size == source.size
        with Image.open(__import__("io").BytesIO(data)) as raw:
            assert raw.size == source.size[::-1]


def test_the_harness_reports_recall_false_positives_and_baselines(tmp_path: Path) -> None:
    banned, innocent = tmp_path / "banned", tmp_path / "innocent"
    banned.mkdir()
    innocent.mkdir()
    for name in ("astronaut", "rocket"):
        (banned / f"{name}.jpg").write_bytes(photo_path(name).read_bytes())
    for name in ("chelsea", "coffee", "motorcycle_left"):
        (innocent / f"{name}.jpg").write_bytes(photo_path(name).read_bytes())
    (innocent / "notes.txt").write_text("not an image")
    edits = [EDITS[name] for name in ("jpeg_q40", "mirror", "crop_side_20", "collage_2x2")]
    steps = []
    result = evaluate(
        banned,
        innocent,
        edits=edits,
        innocent_edits=1,
        jobs=2,
        progress=steps.append,
        total=steps.append,
    )
    # The announced total, then the files checked: the text file counts until skipped.
    assert steps[0] == 2 * 4 + 4 * 2 and sum(steps[1:]) == steps[0]
    assert len(result.banned) == 2 and len(result.innocent) == 3
    assert [path for path, _ in result.skipped] == [str(innocent / "notes.txt")]

    figures = summary(result)
    assert figures["overall_recall"]["hashguard"] == 1.0
    assert figures["false_positives"]["hashguard"] == 0
    assert figures["comparisons"] == 6 * 2
    # The baselines answer the same files: none of them sees the mirror image.
    mirror = next(entry for entry in figures["edits"] if entry["edit"] == "mirror")
    assert mirror["recall"] == {
        "hashguard": 1.0,
        "dhash_exact": 0.0,
        "phash_10": 0.0,
        "pdq_31": 0.0,
    }
    assert set(figures["median_ms"]) == set(SYSTEMS)

    report = write_report(result, tmp_path / "out")
    text = report.read_text()
    assert "| Recall, all edits |" in text and "PDQ <= 31" in text and "mirror" in text
    for plot in ("recall.png", "distances.png"):
        with Image.open(tmp_path / "out" / plot) as image:
            assert image.format == "PNG" and image.width > 300
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["banned_images"] == 2


def test_a_folder_without_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No readable images"):
        evaluate(tmp_path / "empty", tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        evaluate(tmp_path / "missing", tmp_path / "empty")


def test_distractors_make_the_blocklist_bigger_and_leave_the_innocent_set(
    tmp_path: Path,
) -> None:
    banned, innocent = tmp_path / "banned", tmp_path / "innocent"
    banned.mkdir()
    innocent.mkdir()
    (banned / "astronaut.jpg").write_bytes(photo_path("astronaut").read_bytes())
    for name in ("chelsea", "coffee", "rocket"):
        (innocent / f"{name}.jpg").write_bytes(photo_path(name).read_bytes())

    result = evaluate(banned, innocent, edits=[EDITS["jpeg_q40"]], innocent_edits=0, distractors=2)

    assert len(result.distractors) == 2 and len(result.innocent) == 1
    assert not set(result.distractors) & set(result.innocent)
    figures = summary(result)
    assert figures["distractors"] == 2
    assert figures["comparisons"] == 1 * 3  # one innocent file against three bans
    assert figures["overall_recall"]["hashguard"] == 1.0
    # The distractors are banned: the product and the baselines all find them.
    assert figures["false_positives"]["hashguard"] == 0
    assert "Distractors: 2" in write_report(result, tmp_path / "out").read_text()
    with pytest.raises(ValueError, match="distractors must be from 0 to 3"):
        evaluate(banned, innocent, edits=[EDITS["jpeg_q40"]], innocent_edits=0, distractors=4)


def test_upscaling_stays_under_the_loaders_pixel_limit() -> None:
    big = Image.new("RGB", (5640, 3172), "red")
    loaded = load_image(EDITS["resize_double"].apply(big, random.Random(0), []))
    assert loaded.width > 5640 and loaded.width * loaded.height <= 40_000_000


def test_the_harness_checks_every_frame_with_its_own_fingerprint() -> None:
    """Frames [A, B, A', C], A' a repeat of A by its hashes though not by its pixels: C's
    frame, not A', must be checked with C's fingerprint and turns."""
    a, b, c = (photo(name).resize((240, 180)) for name in ("coffee", "rocket", "chelsea"))
    almost_a = a.copy()
    almost_a.putpixel((0, 0), (0, 0, 0))
    gif = io.BytesIO()
    a.save(gif, "GIF", save_all=True, append_images=[b, almost_a, c], duration=500)
    harness = Harness()
    harness.ban(1, encode(c.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"))
    harness.ready()

    matches, _, explanation, _ = harness.check(gif.getvalue())

    assert matches["hashguard"] == {1}, explanation
