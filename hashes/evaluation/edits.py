"""The edits people make to a banned image to get it past a filter, as files.

Each ``Edit`` turns an RGB picture into the bytes of the file an uploader would send: a
format, a quality, sometimes an EXIF tag or extra animation frames. Edits that combine the
picture with others (animation, screenshot, collage, paste) take them from ``others``,
which the harness fills with innocent images, never with another banned one. Random
choices come from the ``rng`` passed in, so a run is repeatable.

``tier`` is the recall the issue asks of the edit: ``exact`` edits keep the whole picture
(target 99%), ``partial`` ones crop, pad, rotate slightly, tilt its perspective or embed it
(target 90%).
"""

import io
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

EXACT = "exact"
PARTIAL = "partial"
TARGETS = {EXACT: 0.99, PARTIAL: 0.90}

Apply = Callable[[Image.Image, random.Random, Sequence[Image.Image]], bytes]


@dataclass(frozen=True)
class Edit:
    name: str
    family: str
    tier: str
    description: str
    apply: Apply


def encode(image: Image.Image, image_format: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        options.setdefault("quality", 90)
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    size = (max(8, round(image.width * factor)), max(8, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(10, size))


def _words(rng: random.Random, count: int) -> str:
    vocabulary = [
        "look",
        "who",
        "is",
        "back",
        "again",
        "today",
        "best",
        "profile",
        "ever",
        "lol",
        "new",
        "pic",
        "me",
        "summer",
        "weekend",
        "hello",
        "swipe",
        "right",
        "no",
        "filter",
        "real",
        "just",
        "vibes",
    ]
    return " ".join(rng.choice(vocabulary) for _ in range(count))


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` scaled and centre-cropped to fill exactly ``size``."""
    return ImageOps.fit(image, size, Image.Resampling.LANCZOS)


def _other(rng: random.Random, others: Sequence[Image.Image], image: Image.Image) -> Image.Image:
    if not others:
        # Without innocent images to mix in, a noise texture stands in for one.
        noise = np.random.default_rng(rng.randrange(2**32)).integers(0, 255, (64, 64, 3))
        return Image.fromarray(noise.astype(np.uint8)).resize(image.size)
    return rng.choice(list(others))


# --- whole-picture edits ----------------------------------------------------------------


# An upscaled copy stays under the loader's pixel limit, as a site's upload limit keeps it:
# past it the worker records the file as too large instead of matching it.
_UPSCALED_PIXELS = 40_000_000


def _resize(factor: float) -> Apply:
    def apply(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
        limit = math.sqrt(_UPSCALED_PIXELS / (image.width * image.height))
        return encode(_scaled(image, min(factor, max(1.0, limit))))

    return apply


def _thumbnail(side: int) -> Apply:
    def apply(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
        small = image.copy()
        small.thumbnail((side, side), Image.Resampling.LANCZOS)
        return encode(small, quality=85)

    return apply


def _jpeg(quality: int) -> Apply:
    return lambda image, rng, others: encode(image, quality=quality)


def _enhance(kind: Callable[[Image.Image], ImageEnhance._Enhance], factor: float) -> Apply:
    return lambda image, rng, others: encode(kind(image).enhance(factor))


def _gamma(gamma: float) -> Apply:
    table = [round(255 * (value / 255) ** gamma) for value in range(256)] * 3
    return lambda image, rng, others: encode(image.point(table))


def _hue_shift(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
    hue, saturation, value = image.convert("HSV").split()
    shift = rng.choice((-1, 1)) * 30
    hue = hue.point(lambda h: (h + shift) % 256)
    return encode(Image.merge("HSV", (hue, saturation, value)).convert("RGB"))


def _blur(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
    radius = max(1.5, max(image.size) / 400)
    return encode(image.filter(ImageFilter.GaussianBlur(radius)))


def _sharpen(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
    return encode(image.filter(ImageFilter.UnsharpMask(radius=2, percent=200, threshold=2)))


def _noise(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
    pixels = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 12, pixels.shape)
    return encode(Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)))


def _caption_bar(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
    bar = max(24, image.height // 7)
    canvas = Image.new("RGB", (image.width, image.height + bar), "white")
    top = rng.random() < 0.5
    canvas.paste(image, (0, bar if top else 0))
    draw = ImageDraw.Draw(canvas)
    y = bar // 2 if top else image.height + bar // 2
    draw.text(
        (image.width // 2, y), _words(rng, 5), fill="black", font=_font(bar // 2), anchor="mm"
    )
    return encode(canvas)


def _caption_overlay(
    image: Image.Image, rng: random.Random, others: Sequence[Image.Image]
) -> bytes:
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    size = max(12, image.height // 12)
    draw.text(
        (image.width // 2, image.height - size),
        _words(rng, 4).upper(),
        fill="white",
        font=_font(size),
        anchor="mm",
        stroke_width=max(1, size // 12),
        stroke_fill="black",
    )
    return encode(canvas)


def _sticker(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
    canvas = image.convert("RGBA")
    side = round(min(image.size) * 0.22)
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    x = rng.choice((side // 4, image.width - side - side // 4))
    y = rng.choice((side // 4, image.height - side - side // 4))
    colour = tuple(rng.randrange(256) for _ in range(3))
    draw.ellipse((x, y, x + side, y + side), fill=(*colour, 255), outline="black", width=3)
    draw.text(
        (x + side // 2, y + side // 2), "♥" if rng.random() < 0.5 else "OK",
        fill="white", font=_font(side // 3), anchor="mm",
    )  # fmt: skip
    logo = f"@{_words(rng, 1)}"
    draw.text(
        (image.width - 8, 8), logo, fill=(255, 255, 255, 160), font=_font(side // 4), anchor="ra"
    )
    canvas.alpha_composite(layer)
    return encode(canvas.convert("RGB"))


def _transposed(method: Image.Transpose) -> Apply:
    return lambda image, rng, others: encode(image.transpose(method))


def _exif_orientation(
    image: Image.Image, rng: random.Random, others: Sequence[Image.Image]
) -> bytes:
    # The pixels are stored turned, and the tag tells viewers how to turn them back, as
    # phone cameras do: shown correctly, the file is the banned picture.
    orientation, stored = rng.choice(
        (
            (6, Image.Transpose.ROTATE_90),
            (8, Image.Transpose.ROTATE_270),
            (3, Image.Transpose.ROTATE_180),
        )
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image.transpose(stored), exif=exif)


def _animated_gif(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
    small = image.copy()
    small.thumbnail((480, 480), Image.Resampling.LANCZOS)
    frames = [_fit(_other(rng, others, small), small.size) for _ in range(2)]
    frames.insert(1, small)
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=400, loop=0)


# --- partial-picture edits --------------------------------------------------------------


def _cropped(
    image: Image.Image, left: float, top: float, right: float, bottom: float
) -> Image.Image:
    """``image`` with each side's fraction of its width or height cut off."""
    box = (
        round(image.width * left),
        round(image.height * top),
        round(image.width * (1 - right)),
        round(image.height * (1 - bottom)),
    )
    return image.crop(box)


def _crop(left: float, top: float, right: float, bottom: float, one_side: bool = False) -> Apply:
    def apply(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
        margins = [left, top, right, bottom]
        if one_side:
            rng.shuffle(margins)
        return encode(_cropped(image, *margins))

    return apply


def _crop_area(removed: float) -> Apply:
    def apply(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
        # The area kept is split at random between the two axes, and each axis's cut
        # between its two sides: anything from one side only to all four.
        share = rng.random()
        cut_x, cut_y = 1 - (1 - removed) ** share, 1 - (1 - removed) ** (1 - share)
        left, top = cut_x * rng.random(), cut_y * rng.random()
        return encode(_cropped(image, left, top, cut_x - left, cut_y - top))

    return apply


def _mirror_crop(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
    mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return encode(_cropped(mirrored, *(rng.uniform(0.05, 0.10) for _ in range(4))))


def _aspect(x: float, y: float) -> Apply:
    return lambda image, rng, others: encode(
        image.resize((round(image.width * x), round(image.height * y)), Image.Resampling.LANCZOS)
    )


def _border(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
    width = max(4, round(min(image.size) * 0.08))
    colour = rng.choice(("white", "black", (200, 30, 60), (240, 240, 230)))
    return encode(ImageOps.expand(image, border=width, fill=colour))


def _letterbox(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
    # Into a frame of the other orientation's common shape, as a video or story would.
    ratio = 16 / 9 if image.width <= image.height * 1.3 else 9 / 16
    if image.width / image.height < ratio:
        size = (round(image.height * ratio), image.height)
    else:
        size = (image.width, round(image.width / ratio))
    canvas = Image.new("RGB", size, "black")
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return encode(canvas)


def _rotate(degrees: float, crop: bool) -> Apply:
    def apply(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
        angle = rng.choice((-1, 1)) * degrees
        turned = image.rotate(angle, Image.Resampling.BICUBIC, fillcolor="black")
        if crop:
            # The largest centred box with no filled corners.
            radians = math.radians(abs(angle))
            keep = 1 / (math.cos(radians) + math.sin(radians) * max(image.size) / min(image.size))
            dx = round(image.width * (1 - keep) / 2)
            dy = round(image.height * (1 - keep) / 2)
            turned = turned.crop((dx, dy, image.width - dx, image.height - dy))
        return encode(turned)

    return apply


def _perspective_coefficients(
    shown: Sequence[tuple[float, float]], source: Sequence[tuple[float, float]]
) -> tuple[float, ...]:
    """PIL's eight PERSPECTIVE coefficients taking each ``shown`` point to its ``source`` one."""
    rows, values = [], []
    for (x, y), (u, v) in zip(shown, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        values += [u, v]
    return tuple(float(c) for c in np.linalg.solve(np.array(rows), np.array(values)))


def _keystone(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
    """One edge narrowed by 5-10% of its length, as in a photo of a screen taken at an
    angle, then cut to the widest box with no filled corners."""
    width, height = image.size
    edge = rng.choice(("top", "bottom", "left", "right"))
    inset = rng.uniform(0.05, 0.10) / 2  # from each end of the edge
    x, y = width * inset, height * inset
    # Where the corners are shown, clockwise from the top left.
    placements: dict[str, list[tuple[float, float]]] = {
        "top": [(x, 0), (width - x, 0), (width, height), (0, height)],
        "bottom": [(0, 0), (width, 0), (width - x, height), (x, height)],
        "left": [(0, y), (width, 0), (width, height), (0, height - y)],
        "right": [(0, 0), (width, y), (width, height - y), (0, height)],
    }
    corners: list[tuple[float, float]] = [(0, 0), (width, 0), (width, height), (0, height)]
    distorted = image.transform(
        image.size,
        Image.Transform.PERSPECTIVE,
        _perspective_coefficients(placements[edge], corners),
        Image.Resampling.BICUBIC,
        fillcolor="black",
    )
    if edge in ("top", "bottom"):
        box = (math.ceil(x), 0, math.floor(width - x), height)
    else:
        box = (0, math.ceil(y), width, math.floor(height - y))
    return encode(distorted.crop(box))


def _screenshot(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
    """The picture as shown in an app: a window with a title bar, a sidebar and text."""
    shown = image.copy()
    shown.thumbnail((720, 720), Image.Resampling.LANCZOS)
    width, height = round(shown.width * 1.45), round(shown.height * 1.35) + 40
    background = rng.choice(((245, 245, 247), (32, 33, 36), (255, 255, 255)))
    ink = (30, 30, 30) if sum(background) > 384 else (230, 230, 230)
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, width, 34), fill=(60, 64, 72))
    draw.text((12, 17), _words(rng, 3), fill="white", font=_font(16), anchor="lm")
    for index, colour in enumerate(("#ff5f57", "#febc2e", "#28c840")):
        draw.ellipse((width - 70 + index * 20, 11, width - 58 + index * 20, 23), fill=colour)
    left = width - shown.width - 16
    for line in range(4, height // 28):
        draw.text((10, line * 26), _words(rng, 2), fill=ink, font=_font(13))
    canvas.paste(shown, (left, 50))
    draw.text((left, 58 + shown.height), _words(rng, 6), fill=ink, font=_font(15))
    return encode(canvas, "PNG")


def _collage(columns: int, rows: int) -> Apply:
    def apply(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
        cell = (min(480, image.width), min(480, image.width) * image.height // image.width)
        gap = rng.choice((0, 6))
        canvas = Image.new(
            "RGB",
            (columns * cell[0] + (columns + 1) * gap, rows * cell[1] + (rows + 1) * gap),
            "white",
        )
        spot = rng.randrange(columns * rows)
        for index in range(columns * rows):
            tile = image if index == spot else _other(rng, others, image)
            column, row = index % columns, index // columns
            canvas.paste(
                _fit(tile, cell),
                (gap + column * (cell[0] + gap), gap + row * (cell[1] + gap)),
            )
        return encode(canvas)

    return apply


def _paste(place: str) -> Apply:
    """The picture at half its width and height, over another picture of its full size, in
    a random corner or in the centre."""

    def apply(image: Image.Image, rng: random.Random, others: Sequence[Image.Image]) -> bytes:
        canvas = _fit(_other(rng, others, image), image.size)
        small = _scaled(image, 0.5)
        free_x, free_y = canvas.width - small.width, canvas.height - small.height
        if place == "corner":
            spot = (rng.choice((0, free_x)), rng.choice((0, free_y)))
        else:
            spot = (free_x // 2, free_y // 2)
        canvas.paste(small, spot)
        return encode(canvas)

    return apply


def _e(name: str, family: str, tier: str, description: str, apply: Apply) -> Edit:
    return Edit(name=name, family=family, tier=tier, description=description, apply=apply)


CATALOGUE: tuple[Edit, ...] = (
    _e("original", "copy", EXACT, "the file as banned, re-encoded JPEG q90", _jpeg(90)),
    _e("resize_half", "resize", EXACT, "scaled to 50%", _resize(0.5)),
    _e("resize_double", "resize", EXACT, "scaled to 200%, at most 40 MP", _resize(2.0)),
    _e("resize_third", "resize", EXACT, "scaled to 33%", _resize(1 / 3)),
    _e("thumbnail", "resize", EXACT, "fitted into 160x160", _thumbnail(160)),
    _e("jpeg_q70", "recompress", EXACT, "JPEG quality 70", _jpeg(70)),
    _e("jpeg_q40", "recompress", EXACT, "JPEG quality 40", _jpeg(40)),
    _e("jpeg_q15", "recompress", EXACT, "JPEG quality 15", _jpeg(15)),
    _e("webp", "format", EXACT, "WebP quality 75", lambda i, r, o: encode(i, "WEBP", quality=75)),
    _e("png", "format", EXACT, "PNG", lambda i, r, o: encode(i, "PNG")),
    _e("greyscale", "colour", EXACT, "greyscale", lambda i, r, o: encode(i.convert("L"))),
    _e("brighter", "colour", EXACT, "brightness +35%", _enhance(ImageEnhance.Brightness, 1.35)),
    _e("darker", "colour", EXACT, "brightness -35%", _enhance(ImageEnhance.Brightness, 0.65)),
    _e("contrast_up", "colour", EXACT, "contrast x1.5", _enhance(ImageEnhance.Contrast, 1.5)),
    _e("contrast_down", "colour", EXACT, "contrast x0.6", _enhance(ImageEnhance.Contrast, 0.6)),
    _e("gamma_low", "colour", EXACT, "gamma 0.6", _gamma(0.6)),
    _e("gamma_high", "colour", EXACT, "gamma 1.7", _gamma(1.7)),
    _e("saturate", "colour", EXACT, "saturation x1.8", _enhance(ImageEnhance.Color, 1.8)),
    _e("hue_shift", "colour", EXACT, "hue turned by 42 degrees", _hue_shift),
    _e("blur", "filter", EXACT, "Gaussian blur, radius 0.25% of the size", _blur),
    _e("sharpen", "filter", EXACT, "unsharp mask", _sharpen),
    _e("noise", "filter", EXACT, "Gaussian noise, sigma 12", _noise),
    _e("caption_bar", "overlay", EXACT, "white caption bar with text added", _caption_bar),
    _e("caption_text", "overlay", EXACT, "meme text over the bottom", _caption_overlay),
    _e("sticker", "overlay", EXACT, "sticker and watermark in the corners", _sticker),
    _e("mirror", "orientation", EXACT, "mirrored", _transposed(Image.Transpose.FLIP_LEFT_RIGHT)),
    _e("flip", "orientation", EXACT, "upside down", _transposed(Image.Transpose.FLIP_TOP_BOTTOM)),
    _e("rotate_90", "orientation", EXACT, "turned 90", _transposed(Image.Transpose.ROTATE_90)),
    _e("rotate_180", "orientation", EXACT, "turned 180", _transposed(Image.Transpose.ROTATE_180)),
    _e("rotate_270", "orientation", EXACT, "turned 270", _transposed(Image.Transpose.ROTATE_270)),
    _e("exif_orientation", "orientation", EXACT, "pixels turned, EXIF tag", _exif_orientation),
    _e("animated_gif", "animation", EXACT, "middle frame of a GIF", _animated_gif),
    _e("crop_centre_10", "crop", PARTIAL, "5% off each side", _crop(0.05, 0.05, 0.05, 0.05)),
    _e("crop_centre_20", "crop", PARTIAL, "10% off each side", _crop(0.1, 0.1, 0.1, 0.1)),
    _e("crop_side_10", "crop", PARTIAL, "10% off one side", _crop(0.1, 0, 0, 0, True)),
    _e("crop_side_20", "crop", PARTIAL, "20% off one side", _crop(0.2, 0, 0, 0, True)),
    _e("crop_corner", "crop", PARTIAL, "12% off two sides", _crop(0.12, 0.12, 0, 0, True)),
    _e("crop_20", "crop", PARTIAL, "20% of the area off random sides", _crop_area(0.2)),
    _e("mirror_crop", "crop", PARTIAL, "mirrored, 5-10% off each side", _mirror_crop),
    _e("aspect_wide", "aspect", PARTIAL, "stretched 35% wider", _aspect(1.35, 1.0)),
    _e("aspect_tall", "aspect", PARTIAL, "stretched 30% taller", _aspect(1.0, 1.3)),
    _e("border", "border", PARTIAL, "8% border", _border),
    _e("letterbox", "border", PARTIAL, "letterboxed to 16:9 or 9:16", _letterbox),
    _e("rotate_3", "rotation", PARTIAL, "turned 3 degrees, black corners", _rotate(3, False)),
    _e("rotate_5", "rotation", PARTIAL, "turned 5 degrees, cropped", _rotate(5, True)),
    _e("keystone", "perspective", PARTIAL, "one edge 5-10% narrower, cropped", _keystone),
    _e("screenshot", "embed", PARTIAL, "inside an app window", _screenshot),
    _e("collage_2x2", "embed", PARTIAL, "one tile of a 2x2 collage", _collage(2, 2)),
    _e("collage_1x2", "embed", PARTIAL, "one half of a side-by-side", _collage(2, 1)),
    _e("paste_corner", "embed", PARTIAL, "at half size in a corner of another", _paste("corner")),
    _e("paste_centre", "embed", PARTIAL, "at half size in the centre of another", _paste("centre")),
)

EDITS: dict[str, Edit] = {edit.name: edit for edit in CATALOGUE}
