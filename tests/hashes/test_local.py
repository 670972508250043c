import dataclasses
import io
import random

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from hashes.evaluation.edits import EDITS
from hashes.local import (
    LocalFeatures,
    Verification,
    agreement,
    fit_points,
    local_features,
    matched_pairs,
    reference_local_features,
    upload_features,
    verify,
    verify_whole,
)
from tests.hashes.descriptors import flipped
from tests.images import photo


def test_a_cropped_and_turned_copy_is_verified_with_its_geometry() -> None:
    banned = photo("astronaut")
    edited = banned.rotate(4, Image.Resampling.BICUBIC).crop((60, 0, 512, 460))
    found = verify(local_features(banned), local_features(edited, 1500, 1024))
    assert found is not None
    assert found.inliers >= 50 and abs(abs(found.rotation) - 4) < 1
    assert "matching points" in found.describe()


def test_a_copy_inside_a_larger_picture_is_located() -> None:
    banned = photo("chelsea")
    canvas = Image.new("RGB", (banned.width * 2, banned.height * 2), (240, 240, 240))
    canvas.paste(banned, (banned.width, banned.height))
    found = verify(local_features(banned), local_features(canvas, 1500, 1024))
    assert found is not None
    left, top, right, bottom = found.box
    assert abs(left - 0.5) < 0.03 and abs(top - 0.5) < 0.03
    assert abs(right - 1) < 0.03 and abs(bottom - 1) < 0.03


def test_different_photos_are_not_verified() -> None:
    names = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right"]
    features = {name: local_features(photo(name)) for name in names}
    queries = {name: local_features(photo(name), 1500, 1024) for name in names}
    for banned in names:
        for upload in names:
            if banned != upload:
                # Includes the stereo pair: two shots of one scene are different photos.
                assert verify(features[banned], queries[upload]) is None, (banned, upload)


def test_features_survive_storage() -> None:
    features = reference_local_features(photo("coffee"))
    again = LocalFeatures.from_bytes(features.to_bytes())
    assert again.size == features.size and again.scales == features.scales
    assert (again.descriptors == features.descriptors).all()
    assert verify(again, local_features(photo("coffee"), 1500, 1024)) is not None


def _pasted_small(banned: Image.Image, scale: float) -> Image.Image:
    """``banned`` at ``scale`` of its size in the corner of a plain grey canvas."""
    canvas = Image.new("RGB", banned.size, (128, 128, 128))
    small = banned.resize((round(banned.width * scale), round(banned.height * scale)))
    canvas.paste(small, (0, 0))
    return canvas


def test_a_banned_picture_keeps_a_coarser_scale_placed_in_the_same_pixels() -> None:
    banned = photo("astronaut")
    one_scale = local_features(banned)
    both = reference_local_features(banned)
    large, small = both.scales
    assert large == len(one_scale.points) and small == len(both.points) - large
    assert (both.descriptors[:large] == one_scale.descriptors).all()
    # The coarser scale's points alone place a small copy where it is.
    coarser = dataclasses.replace(
        both, points=both.points[large:], descriptors=both.descriptors[large:]
    )
    upload = local_features(_pasted_small(banned, 1 / 3), 1500, 1024, colour=True)
    found = verify(coarser, upload)
    assert found is not None
    assert found.box == pytest.approx((0, 0, 1 / 3, 1 / 3), abs=0.02)


def test_a_small_banned_picture_has_one_scale() -> None:
    small = photo("coffee").resize((200, 133))
    assert reference_local_features(small).scales == (len(local_features(small).points),)


def test_an_upload_s_mirrored_features_are_those_of_the_mirrored_picture() -> None:
    upload = photo("chelsea")
    as_is, mirror = upload_features(upload, 1500, 1024, 512)
    mirrored = mirror()
    assert (as_is.descriptors == local_features(upload, 1500, 1024, colour=True).descriptors).all()
    found = local_features(upload.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 1500, 1024)
    # The same corners, mirrored, with descriptors as a search of the mirrored copy gives.
    assert len(mirrored.points) == len(found.points)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    pairs = matcher.match(mirrored.descriptors, found.descriptors)
    close = [
        pair
        for pair in pairs
        if pair.distance <= 30
        and np.abs(mirrored.points[pair.queryIdx] - found.points[pair.trainIdx]).max() <= 1.5
    ]
    assert len(close) >= 0.8 * len(found.points)
    assert mirrored.pixels is not None and as_is.pixels is not None
    assert (mirrored.pixels == as_is.pixels[:, ::-1]).all()
    banned = reference_local_features(upload.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert verify(banned, mirrored) is not None and verify(banned, as_is) is None


def test_a_banned_picture_s_mirrored_features_are_those_of_it_mirrored() -> None:
    picture = photo("astronaut")
    features = reference_local_features(picture)
    mirrored = features.mirrored
    assert mirrored is not None and mirrored.mirrored is None
    assert mirrored.scales == features.scales and mirrored.size == features.size
    # Each scale's corners, mirrored, with the descriptors a search of the mirrored
    # picture gives them.
    width = features.size[0]
    assert np.abs(mirrored.points[:, 0] - (width - 1 - features.points[:, 0])).max() < 2
    found = reference_local_features(picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    close = [pair for pair in matcher.match(mirrored.descriptors, found.descriptors)
             if pair.distance <= 30]  # fmt: skip
    assert len(close) >= 0.8 * len(found.points)
    # Not stored: only their words are.
    assert LocalFeatures.from_bytes(features.to_bytes()).mirrored is None


def test_a_photo_of_a_screen_is_laid_over_by_a_homography() -> None:
    banned = reference_local_features(photo("coffee"))
    data = EDITS["keystone"].apply(photo("coffee"), random.Random(0), [photo("chelsea")])
    upload = local_features(Image.open(io.BytesIO(data)), 1500, 1024, colour=True)
    fit = fit_points(banned, upload)
    assert fit is not None
    # One edge narrower: no affine transform lays the banned picture over it well
    # enough, the homography refitted on its points does.
    assert not agreement(banned, upload, fit.transform).convinces()
    assert fit.overlays[0].shape == (3, 3)
    assert agreement(banned, upload, fit.overlays[0]).agreeing >= 0.95
    found = verify(banned, upload)
    assert found is not None and found.agreement is not None
    assert found.agreement.agreeing >= 0.95


def _features(descriptors: np.ndarray) -> LocalFeatures:
    points = np.zeros((len(descriptors), 2), np.float32)
    return LocalFeatures(points, descriptors, (100, 100))


def test_descriptor_pairs_are_those_every_comparison_finds_for_near_ones() -> None:
    rng = np.random.default_rng(5)
    upload = rng.integers(0, 256, (1500, 32), dtype=np.uint8)
    copied = rng.choice(1500, 300, replace=False)
    near = np.concatenate([flipped(upload[copied[:150]], 15, rng), upload[copied[150:]]])
    far = flipped(upload[rng.choice(1500, 100, replace=False)], 40, rng)
    unrelated = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    banned = np.concatenate([near, far, unrelated])
    found = dict(zip(*matched_pairs(_features(banned), _features(upload)), strict=True))
    # Every comparison, with the ratio test: the pairs it keeps within 15 bits are all
    # found, with the same partner.
    distance = np.unpackbits(banned[:, None] ^ upload[None], axis=2).sum(axis=2)
    nearest = np.sort(distance, axis=1)[:, :2]
    kept = (nearest[:, 0] <= 15) & (nearest[:, 0] < 0.8 * nearest[:, 1])
    assert kept.sum() == 300
    assert all(found.get(row) == distance[row].argmin() for row in np.flatnonzero(kept))
    # Copies 40 bits off are mostly found; unrelated descriptors are left unpaired.
    assert sum(found.get(300 + row) == distance[300 + row].argmin() for row in range(100)) >= 50
    assert not any(row >= 400 for row in found)
    nothing = _features(np.zeros((0, 32), np.uint8))
    for banned_side, upload_side in ((nothing, _features(upload)), (_features(banned), nothing)):
        assert all(len(side) == 0 for side in matched_pairs(banned_side, upload_side))


def test_a_flat_picture_has_nothing_to_verify() -> None:
    flat = Image.new("RGB", (300, 200), (90, 120, 200))
    assert verify(local_features(flat), local_features(photo("coffee"), 1500, 1024)) is None


def _window(canvas: Image.Image) -> Image.Image:
    """An app window: the same toolbar (a strip of one photo) above ``canvas``."""
    toolbar = photo("astronaut").resize((512, 160))
    window = Image.new("RGB", (512, 512))
    window.paste(toolbar, (0, 0))
    window.paste(canvas.resize((512, 352)), (0, 160))
    return window


def test_pictures_that_share_only_a_part_are_told_apart_by_their_pixels() -> None:
    banned = local_features(_window(photo("chelsea")))
    upload = local_features(_window(photo("coffee")), 1500, 1024, pixels_side=512)
    # The toolbar's points agree on one geometry, over much of the banned picture...
    fit = fit_points(banned, upload)
    assert fit is not None and fit.inliers >= 40 and fit.coverage >= 0.15
    # ...but below it, the pixels do not.
    seen = agreement(banned, upload, fit.transform)
    assert seen.overlap > 0.95 and seen.agreeing < 0.5
    assert verify(banned, upload) is None
    same = local_features(_window(photo("chelsea")), 1500, 1024, pixels_side=512)
    assert verify(banned, same) is not None


def test_features_stored_without_pixels_need_more_points() -> None:
    banned = local_features(photo("rocket"))
    older = LocalFeatures.from_bytes(dataclasses.replace(banned, pixels=None).to_bytes())
    assert older.pixels is None
    copy = local_features(photo("rocket").crop((40, 40, 480, 400)), 1500, 1024, pixels_side=512)
    found = verify(older, copy)
    assert found is not None and found.agreement is None
    assert "pixels agreeing" not in found.describe()
    assert "pixels agreeing" in verify(banned, copy).describe()


def test_a_picture_without_distinctive_points_is_compared_whole() -> None:
    # Soft blobs: ORB finds no corners to fit a geometry to, but the pixels agree.
    rng = np.random.default_rng(4)
    blobs = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize(
        (640, 480), Image.Resampling.BICUBIC
    )
    banned = local_features(blobs)
    recoloured = ImageOps.invert(blobs).resize((400, 300))
    upload = local_features(recoloured, 1500, 1024, pixels_side=512, colour=True)
    assert verify(banned, upload) is None
    found = verify_whole(banned, upload)
    assert found is not None and found.inliers == 0
    assert found.describe().startswith("the whole picture, pixels agreeing in")
    other = local_features(photo("coffee"), 1500, 1024, pixels_side=512, colour=True)
    assert verify_whole(banned, other) is None
    # A crop is not the whole picture.
    cropped = local_features(blobs.crop((0, 0, 480, 480)), 1500, 1024, pixels_side=512, colour=True)
    assert verify_whole(banned, cropped) is None


def test_a_sticker_does_not_spoil_the_colour_mix_of_a_faint_picture() -> None:
    # Faint sea and ice: a sticker's strong edges would dominate one least-squares mix of
    # the upload's channels over the whole picture, and cancel the faint detail.
    tile = photo("natural_earth_tile")
    banned = local_features(tile)
    for seed in range(4):
        stickered = Image.open(io.BytesIO(EDITS["sticker"].apply(tile, random.Random(seed), [])))
        upload = local_features(stickered, 1500, 1024, pixels_side=512, colour=True)
        found = verify_whole(banned, upload)
        assert found is not None, seed


def test_a_blank_upload_agrees_nowhere() -> None:
    banned = local_features(photo("coffee"))
    upload = local_features(photo("coffee"), 1500, 1024, pixels_side=512, colour=True)
    blank = dataclasses.replace(upload, pixels=np.zeros_like(upload.pixels))
    scale = np.array(
        [[upload.size[0] / banned.size[0], 0, 0], [0, upload.size[1] / banned.size[1], 0]]
    )
    seen = agreement(banned, blank, scale)
    assert seen.correlations and seen.agreeing == 0


@pytest.mark.parametrize("turn", list(Image.Transpose))
def test_a_box_found_in_a_turned_picture_is_placed_in_the_picture_as_it_was(turn) -> None:
    picture = Image.new("L", (200, 100))
    picture.paste(255, (30, 10, 80, 40))
    turned = picture.transpose(turn)
    left, top, right, bottom = turned.getbbox()
    width, height = turned.size
    found = Verification(
        10, 10, 1.0, 0.0, 1.0, (left / width, top / height, right / width, bottom / height)
    )

    assert found.turned_back(turn).box == pytest.approx((0.15, 0.1, 0.4, 0.4))


def _spread_one_by_one(keypoints, shape, count, grid):  # noqa: ANN001, ANN202
    """What _spread computes, a keypoint at a time."""
    height, width = shape[:2]
    cells: dict[tuple[int, int], list] = {}
    for keypoint in sorted(keypoints, key=lambda k: -k.response):
        x, y = keypoint.pt
        cell = (min(grid - 1, int(x * grid / width)), min(grid - 1, int(y * grid / height)))
        cells.setdefault(cell, []).append(keypoint)
    share = max(1, count // (grid * grid))
    chosen = [keypoint for found in cells.values() for keypoint in found[:share]]
    rest = sorted(
        (keypoint for found in cells.values() for keypoint in found[share:]),
        key=lambda k: -k.response,
    )
    return chosen + rest[: max(0, count - len(chosen))]


@pytest.mark.parametrize("seed", range(12))
def test_keypoints_are_spread_over_the_picture_strongest_first(seed: int) -> None:
    import cv2

    from hashes.local import _spread

    rng = random.Random(seed)
    width, height = rng.choice(((640, 480), (300, 900), (1024, 1024)))
    # Few distinct strengths, so that ties are common; points on cell edges and corners.
    keypoints = [
        cv2.KeyPoint(
            rng.choice((0.0, width - 1.0, width / 2, rng.uniform(0, width - 1))),
            rng.uniform(0, height - 1),
            7,
            -1,
            rng.choice((0.001, 0.002, 0.003, rng.random())),
        )
        for _ in range(rng.randint(0, 1500))
    ]
    count, grid = rng.choice(((500, 4), (1000, 8), (50, 3)))

    spread = _spread(keypoints, (height, width), count, grid)

    assert spread == _spread_one_by_one(keypoints, (height, width), count, grid)
    assert len(spread) == min(count, len(keypoints))
