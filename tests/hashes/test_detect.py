import hashlib
import io
import random
import statistics

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from hashes import detect
from hashes.algorithms import Fingerprint, distinct_frames
from hashes.detect import (
    BannedPicture,
    DetectConfig,
    Detector,
    HashRows,
    KeySet,
    Stage,
    probes,
    reference_features,
)
from hashes.evaluation.edits import EDITS
from hashes.feature_index import filed_words, indexed_words
from hashes.index import HammingIndex
from hashes.loading import DECODE_SIDE, load_image
from hashes.local import LocalFeatures, Verification, verify_whole
from hashes.matching import DEFAULT_RULE_CONFIG, MatchRule, is_low_detail
from tests.images import PHOTOS, encode, photo

RULE = MatchRule.from_config(DEFAULT_RULE_CONFIG)


def _detector(
    *names: str, config: DetectConfig | None = None, mirrored_words: bool = True
) -> Detector:
    features = {}
    pictures = {}
    for key, name in enumerate(names):
        frame, fingerprint = distinct_frames(load_image(encode(photo(name), "JPEG")))[0]
        features[key], colours = reference_features(frame)
        own, mirrored = filed_words(features[key])
        pictures[key] = BannedPicture(
            fingerprint, colours, words=own, mirrored_words=mirrored if mirrored_words else None
        )
    detector = Detector(RULE, config, lambda keys: {k: features[k] for k in keys})
    detector.add_all(pictures)
    return detector


def _detect(detector: Detector, data: bytes, *, views: bool = True) -> dict:
    """What the detector finds in the file; without ``views``, the hash stage sees only the
    whole upload, so that a copy inside it is left to the local-feature stage."""
    found = probes(load_image(data))
    for item in found if not views else ():
        item.regions, item.parts = [], []
    return detector.detect(found)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return _detector("astronaut", "coffee", "rocket")


@pytest.mark.parametrize(
    ("edit", "stage", "variant"),
    [
        ("mirror", "hash", "mirrored"),
        ("rotate_90", "hash", "turned 90°"),
        ("flip", "hash", "flipped upside down"),
        ("exif_orientation", "hash", "as is"),
        ("border", "hash", "border or letterbox"),
        ("caption_bar", "hash", "with a caption bar cut away"),
        ("animated_gif", "hash", "as is"),
        ("crop_side_20", "local features", "pixels agreeing"),
        ("rotate_5", "local features", "turned"),
        ("mirror_crop", "local features", "mirrored, "),
        ("screenshot", "hash", "% of the upload"),
        ("collage_2x2", "hash", "as one panel of a collage or screenshot (25% of the upload)"),
    ],
)
def test_edited_copies_are_found_and_explained(
    detector: Detector, edit: str, stage: str, variant: str
) -> None:
    others = [photo("chelsea"), photo("motorcycle_left")]
    data = EDITS[edit].apply(photo("astronaut"), random.Random(3), others)
    found = _detect(detector, data)
    assert list(found) == [0], found
    assert found[0].stage == stage and variant in found[0].variant


def test_a_mirrored_crop_is_verified_mirrored_and_placed_as_the_upload_shows_it(
    detector: Detector,
) -> None:
    data = EDITS["mirror_crop"].apply(photo("astronaut"), random.Random(2), [])
    # The sides the edit cut off the mirrored picture, drawn as it draws them.
    sides = random.Random(2)
    left, top, right, bottom = (sides.uniform(0.05, 0.10) for _ in range(4))
    width, height = 1 - left - right, 1 - top - bottom

    [found] = _detect(detector, data).values()

    assert found.stage == "local features" and found.turn == "mirrored"
    expected = (-left / width, -top / height, 1 + right / width, 1 + bottom / height)
    assert found.box == pytest.approx(expected, abs=0.02)


# Colours and near hashes nominate nothing here: the index of local features must.
_FEATURES_ONLY = DetectConfig(colour_candidates=0, near_pdq=0, near_phash=0)


@pytest.mark.parametrize(
    ("edit", "box"),
    # The edit's random corner, with this seed, is the bottom left.
    [("paste_corner", (0.0, 0.5, 0.5, 1.0)), ("paste_centre", (0.25, 0.25, 0.75, 0.75))],
)
def test_a_copy_pasted_into_another_picture_is_nominated_by_its_features(
    edit: str, box: tuple[float, ...]
) -> None:
    detector = _detector("astronaut", "coffee", "rocket", config=_FEATURES_ONLY)
    data = EDITS[edit].apply(photo("coffee"), random.Random(1), [photo("chelsea")])
    found = _detect(detector, data, views=False)
    assert list(found) == [1], found
    assert found[1].stage == "local features"
    assert found[1].box == pytest.approx(box, abs=0.03)


def test_a_small_copy_is_nominated_by_the_view_it_fills(monkeypatch: pytest.MonkeyPatch) -> None:
    # Neither the whole upload's keypoints nor any hash nominate here, and views match no
    # hash: only the pasted picture's view, voting with its own keypoints, can.
    monkeypatch.setattr(detect, "_PER_REGION", 0)
    detector = _detector("astronaut", "coffee", "rocket", config=_FEATURES_ONLY)
    data = EDITS["paste_corner"].apply(photo("coffee"), random.Random(1), [photo("chelsea")])
    [item] = probes(load_image(data))
    item.regions = [(view, detect._inverted(seen)) for view, seen in item.regions]
    found = detector.detect([item])
    assert list(found) == [1], found
    assert found[1].stage == "local features"
    assert found[1].box == pytest.approx((0.0, 0.5, 0.5, 1.0), abs=0.03)
    monkeypatch.setattr(detect, "_VOTING_AREA", 0.0)  # no view votes
    assert detector.detect([item]) == {}


def test_chance_near_misses_do_not_crowd_out_the_picture_the_keypoints_nominate() -> None:
    # Fifty banned pictures whose pHash is 2 bits from the crop's (their other hashes are
    # far, so the rule's veto keeps them from matching): near misses as a large blocklist
    # has by chance, nearer than the banned picture's own; their features are another's.
    picture, features = _picture("coffee")
    other = _picture("astronaut")[1]
    data = EDITS["crop_20"].apply(photo("coffee"), random.Random(3), [])
    crop = probes(load_image(data))[0].fingerprint
    rng = random.Random(4)
    pictures = {}
    for key in range(50):
        hashes = {
            "phash": f"{int(crop.hashes['phash'], 16) ^ 3 << rng.randrange(62):016x}",
            "dhash": f"{int(crop.hashes['dhash'], 16) ^ rng.getrandbits(64) | 0xFFFF:016x}",
            "pdq": f"{rng.getrandbits(256):064x}",
        }
        pictures[key] = BannedPicture(Fingerprint(hashes, 100), picture.colours)
    pictures[50] = picture
    stored = {key: features if key == 50 else other for key in pictures}
    # The crop's own pHash is 16 from its ban's: with near misses up to 12, only the
    # keypoints nominate it.
    config = DetectConfig(near_phash=12)
    detector = Detector(RULE, config, lambda keys: {key: stored[key] for key in keys})
    detector.add_all(pictures)

    found = _detect(detector, data)

    assert list(found) == [50], found
    assert found[50].stage == "local features"


@pytest.mark.parametrize(("others", "verified"), [(0, True), (1000, False)])
def test_a_near_miss_is_verified_only_when_nearer_than_chance_would_bring_one(
    others: int, verified: bool
) -> None:
    # The banned picture's stored hashes lie from the upload's as an unrelated picture's
    # may by chance: pHash 16 bits, dHash and PDQ half their bits. Alone, a near miss
    # that near is worth verifying; among 1,000 others, chance brings one in about every
    # thirty uploads. It is not in the keypoint index: only near misses nominate it.
    picture, features = _picture("coffee", words=None)
    data = encode(photo("coffee"), "JPEG")
    seen = probes(load_image(data))[0].fingerprint
    hashes = {
        "phash": _flip(seen.hashes["phash"], 16),
        "dhash": _flip(seen.hashes["dhash"], 32),
        "pdq": _flip(seen.hashes["pdq"], 128),
    }
    rng = random.Random(5)
    pictures = {0: BannedPicture(Fingerprint(hashes, 100), picture.colours)}
    for key in range(1, others + 1):
        random_hashes = {
            "phash": f"{rng.getrandbits(64):016x}",
            "dhash": f"{rng.getrandbits(64):016x}",
            "pdq": f"{rng.getrandbits(256):064x}",
        }
        pictures[key] = BannedPicture(Fingerprint(random_hashes, 100), picture.colours)
    detector = Detector(RULE, None, lambda keys: {key: features for key in keys})
    detector.add_all(pictures)

    found = _detect(detector, data)

    assert list(found) == ([0] if verified else []), found


def test_a_build_files_pictures_a_batch_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "_FILED_AT_ONCE", 2)
    detector = _detector("astronaut", "coffee", "rocket", config=_FEATURES_ONLY)
    for key, name in enumerate(("astronaut", "coffee", "rocket")):
        data = EDITS["paste_centre"].apply(photo(name), random.Random(1), [photo("chelsea")])
        assert list(_detect(detector, data, views=False)) == [key], name


@pytest.mark.parametrize("mirrored_words", [True, False])
def test_a_mirrored_crop_is_nominated_by_mirrored_words_or_the_upload_mirrored(
    mirrored_words: bool,
) -> None:
    # Pictures banned before their mirrored words were stored are found through the
    # upload mirrored; the others without computing its features unless one is nominated.
    names = ("astronaut", "coffee", "rocket")
    detector = _detector(*names, config=_FEATURES_ONLY, mirrored_words=mirrored_words)
    data = EDITS["mirror_crop"].apply(photo("rocket"), random.Random(2), [])
    found = _detect(detector, data)
    assert list(found) == [2], found
    assert found[2].stage == "local features" and found[2].turn == "mirrored"
    # An upload nominating nothing mirrored (of the few pictures here, chance nominates
    # some for most uploads: too few are filed to tell which words are common).
    innocent = probes(load_image(encode(photo("motorcycle_left"), "JPEG")))
    assert detector.detect(innocent) == {}
    assert (innocent[0]._features.get(detect._MIRRORED) is None) is mirrored_words


def test_a_picture_removed_is_not_nominated_and_one_added_is() -> None:
    detector = _detector("astronaut", "coffee", config=_FEATURES_ONLY)
    data = EDITS["paste_corner"].apply(photo("coffee"), random.Random(1), [photo("chelsea")])
    detector.remove(1)
    assert _detect(detector, data) == {}
    detector.add_all({1: _picture("coffee")[0]})
    assert list(_detect(detector, data, views=False)) == [1]


def test_a_recoloured_crop_is_found_by_its_pixels(detector: Detector) -> None:
    # Hue turned and cropped: every hash moves, and so does the grey of each pixel; the
    # upload's colour channels, mixed to fit, still give the banned picture's detail.
    edited = Image.open(io.BytesIO(EDITS["hue_shift"].apply(photo("coffee"), random.Random(1), [])))
    data = EDITS["crop_side_20"].apply(edited.convert("RGB"), random.Random(2), [])
    found = _detect(detector, data)
    assert list(found) == [1], found
    assert found[1].stage == "local features" and "pixels agreeing" in found[1].variant


def test_a_smooth_picture_in_negative_is_compared_whole() -> None:
    rng = np.random.default_rng(4)
    blobs = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize(
        (640, 480), Image.Resampling.BICUBIC
    )
    frame, fingerprint = distinct_frames(load_image(encode(blobs, "PNG")))[0]
    assert not is_low_detail(fingerprint, RULE.pdq_min_quality)
    features, colours = reference_features(frame)
    detector = Detector(RULE, None, lambda keys: {0: features})
    detector.add_all({0: BannedPicture(fingerprint, colours)})
    # In negative every hash is turned around, and ORB finds no corners to fit.
    data = EDITS["sticker"].apply(ImageOps.invert(blobs), random.Random(1), [])
    found = _detect(detector, data)
    assert list(found) == [0], found
    assert found[0].rule == "pixel comparison"
    assert found[0].variant.startswith("the whole picture, pixels agreeing in")
    assert _detect(detector, encode(photo("coffee"), "JPEG")) == {}


def test_only_pictures_whose_hashes_are_near_are_laid_over_the_whole_upload(
    detector: Detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    laid: list[LocalFeatures] = []

    def spy(banned: LocalFeatures, upload: LocalFeatures, agreeing: float) -> Verification | None:
        laid.append(banned)
        return verify_whole(banned, upload, agreeing)

    monkeypatch.setattr(detect, "verify_whole", spy)
    # Every banned picture is a candidate by colour, none is near by its hashes.
    item = probes(load_image(encode(photo("chelsea"), "JPEG")))
    assert not any(detector._near.match(item[0].fingerprint))
    assert detector.detect(item) == {} and laid == []
    # A negative's hashes are all but opposite: it is laid over.
    negative = encode(ImageOps.invert(photo("coffee")), "JPEG")
    _detect(detector, negative)
    assert len(laid) == 1


def test_distinct_photos_and_their_edits_match_nothing(detector: Detector) -> None:
    innocent = [name for name in PHOTOS if name not in ("astronaut", "coffee", "rocket")]
    for name in innocent:
        for edit in ("original", "mirror", "crop_side_20", "border", "collage_2x2"):
            data = EDITS[edit].apply(photo(name), random.Random(1), [photo("chelsea")])
            assert _detect(detector, data) == {}, (name, edit)


def test_local_features_can_be_switched_off() -> None:
    detector = _detector("astronaut", config=DetectConfig(local_features=False))
    data = EDITS["crop_side_20"].apply(photo("astronaut"), random.Random(3), [])
    assert _detect(detector, data) == {}


def _gradient() -> Image.Image:
    return ImageOps.colorize(
        Image.linear_gradient("L").resize((400, 300)), (40, 40, 90), (200, 210, 255)
    )


def test_a_plain_banned_picture_is_never_matched_fuzzily() -> None:
    gradient = _gradient()
    frame, fingerprint = distinct_frames(load_image(encode(gradient, "PNG")))[0]
    assert is_low_detail(fingerprint, RULE.pdq_min_quality)
    features, colours = reference_features(frame)
    detector = Detector(RULE, None, lambda keys: {0: features})
    detector.add_all({0: BannedPicture(fingerprint, colours)})
    # Another smooth image, and the gradient itself recompressed: neither is matched.
    other = ImageOps.colorize(Image.radial_gradient("L").resize((400, 300)), "navy", "white")
    assert _detect(detector, encode(other, "JPEG")) == {}
    assert _detect(detector, encode(gradient, "JPEG", quality=60)) == {}


@pytest.mark.parametrize(
    ("hashes", "plain"),
    [
        ({"dhash": "0000000000000000"}, True),
        ({"phash": "8000000000000000"}, True),
        ({"pdq": "0" * 64}, True),
        ({"phash": "c2924c5532bddfc8"}, False),
        ({"dhash": "cd8dd91d897293a7", "phash": "c2924c5532bddfc8"}, False),
    ],
)
def test_pasted_hashes_of_plain_pictures_are_recognised(hashes: dict, plain: bool) -> None:
    assert is_low_detail(Fingerprint(hashes), 50) is plain


@pytest.mark.parametrize(
    "config",
    [
        {"region_pdq": 300},
        {"near_phash": -1},
        {"local_features": "yes"},
        {"pixel_agreement": 0.3},
        {"pixel_agreement": "most"},
        {"radius": 3},
        [1],
    ],
)
def test_bad_detection_settings_are_refused(config: object) -> None:
    with pytest.raises(ValueError):
        DetectConfig.from_config(config)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [(8, 8), (9, 2000), (3000, 12), (64, 64)])
def test_tiny_and_extreme_shapes_are_checked_without_error(detector: Detector, size) -> None:
    image = photo("chelsea").resize(size)
    assert _detect(detector, encode(image, "PNG")) == {}


def test_a_copy_with_its_hues_turned_is_nominated_by_its_turned_colours() -> None:
    # Colour alone nominates candidates here: two for the upload, one for it with its hues
    # turned, and only the nearest is verified. With its channels swapped (hues turned a
    # third of the way round), the coffee cup's colours are nearest those of the other
    # banned photos; turned back, they are nearer still to its own.
    config = DetectConfig(colour_candidates=2, near_pdq=0, near_phash=0, max_candidates=1)
    detector = _detector("astronaut", "chelsea", "coffee", "rocket", config=config)
    pixels = np.asarray(photo("coffee"), dtype=np.uint8)
    turned = Image.fromarray(pixels[..., [2, 0, 1]]).crop((0, 0, 260, 213))
    data = encode(turned, "JPEG")
    probed = _detect(detector, data)
    assert list(probed) == [2], probed
    assert probed[2].stage == "local features"


def test_an_exact_copy_does_not_stand_in_for_the_other_stages() -> None:
    """A file banned by its bytes alone (too plain, say) and a picture that only the
    local-feature stage finds in it: both are reported, since a moderator may have let the
    exact copy pass."""
    cropped = EDITS["crop_side_20"].apply(photo("astronaut"), random.Random(3), [])
    detector = _detector("astronaut")
    exact = hashlib.sha256(cropped).hexdigest()
    detector.add_all({7: BannedPicture(Fingerprint(hashes={}), None, exact)})

    found = detector.detect(probes(load_image(cropped)), exact)

    assert found[7].stage == Stage.EXACT
    assert found[0].stage == Stage.LOCAL


def _picture(name: str, **options: object) -> tuple[BannedPicture, object]:
    frame, fingerprint = distinct_frames(load_image(encode(photo(name), "JPEG")))[0]
    features, colours = reference_features(frame)
    options.setdefault("words", indexed_words(features))
    return BannedPicture(fingerprint, colours, **options), features  # type: ignore[arg-type]


def _flip(code: str, bits: int) -> str:
    """``code`` (hex) with its first ``bits`` bits turned."""
    width = len(code) * 4
    return f"{int(code, 16) ^ (((1 << bits) - 1) << (width - bits)):0{len(code)}x}"


def _flip_pdq(fingerprint: Fingerprint, bits: int) -> Fingerprint:
    return Fingerprint(hashes={"pdq": _flip(fingerprint.hashes["pdq"], bits)}, pdq_quality=100)


def _collage(*names: str) -> bytes:
    canvas = Image.new("RGB", (640, 640), "white")
    for index, name in enumerate(names):
        canvas.paste(photo(name).resize((316, 316)), (index % 2 * 324, index // 2 * 324))
    return encode(canvas, "JPEG", quality=90)


def test_a_known_good_picture_voids_the_same_picture_banned_elsewhere() -> None:
    banned, features = _picture("astronaut")
    allowed, _ = _picture("astronaut", allow=True)
    detector = Detector(RULE, None, lambda keys: {0: features})
    detector.add_all({0: banned, 1: allowed})

    found = _detect(detector, encode(photo("astronaut").resize((400, 400)), "JPEG"))

    assert set(found) == {0, 1} and not found[1].partial
    assert detector.voided(found) == {0}
    assert detector.is_allowed(1) and not detector.is_allowed(0)


def test_a_known_good_picture_beside_a_banned_one_voids_nothing() -> None:
    """The site's logo pasted beside a banned picture must not let the banned one pass."""
    banned, features = _picture("coffee")
    allowed, _ = _picture("astronaut", allow=True)
    detector = Detector(RULE, None, lambda keys: {0: features})
    detector.add_all({0: banned, 1: allowed})

    found = _detect(detector, _collage("astronaut", "coffee", "rocket", "chelsea"))

    assert 0 in found and found[0].partial
    assert detector.voided(found) == frozenset()


def test_a_banned_picture_pasted_inside_a_known_good_one_is_still_found() -> None:
    """The known-good picture matches the whole upload; the local-feature stage must still
    look for, and count, the banned picture inside it."""
    banned, features = _picture("coffee")
    allowed, _ = _picture("astronaut", allow=True)
    detector = Detector(RULE, None, lambda keys: {0: features})
    detector.add_all({0: banned, 1: allowed})
    canvas = photo("astronaut").resize((512, 512))
    canvas.paste(photo("coffee").resize((200, 134)), (290, 360))

    found = _detect(detector, encode(canvas, "JPEG", quality=90), views=False)

    assert found[1].stage == Stage.HASH and not found[1].partial, found
    assert found[0].stage == Stage.LOCAL and found[0].partial
    assert detector.voided(found) == frozenset()


def test_a_known_good_frame_does_not_void_a_banned_frame() -> None:
    banned, features = _picture("coffee")
    allowed, _ = _picture("astronaut", allow=True)
    detector = Detector(RULE, None, lambda keys: {0: features})
    detector.add_all({0: banned, 1: allowed})
    frames = [photo("astronaut").resize((300, 300)), photo("coffee").resize((300, 300))]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=[100, 5000])

    found = _detect(detector, gif)

    assert found[1].frame != found[0].frame
    assert detector.voided(found) == frozenset()


def test_a_known_good_file_byte_for_byte_voids_every_match() -> None:
    data = encode(photo("coffee"), "JPEG")
    banned, features = _picture("coffee")
    exact = hashlib.sha256(data).hexdigest()
    detector = Detector(RULE, None, lambda keys: {0: features})
    detector.add_all({0: banned, 1: BannedPicture(Fingerprint(hashes={}), None, exact, allow=True)})

    found = detector.detect(probes(load_image(data)), exact)

    assert found[1].stage == Stage.EXACT and detector.voided(found) == {0}


def test_a_known_good_picture_s_limits_only_tighten_the_rule() -> None:
    _, fingerprint = distinct_frames(load_image(encode(photo("rocket"), "JPEG")))[0]
    pasted = Fingerprint(hashes={"pdq": fingerprint.hashes["pdq"]}, pdq_quality=100)
    detector = Detector(RULE)
    detector.add_all({1: BannedPicture(pasted, limits=(("pdq", 120),), allow=True)})
    far = _flip_pdq(pasted, 60)
    assert detector.lookup(far) == []
    assert RULE.with_limits({"phash": 10}, tighten=True).groups[3] == {"phash": 2}


def test_a_file_banned_by_its_bytes_in_an_allow_bank_only_is_not_banned() -> None:
    detector = Detector(RULE)
    detector.add_all({3: BannedPicture(Fingerprint(hashes={}), None, "ab" * 32, allow=True)})
    assert not detector.bans_file("ab" * 32)
    detector.add_all({4: BannedPicture(Fingerprint(hashes={}), None, "cd" * 32)})
    assert detector.bans_file("cd" * 32)


def test_a_picture_s_own_limits_take_the_place_of_the_rule_s() -> None:
    _, fingerprint = distinct_frames(load_image(encode(photo("rocket"), "JPEG")))[0]
    pasted = Fingerprint(hashes={"pdq": fingerprint.hashes["pdq"]}, pdq_quality=100)
    detector = Detector(RULE)
    detector.add_all(
        {
            0: BannedPicture(pasted),
            1: BannedPicture(pasted, limits=(("pdq", 0),)),
            2: BannedPicture(pasted, limits=(("pdq", 120),)),
        }
    )
    resized = _detect(detector, encode(photo("rocket").resize((150, 130)), "JPEG", quality=60))
    assert 0 in resized and 2 in resized and 1 not in resized
    assert resized[0].distances["pdq"] > 0
    assert RULE.with_limits({"pdq": 20}).groups[0] == {"pdq": 20}
    assert RULE.with_limits({}) is RULE


def test_each_hash_of_an_upload_is_looked_up_once_for_every_group_of_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, fingerprint = distinct_frames(load_image(encode(photo("rocket"), "JPEG")))[0]
    pasted = Fingerprint(hashes={"pdq": fingerprint.hashes["pdq"]}, pdq_quality=100)
    grouped = {
        0: BannedPicture(pasted),
        1: BannedPicture(pasted, limits=(("pdq", 0),)),
        2: BannedPicture(pasted, limits=(("pdq", 40),)),
        3: BannedPicture(_flip_pdq(pasted, 100), limits=(("pdq", 20),), allow=True),
    }
    lookups: list[str] = []
    search = HammingIndex.search_many

    def counted(index: HammingIndex, codes: list[str], radius: int) -> list:
        lookups.extend(codes)
        return search(index, codes, radius)

    monkeypatch.setattr(HammingIndex, "search_many", counted)
    upload = probes(load_image(encode(photo("rocket").resize((150, 130)), "JPEG", quality=60)))
    found, searched = {}, {}
    for name, pictures in (("one group", {0: grouped[0]}), ("four", grouped)):
        detector = Detector(RULE)
        detector.add_all(pictures)
        lookups.clear()
        found[name] = detector.detect(upload)
        searched[name] = len(lookups)

    # Four groups, four times the matchers: the same lookups, each at the largest radius.
    assert searched["four"] == searched["one group"] == len(set(lookups))
    assert set(found["four"]) == {0, 2}


def test_an_upload_is_checked_against_a_blocklist_emptied_by_removes() -> None:
    detector = Detector(RULE)
    detector.add_all({1: _picture("coffee")[0]})
    detector.remove(1)
    # Framed: its view (the picture inside the frame) is searched too.
    framed = ImageOps.expand(photo("coffee"), 40, fill="white")
    assert _detect(detector, encode(framed, "JPEG")) == {}


def test_pictures_are_removed_and_replaced_in_place() -> None:
    pictures = {
        key: _picture(name)[0] for key, name in enumerate(("astronaut", "coffee", "rocket"))
    }
    detector = Detector(RULE)
    detector.add_all(pictures)
    coffee = encode(photo("coffee").resize((300, 200)), "JPEG")
    assert set(_detect(detector, coffee)) == {1}

    detector.remove(1)
    detector.remove(1)  # twice is nothing
    assert _detect(detector, coffee) == {} and len(detector) == 2
    rocket = encode(photo("rocket").resize((300, 200)), "JPEG")
    assert set(_detect(detector, rocket)) == {2}  # the row moved into the freed one

    detector.add_all({2: pictures[1]})  # key 2 now bans the coffee picture
    assert set(_detect(detector, coffee)) == {2} and _detect(detector, rocket) == {}
    assert len(detector) == 2


def _camera_sized(name: str, width: int = 4200) -> Image.Image:
    image = photo(name)
    size = (width, round(width * image.height / image.width))
    return image.resize(size, Image.Resampling.LANCZOS)


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_a_large_jpeg_upload_decoded_reduced_matches_its_full_resolution_ban(name) -> None:
    big = _camera_sized(name)
    data = encode(big, "JPEG", quality=90)
    # Banned as the moderators' path bans it: every pixel decoded and hashed.
    frame, fingerprint = distinct_frames(load_image(data, full_size=True))[0]
    features, colours = reference_features(frame)
    detector = Detector(RULE, None, lambda keys: {0: features})
    detector.add_all({0: BannedPicture(fingerprint, colours)})
    smaller = encode(big.resize((3000, round(3000 * big.height / big.width))), "JPEG", quality=80)

    for upload in (data, smaller):
        loaded = load_image(upload)
        assert max(loaded.frames[0].size) < 2 * DECODE_SIDE < max(loaded.width, loaded.height)
        found = detector.detect(probes(loaded))  # no digest given: the hashes must match
        assert list(found) == [0] and found[0].stage == Stage.HASH, found
        assert found[0].turn == "as_is" and not found[0].partial
        assert found[0].distances["pdq"] < 16 and found[0].distances["dhash"] <= 1


def test_frames_whose_hashes_all_repeat_are_probed_once() -> None:
    first = photo("astronaut")
    # One pixel changed: another frame to the loader, the same picture to every hash.
    touched = first.copy()
    touched.putpixel((5, 5), (0, 0, 0))
    data = encode(first, "PNG", save_all=True, append_images=[touched, photo("rocket")])
    loaded = load_image(data)
    assert len(loaded.frames) == 3

    checked = probes(loaded)

    assert len(checked) == 2
    assert checked[1].regions == []  # views are looked for in the first frame only
    assert checked[1].fingerprint.distance(checked[0].fingerprint)["pdq"] > 64


def _code(rng: random.Random, bits: int, ones: int | None = None) -> str:
    """A random code, or one with exactly ``ones`` bits set."""
    value = (
        rng.getrandbits(bits)
        if ones is None
        else sum(1 << i for i in rng.sample(range(bits), ones))
    )
    return f"{value:0{bits // 4}x}"


def test_hash_rows_are_banned_as_the_same_pictures_added_one_by_one() -> None:
    """A build's column path holds what ``add_all`` holds: which pictures are too plain to
    match fuzzily (at each edge of the rules), their fingerprints, groups and matches."""
    rng = random.Random(11)
    rule = MatchRule.from_config(DEFAULT_RULE_CONFIG)
    short = (8, 7, 56, 57, None, None)  # balanced from 8 to 56 bits of 64
    long = (32, 31, 224, 225, None, None)  # and from 32 to 224 of 256
    qualities = (None, 0, 49, 50, 100)
    banks: dict[tuple[tuple[str, int], ...], list[tuple[int, dict[str, str], int | None]]] = {
        (): [],
        (("pdq", 45), ("phash", 4)): [],
    }
    for key in range(1, 1501):
        names = rng.choice(
            (("pdq",), ("phash",), ("dhash",), ("phash", "dhash"), ("pdq", "phash", "dhash"))
        )
        hashes = {
            name: _code(rng, 256, rng.choice(long))
            if name == "pdq"
            else _code(rng, 64, rng.choice(short))
            for name in names
        }
        # A quality without a PDQ hash, as a list may give it, rates nothing.
        banks[rng.choice(list(banks))].append((key, hashes, rng.choice(qualities)))
    one_by_one, columns = Detector(rule), Detector(rule)
    for limits, rows in banks.items():
        one_by_one.add_all(
            {
                key: BannedPicture(
                    Fingerprint(hashes, quality if "pdq" in hashes else None), limits=limits
                )
                for key, hashes, quality in rows
            }
        )
        half = len(rows) // 2
        columns.add_hash_rows(
            (
                HashRows.from_hex(
                    [key for key, _, _ in part],
                    {
                        name: [hashes.get(name, "") for _, hashes, _ in part]
                        for name in ("pdq", "phash", "dhash")
                    },
                    [quality for _, _, quality in part],
                )
                for part in (rows[:half], rows[half:])
            ),
            limits,
        )

    assert 0 < len(columns) == len(one_by_one) < 1500  # some are too plain
    for rows in banks.values():
        for key, hashes, _ in rows:
            fingerprint = one_by_one.fingerprint(key)
            assert columns.fingerprint(key) == fingerprint
            near = {
                name: f"{int(code, 16) ^ 0b1011:0{len(code)}x}" for name, code in hashes.items()
            }
            for query in (fingerprint, Fingerprint(near, 100)):
                assert columns.lookup(query) == one_by_one.lookup(query)


def _smooth_picture(width: int = 640, height: int = 480) -> Image.Image:
    """Large soft shapes of colour: a wallpaper with next to no corners for keypoints."""
    picture = Image.new("RGB", (width, height), (40, 70, 120))
    draw = ImageDraw.Draw(picture)
    shapes = random.Random(5)
    for _ in range(7):
        x, y = shapes.randrange(width), shapes.randrange(height)
        radius = shapes.randrange(height // 6, height // 2)
        colour = tuple(shapes.randrange(256) for _ in range(3))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    return picture.filter(ImageFilter.GaussianBlur(14))


def test_a_smooth_picture_pasted_in_the_middle_of_a_photo_is_found_by_its_inset() -> None:
    smooth = _smooth_picture()
    frame, fingerprint = distinct_frames(load_image(encode(smooth, "PNG")))[0]
    features, colours = reference_features(frame)
    detector = Detector(RULE, None, lambda keys: {0: features})
    detector.add_all({0: BannedPicture(fingerprint, colours, words=indexed_words(features))})
    canvas = photo("chelsea").resize((640, 480))
    canvas.paste(smooth.resize((320, 240)), (160, 120))

    found = _detect(detector, encode(canvas, "JPEG", quality=90))

    assert list(found) == [0], found
    assert found[0].stage == Stage.HASH and found[0].partial
    assert "inside the upload" in found[0].variant
    assert found[0].box == pytest.approx((0.25, 0.25, 0.75, 0.75), abs=0.02)


@pytest.mark.parametrize(("phash_bits", "dhash_bits", "found"), [(4, 4, True), (0, 5, False)])
def test_a_view_matches_by_phash_and_dhash_together_when_its_pdq_is_too_far(
    phash_bits: int, dhash_bits: int, found: bool
) -> None:
    canvas = photo("chelsea").resize((640, 480))
    canvas.paste(photo("rocket").resize((320, 240)), (320, 0))
    data = encode(canvas, "JPEG", quality=90)
    [item] = probes(load_image(data))
    view, seen = next(region for region in item.regions if region[0].name == "inset_1")
    banned = Fingerprint(
        hashes={
            "pdq": _flip(seen.hashes["pdq"], 40),
            "phash": _flip(seen.hashes["phash"], phash_bits),
            "dhash": _flip(seen.hashes["dhash"], dhash_bits),
        },
        pdq_quality=100,
    )
    detector = Detector(RULE, DetectConfig(local_features=False))
    detector.add_all({0: BannedPicture(banned)})

    detected = detector.detect([item])

    assert bool(detected) is found, detected
    if found:
        assert detected[0].stage == Stage.HASH and detected[0].box == view.box


def test_a_view_is_hashed_near_the_full_resolution_hash_of_the_picture_it_shows() -> None:
    # PDQ's box filter is off centre on an even window (a 256-pixel copy): views hashed
    # there lay a median 16 bits from these pictures' bans; at VIEW_HASH_SIDE, 4.
    distances = []
    for name in PHOTOS:
        picture = photo(name)
        picture = picture.resize((1200, round(1200 * picture.height / picture.width)))
        ban = distinct_frames(load_image(encode(picture, "JPEG", quality=95), full_size=True))
        bar = picture.height // 6
        canvas = Image.new("RGB", (picture.width, picture.height + bar), "white")
        canvas.paste(picture, (0, bar))
        ImageDraw.Draw(canvas).text((20, bar // 3), "the caption of a shared picture", fill="black")

        [item] = probes(load_image(encode(canvas, "JPEG", quality=90)))

        [seen] = [hashes for view, hashes in item.regions if view.name == "trim_caption"]
        distances.append(seen.distance(ban[0][1])["pdq"])
    assert statistics.median(distances) <= 8, distances


def test_files_banned_by_digest_are_packed_by_a_build_and_followed_after(tmp_path) -> None:
    """A build's digests are packed into arrays (shared when the detector is mapped from a
    file); digests added and removed since are found or gone as the packed ones are."""
    from hashes import snapshot

    def md5(n: int) -> str:
        return hashlib.md5(str(n).encode()).hexdigest()

    def sha(n: int) -> str:
        return hashlib.sha256(str(n).encode()).hexdigest()

    built = Detector(MatchRule.from_config(DEFAULT_RULE_CONFIG))
    built.add_all(
        {
            1: BannedPicture(Fingerprint({}), md5=md5(1)),
            2: BannedPicture(Fingerprint({}), sha256=sha(2), md5=md5(2)),
            3: BannedPicture(Fingerprint({}), md5=md5(1)),  # the same list entry, twice
            4: BannedPicture(Fingerprint({}), sha256=sha(4), allow=True),
        }
    )
    snapshot.save(built, tmp_path / "detector")
    detector = snapshot.load(tmp_path / "detector")
    assert isinstance(detector, Detector) and not detector.is_empty()
    assert sorted(detector.files(md5(1))) == [1, 3] and detector.files(sha(2)) == [2]
    assert detector.bans_file(sha(2)) and detector.bans_file("", md5(2))
    assert not detector.bans_file(sha(4)) and not detector.bans_file(md5(9))
    assert detector.fingerprint(2) == Fingerprint({}) and detector.fingerprint(9) is None

    detector.remove(1)
    detector.add_all({5: BannedPicture(Fingerprint({}), md5=md5(1))})
    detector.add_all({2: BannedPicture(Fingerprint({}), sha256=sha(7))})  # replaced
    assert sorted(detector.files(md5(1))) == [3, 5]
    assert detector.files(sha(2)) == [] and detector.files(md5(2)) == []
    assert detector.files(sha(7)) == [2] and detector.fingerprint(1) is None
    for key in (2, 3, 4, 5):
        detector.remove(key)
    assert detector.is_empty() and detector.files(md5(1)) == []
    assert sorted(built.files(md5(1))) == [1, 3]  # the saved one is as it was


def test_a_key_set_is_an_array_with_changes_of_its_own() -> None:
    keys = KeySet([5, 3, 9])
    keys.add(4)
    keys.discard(9)
    keys.discard(4)
    keys.add(7)
    keys.discard(3)
    keys.add(3)
    assert [key for key in (3, 4, 5, 7, 9, 11) if key in keys] == [3, 5, 7]
    assert sorted(keys) == [3, 5, 7] and len(keys) == 3 and "5" not in keys
