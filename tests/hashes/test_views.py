import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from hashes.views import colour_copy, cut, views, working_copy
from tests.images import photo


def _boxes(image: Image.Image) -> dict[str, tuple[float, ...]]:
    return {view.name: view.box for view in views(colour_copy(image))}


def _near(box: tuple[float, ...], expected: tuple[float, ...], slack: float = 0.02) -> bool:
    return all(abs(a - b) <= slack for a, b in zip(box, expected, strict=True))


def test_a_plain_photo_has_no_views() -> None:
    assert _boxes(photo("astronaut")) == {}


@pytest.mark.parametrize("colour", ["white", "black", (200, 30, 60)])
def test_a_uniform_border_is_trimmed(colour: object) -> None:
    framed = ImageOps.expand(photo("chelsea"), border=30, fill=colour)
    inner = (30 / framed.width, 30 / framed.height, 1 - 30 / framed.width, 1 - 30 / framed.height)
    assert _near(_boxes(framed)["trim"], inner)


def test_letterbox_bars_are_trimmed() -> None:
    image = photo("coffee")
    canvas = Image.new("RGB", (image.width * 2, image.height), "black")
    canvas.paste(image, (image.width // 2, 0))
    assert _near(_boxes(canvas)["trim"], (0.25, 0, 0.75, 1))


def test_a_caption_bar_with_text_is_cut_away() -> None:
    image = photo("rocket")
    bar = image.height // 6
    canvas = Image.new("RGB", (image.width, image.height + bar), "white")
    canvas.paste(image, (0, bar))
    draw = ImageDraw.Draw(canvas)
    draw.text((20, bar // 4), "look who is back", fill="black", font_size=bar // 2)
    boxes = _boxes(canvas)
    assert _near(boxes["trim_caption"], (0, bar / canvas.height, 1, 1))


def test_each_tile_of_a_collage_is_a_view() -> None:
    names = ["astronaut", "chelsea", "coffee", "rocket"]
    tiles = [photo(name).resize((240, 180)) for name in names]
    canvas = Image.new("RGB", (480, 360))
    for index, tile in enumerate(tiles):
        canvas.paste(tile, ((index % 2) * 240, (index // 2) * 180))
    boxes = list(_boxes(canvas).values())
    for quadrant in [(0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5), (0, 0.5, 0.5, 1), (0.5, 0.5, 1, 1)]:
        assert any(_near(box, quadrant) for box in boxes), quadrant


def test_cut_takes_the_same_part_at_any_size() -> None:
    image = ImageOps.expand(photo("coffee"), border=40, fill="white")
    view = next(v for v in views(colour_copy(image)) if v.name == "trim")
    assert abs(cut(image, view).width - photo("coffee").width) <= 8


@pytest.mark.parametrize(
    "box",
    [(0.25, 0.25, 0.75, 0.75), (0, 0.5, 0.5, 1), (0.12, 0.3, 0.52, 0.75), (0.55, 0, 1, 0.4)],
)
def test_a_picture_pasted_inside_another_is_an_inset_view(box: tuple[float, ...]) -> None:
    canvas = photo("chelsea").resize((600, 450))
    left, right = (round(600 * share) for share in box[::2])
    top, bottom = (round(450 * share) for share in box[1::2])
    canvas.paste(photo("rocket").resize((right - left, bottom - top)), (left, top))
    insets = [found for name, found in _boxes(canvas).items() if name.startswith("inset")]
    assert any(_near(found, box) for found in insets), insets


@pytest.mark.parametrize("size", [(1, 1), (1, 50), (50, 1), (3, 700), (17, 17)])
def test_a_sliver_of_a_picture_has_no_views(size: tuple[int, int]) -> None:
    assert views(Image.new("RGB", size, "red")) == []


def test_a_join_of_exactly_the_seam_step_is_a_seam() -> None:
    """Grey levels 70/3 and 28/3 differ by exactly _STEP (14): a seam, by the rule, however
    a division by three would round them."""
    canvas = Image.new("RGB", (400, 300), (24, 23, 23))
    canvas.paste((10, 9, 9), (200, 0, 400, 300))
    boxes = sorted(box for name, box in _boxes(canvas).items() if name.startswith("panel"))
    assert boxes == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]


@pytest.mark.parametrize("side", [384, 512, 640])
def test_a_working_copy_is_the_frame_as_thumbnail_reduces_it(side):
    frame = photo("astronaut").resize((1003, 877))
    shapes = [(1003, 877), (877, 1003), (641, 640), (640, 641), (1003, 5), (5, 1003), (900, 900)]
    # Aspect ratios whose rounding down or up is a close call.
    shapes += [(side + 1 + step * 37, 3 + step * 61) for step in range(20)]
    for width, height in shapes:
        picture = frame.resize((width, height))
        expected = picture.copy()
        expected.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)

        copy = working_copy(picture, side)

        assert copy.size == expected.size
        assert copy.tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    ("size", "apart"),
    # Under twice as large (a JPEG decoded reduced), all but Pillow's pixels; larger, a
    # few grey levels sharper than its triangle filter (1.8 and 3.5 here).
    [((1003, 877), 1), ((877, 1003), 1), ((513, 512), 1), ((1600, 1200), 4), ((4000, 900), 4)],
)
def test_a_colour_copy_is_a_working_copys_size_and_much_its_picture(size, apart):
    picture = photo("astronaut").resize(size)

    copy = colour_copy(picture)
    expected = working_copy(picture)

    assert copy.mode == "RGB" and copy.size == expected.size
    difference = np.abs(np.asarray(copy, np.int16) - np.asarray(expected, np.int16))
    assert difference.mean() < apart


# (1024, 701): halved, as it is across and a little smaller down.
@pytest.mark.parametrize(
    "size", [(2000, 1), (1, 2000), (4000, 33), (1024, 701), (701, 1024), (600, 400)]
)
def test_a_colour_copy_of_a_sliver_or_a_small_frame_is_made(size):
    picture = Image.new("RGB", size, (10, 200, 30))

    copy = colour_copy(picture)

    assert copy.size == working_copy(picture).size
    assert copy.getpixel((0, 0)) == (10, 200, 30)
