import io
import itertools

import imagehash
import numpy as np
import pdqhash
import pytest
from PIL import Image

from hashes.algorithms import (
    _LUMA,
    ALGORITHMS,
    DIHEDRAL,
    Fingerprint,
    algorithm_versions,
    fingerprint_frames,
    fingerprint_image,
    fingerprint_turns,
    grey_levels,
    hamming,
    parse_hash,
    pdq_turns,
)
from hashes.loading import load_image
from hashes.matching import DEFAULT_RULE_CONFIG, Matcher, MatchRule
from tests.images import PHOTOS, encode, photo


def resized(factor: float):
    def edit(image: Image.Image) -> bytes:
        size = (round(image.width * factor), round(image.height * factor))
        return encode(image.resize(size, Image.Resampling.LANCZOS), "JPEG", quality=90)

    return edit


EDITS = {
    "resize 0.5x": resized(0.5),
    "resize 2x": resized(2),
    "jpeg q30": lambda image: encode(image, "JPEG", quality=30),
    "png": lambda image: encode(image, "PNG"),
    "webp": lambda image: encode(image, "WEBP", quality=75),
}


def fingerprint_of(data: bytes) -> Fingerprint:
    return fingerprint_image(load_image(data).frames[0])


def test_fingerprint_has_every_algorithm_as_lowercase_hex(photo_fingerprints):
    fingerprint = photo_fingerprints["astronaut"]

    assert set(fingerprint.hashes) == set(ALGORITHMS)
    for name, code in fingerprint.hashes.items():
        assert len(code) == ALGORITHMS[name].bits // 4
        assert code == code.lower()
        int(code, 16)
    assert 0 <= fingerprint.pdq_quality <= 100


def test_pdq_hex_is_the_reference_format():
    # Meta's reference Hash256 keeps bit k in bit k % 16 of word w[k // 16] and prints
    # w[15] first, 4 hex digits a word; pdqhash returns its vector with element i = bit 255 - i.
    image = photo("chelsea")
    vector, _ = pdqhash.compute(np.asarray(image))
    bit = [int(vector[255 - k]) for k in range(256)]
    words = [sum(bit[16 * i + j] << j for j in range(16)) for i in range(16)]
    reference = "".join(f"{words[i]:04x}" for i in reversed(range(16)))

    assert fingerprint_image(image).hashes["pdq"] == reference


def test_phash_and_dhash_hex_are_imagehash_strings():
    image = photo("coffee")
    fingerprint = fingerprint_image(image)

    assert fingerprint.hashes["phash"] == str(imagehash.phash(image))
    assert fingerprint.hashes["dhash"] == str(imagehash.dhash(image))


def test_fingerprint_needs_rgb():
    with pytest.raises(ValueError, match="RGB"):
        fingerprint_image(photo("coffee").convert("L"))


@pytest.mark.parametrize(("name", "edit"), list(itertools.product(PHOTOS, EDITS)))
def test_edited_copy_matches_under_the_default_rule(photo_fingerprints, name, edit):
    matcher = Matcher(MatchRule.from_config(DEFAULT_RULE_CONFIG))
    for key, other in enumerate(PHOTOS):
        matcher.add(key, photo_fingerprints[other])

    copy = fingerprint_of(EDITS[edit](photo(name)))

    assert [PHOTOS[match.key] for match in matcher.match(copy)] == [name]


def test_lossless_copy_has_identical_hashes(photo_fingerprints):
    copy = fingerprint_of(encode(photo("rocket"), "PNG"))

    assert copy.distance(photo_fingerprints["rocket"]) == {"phash": 0, "dhash": 0, "pdq": 0}


def test_distinct_photos_do_not_match(photo_fingerprints):
    matcher = Matcher(MatchRule.from_config(DEFAULT_RULE_CONFIG))
    for key, name in enumerate(PHOTOS):
        matcher.add(key, photo_fingerprints[name])

    for key, name in enumerate(PHOTOS):
        assert [match.key for match in matcher.match(photo_fingerprints[name])] == [key]


def test_distance_covers_algorithms_both_sides_have():
    full = Fingerprint(
        hashes={"phash": "0" * 16, "dhash": "f" * 16, "pdq": "0" * 64}, pdq_quality=90
    )
    pasted = Fingerprint(hashes={"phash": "0" * 15 + "7"})

    assert full.distance(pasted) == {"phash": 3}
    assert pasted.distance(full) == {"phash": 3}
    assert pasted.distance(Fingerprint(hashes={"dhash": "0" * 16})) == {}


def test_fingerprint_frames_drops_repeated_frames():
    first, second = photo("astronaut"), photo("chelsea").resize((320, 320))
    data = encode(first, "GIF", save_all=True, append_images=[second, first], duration=100)
    loaded = load_image(data)
    assert loaded.frame_count == 3 and len(loaded.frames) == 2  # the repeat is left out

    fingerprints = fingerprint_frames(loaded)

    assert fingerprints == [
        fingerprint_image(loaded.frames[0]),
        fingerprint_image(loaded.frames[1]),
    ]


def test_hamming():
    assert hamming("0000", "0000") == 0
    assert hamming("ffff", "0000") == 16
    assert hamming("8000", "0001") == 2
    assert hamming("f" * 64, "0" * 64) == 256


def test_hamming_rejects_hashes_of_different_lengths():
    with pytest.raises(ValueError, match="different lengths"):
        hamming("0" * 16, "0" * 64)


@pytest.mark.parametrize(
    ("algorithm", "text", "expected"),
    [
        ("phash", "d1c4f0e0e0e0c0c0", "d1c4f0e0e0e0c0c0"),
        ("dhash", "  D1C4F0E0E0E0C0C0\n", "d1c4f0e0e0e0c0c0"),
        ("pdq", "f8f8f0cee0f4a84f06370a22038f63f0\nb36e2ed596621e1d33e6b39c4e9c9b22", None),
    ],
)
def test_parse_hash_normalises(algorithm, text, expected):
    assert parse_hash(algorithm, text) == (expected or "".join(text.split()))


@pytest.mark.parametrize(
    ("algorithm", "text", "message"),
    [
        ("phash", "d1c4f0e0e0e0c0c", "has 15 hex digits but a phash hash has exactly 16"),
        ("dhash", "d1c4f0e0e0e0c0c0ff", "has 18 hex digits"),
        ("pdq", "d1c4f0e0e0e0c0c0", "exactly 64"),
        ("phash", "g1c4f0e0e0e0c0c0", "'g', which are not hex digits"),
        ("phash", "0xd1c4f0e0e0e0c0", "'x'"),
        ("phash", "   ", "empty"),
        ("ahash", "d1c4f0e0e0e0c0c0", "Unknown hash algorithm 'ahash'"),
    ],
)
def test_parse_hash_rejects_with_a_clear_message(algorithm, text, message):
    with pytest.raises(ValueError, match=message):
        parse_hash(algorithm, text)


def test_each_hash_has_the_bits_its_algorithm_declares():
    fingerprint = fingerprint_image(photo("rocket"))
    assert set(fingerprint.hashes) == set(ALGORITHMS) == set(algorithm_versions())
    for name, code in fingerprint.hashes.items():
        assert len(code) * 4 == ALGORITHMS[name].bits, name
        assert parse_hash(name, code) == code


def test_a_banned_image_loaded_at_full_size_has_the_full_resolution_hashes():
    # A camera-sized JPEG, which an upload would decode reduced.
    image = photo("coffee").resize((4200, 2800), Image.Resampling.LANCZOS)
    data = encode(image, "JPEG", quality=90)
    with Image.open(io.BytesIO(data)) as stored:
        every_pixel = stored.convert("RGB")
    bits, quality = pdqhash.compute(np.asarray(every_pixel))

    fingerprint = fingerprint_frames(load_image(data, full_size=True))[0]

    assert fingerprint.hashes == {
        "pdq": np.packbits(bits.astype(np.uint8)).tobytes().hex(),
        "phash": str(imagehash.phash(every_pixel)),
        "dhash": str(imagehash.dhash(every_pixel)),
    }
    assert fingerprint.pdq_quality == quality


def test_turns_are_the_hashes_of_the_frame_turned():
    image = photo("rocket")

    turns = fingerprint_turns(image)

    # pHash and dHash are reduced as Pillow reduces, to within a grey level or two.
    whole = fingerprint_image(image)
    assert turns[0].hashes["pdq"] == whole.hashes["pdq"]
    assert hamming(turns[0].hashes["phash"], whole.hashes["phash"]) <= 2
    assert hamming(turns[0].hashes["dhash"], whole.hashes["dhash"]) <= 2
    dihedral, _ = pdqhash.compute_dihedral(np.asarray(image))
    assert [turn.hashes["pdq"] for turn in turns] == [
        np.packbits(bits.astype(np.uint8)).tobytes().hex() for bits in dihedral
    ]
    for turn, fingerprint in zip(DIHEDRAL[1:], turns[1:], strict=True):
        turned = image.transpose(turn)
        # A turned picture's reduction is its reduction turned, but for rounding.
        phash, dhash = str(imagehash.phash(turned)), str(imagehash.dhash(turned))
        assert hamming(fingerprint.hashes["phash"], phash) <= 4
        assert hamming(fingerprint.hashes["dhash"], dhash) <= 4


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("size", [(640, 427), (384, 384), (129, 300), (65, 64), (40, 90), (4, 50)])
def test_pdq_turns_are_meta_codes_bits(name, size):
    # Sides with odd, even and one-pixel filter windows, and too few pixels to sample.
    pixels = np.asarray(photo(name).resize(size, Image.Resampling.BILINEAR))

    found, quality = pdq_turns(pixels)

    dihedral, expected = pdqhash.compute_dihedral(pixels)
    assert quality == expected
    assert [bits.tolist() for bits in found] == [bits.astype(bool).tolist() for bits in dihedral]
    first, _ = pdq_turns(pixels, 1)
    assert len(first) == 1 and first[0].tolist() == found[0].tolist()


@pytest.mark.parametrize("size", [(640, 427), (40, 90)])
def test_pdq_turns_of_a_pictures_luma_are_those_of_the_picture(size):
    pixels = np.asarray(photo("chelsea").resize(size, Image.Resampling.BILINEAR))
    # The luma rounded to grey levels where too small to sample, as pdqhash takes it.
    luma = pixels @ _LUMA if min(size) >= 64 else np.asarray(Image.fromarray(pixels).convert("L"))

    found, quality = pdq_turns(luma)

    expected, expected_quality = pdq_turns(pixels if min(size) >= 64 else np.stack([luma] * 3, 2))
    assert quality == expected_quality
    assert [bits.tolist() for bits in found] == [bits.tolist() for bits in expected]


def test_grey_levels_round_a_luma_to_the_nearest_level():
    luma = Image.fromarray(np.array([[0.4, 0.6, 1.5, 127.49, 254.7, 255.0]], np.float32))

    assert np.asarray(grey_levels(luma)).tolist() == [[0, 1, 2, 127, 255, 255]]
    assert grey_levels(photo("coffee")).tobytes() == photo("coffee").convert("L").tobytes()


def test_an_uploads_luma_hashes_as_the_upload_does():
    image = photo("chelsea").resize((384, 301), Image.Resampling.BILINEAR)
    luma = Image.fromarray((np.asarray(image) @ _LUMA).astype(np.float32))

    found = fingerprint_image(luma, exported=False)

    assert found.distance(fingerprint_image(image)) == {"phash": 0, "dhash": 0, "pdq": 0}
    with pytest.raises(ValueError, match="needs an RGB image"):
        fingerprint_image(luma)


def test_an_uploads_copy_hashes_as_a_banned_picture_does():
    image = photo("chelsea").resize((384, 301), Image.Resampling.BILINEAR)

    assert fingerprint_image(image, exported=False) == fingerprint_image(image)
