from PIL import Image

from hashes.local import LocalFeatures, local_features, verify
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
    features = local_features(photo("coffee"))
    again = LocalFeatures.from_bytes(features.to_bytes())
    assert again.size == features.size
    assert (again.descriptors == features.descriptors).all()
    assert verify(again, local_features(photo("coffee"), 1500, 1024)) is not None


def test_a_flat_picture_has_nothing_to_verify() -> None:
    flat = Image.new("RGB", (300, 200), (90, 120, 200))
    assert verify(local_features(flat), local_features(photo("coffee"), 1500, 1024)) is None
