import dataclasses
import random

import numpy as np
import pytest
from PIL import Image

from hashes import feature_index
from hashes.detect import probe
from hashes.evaluation.edits import EDITS
from hashes.feature_index import (
    INDEXED,
    MIN_VOTES,
    WORD_TABLES,
    FeatureIndex,
    filed_words,
    indexed_words,
    words,
    words_from_bytes,
    words_to_bytes,
)
from hashes.loading import load_image
from hashes.local import LocalFeatures, local_features, reference_local_features
from tests.hashes.descriptors import flipped
from tests.images import photo


def test_near_descriptors_share_a_word_and_unrelated_ones_do_not() -> None:
    rng = np.random.default_rng(1)
    descriptors = rng.integers(0, 256, (2000, 32), dtype=np.uint8)
    near = flipped(descriptors, 10, rng)
    unrelated = rng.integers(0, 256, (2000, 32), dtype=np.uint8)

    def shared(a: np.ndarray, b: np.ndarray) -> float:
        return float((words(a) == words(b)).any(axis=0).mean())

    assert words(descriptors).shape == (WORD_TABLES, 2000)
    assert shared(descriptors, descriptors) == 1.0
    assert shared(descriptors, near) > 0.4
    assert shared(descriptors, unrelated) < 0.001


def test_words_survive_storage() -> None:
    found = indexed_words(reference_local_features(photo("coffee")))
    assert (words_from_bytes(words_to_bytes(found)) == found).all()  # type: ignore[operator]
    assert words_from_bytes(b"\x01\x02\x03\x04") is None


def test_the_strongest_descriptors_of_each_scale_are_filed() -> None:
    features = reference_local_features(photo("astronaut"))
    large, small = features.scales
    assert large > INDEXED and small > 0
    found = indexed_words(features)
    chosen = np.concatenate(
        [features.descriptors[:INDEXED], features.descriptors[large:][:INDEXED]]
    )
    assert (found == words(chosen)).all()


def _pasted(banned: Image.Image, around: Image.Image, scale: float) -> Image.Image:
    canvas = around.resize(banned.size)
    canvas.paste(banned.resize((round(banned.width * scale), round(banned.height * scale))))
    return canvas


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_a_small_copy_is_nominated_by_its_coarser_scale(name: str) -> None:
    # A large picture: a copy at a third of its size inside another picture shares few
    # words with its finer scale alone.
    banned = photo(name).resize((photo(name).width * 4, photo(name).height * 4))
    around = photo("motorcycle_right")
    upload = local_features(_pasted(banned, around, 1 / 3), 1500, 1024, colour=True)
    both = reference_local_features(banned)
    finer = dataclasses.replace(local_features(banned), scales=())
    for features, nominated in ((both, True), (finer, False)):
        index = FeatureIndex()
        index.add_many([(7, indexed_words(features), None)])
        assert ((7, 0) in _nominated(index, [upload], 1)) is nominated


def test_a_mirrored_copy_votes_for_the_picture_s_mirrored_words() -> None:
    features = reference_local_features(photo("astronaut"))
    data = EDITS["mirror_crop"].apply(photo("astronaut"), random.Random(2), [])
    item = probe(load_image(data).frames[0].convert("RGB"))
    filed = FeatureIndex()
    filed.add_many([(7, *filed_words(features))])
    assert filed.mirrors_all
    assert (7, 1) in _nominated(filed, [item.features()], 2)
    # Filed without them (stored before they were), only the upload mirrored finds it; its
    # votes for the mirrored words of a picture are votes for the picture as it is.
    older = FeatureIndex()
    older.add_many([(7, indexed_words(features), None)])
    assert not older.mirrors_all
    assert (7, 1) not in _nominated(older, [item.features()], 2)
    both = [item.features(), item.features(mirrored=True)]
    assert (7, 1) in _nominated(older, both, 2)
    assert (7, 0) in _nominated(filed, [item.features(mirrored=True)], 2)


def test_whether_every_picture_is_filed_mirrored_follows_adds_and_removes() -> None:
    rng = np.random.default_rng(7)
    own, mirrored = (words(rng.integers(0, 256, (40, 32), dtype=np.uint8)) for _ in range(2))
    index = FeatureIndex()
    index.add_many([(1, own, None), (2, own, mirrored)])
    assert not index.mirrors_all
    index.remove(1)
    assert index.mirrors_all
    index.add_many([(2, own, None)])  # filed anew, without
    assert not index.mirrors_all
    index.add_many([(2, own, mirrored)])
    assert index.mirrors_all


def _nominated(
    index: FeatureIndex, uploads: list[LocalFeatures], per_region: int
) -> list[tuple[int, int]]:
    """(key, which upload) of the pictures nominated, wherever in the uploads."""
    return [(key, which) for key, which, _ in index.nominate(uploads, per_region)]


def _random_upload(
    pictures: dict[int, np.ndarray], key: int, rng: np.random.Generator
) -> LocalFeatures:
    """An upload whose top-left quarter holds near copies of one picture's descriptors,
    and whose rest holds noise."""
    own = flipped(pictures[key], 8, rng)
    noise = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    points = np.concatenate(
        [rng.uniform(0, 50, (len(own), 2)), rng.uniform(0, 100, (len(noise), 2))]
    ).astype(np.float32)
    return LocalFeatures(points, np.concatenate([own, noise]), (100, 100))


def test_the_picture_a_region_shows_is_nominated_and_noise_nominates_nothing() -> None:
    rng = np.random.default_rng(2)
    pictures = {key: rng.integers(0, 256, (120, 32), dtype=np.uint8) for key in range(50)}
    index = FeatureIndex()
    index.add_many((key, words(descriptors), None) for key, descriptors in pictures.items())

    # Its descriptors lie in the top-left quarter: it wins there, over the whole, and in
    # the centre, which takes a quarter of that quarter; not in the other quarters.
    whole, top_left, centre = (0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)
    found = index.nominate([_random_upload(pictures, 17, rng)], 2)
    assert found == [(17, 0, [whole, top_left, centre])]
    mirrored = _random_upload(pictures, 23, rng)
    found = _nominated(index, [_random_upload(pictures, 17, rng), mirrored], 1)
    assert found == [(17, 0), (23, 1)]
    noise = LocalFeatures(
        rng.uniform(0, 100, (1500, 2)).astype(np.float32),
        rng.integers(0, 256, (1500, 32), dtype=np.uint8),
        (100, 100),
    )
    assert index.nominate([noise], 3) == []


def test_a_word_many_pictures_share_does_not_vote() -> None:
    rng = np.random.default_rng(3)
    common = rng.integers(0, 256, (1, 32), dtype=np.uint8).repeat(MIN_VOTES * 2, axis=0)
    index = FeatureIndex()
    # Every picture holds the same flat-patch descriptor, more often than a copy's votes.
    index.add_many((key, words(common), None) for key in range(feature_index._COMMON + 1))
    upload = LocalFeatures(np.full((len(common), 2), 10, np.float32), common, (100, 100))
    assert index.nominate([upload], 5) == []


def test_a_word_the_upload_repeats_votes_once() -> None:
    rng = np.random.default_rng(6)
    pattern = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    # A picture holding the corner of a pattern once, among its own corners.
    held = np.concatenate([pattern, rng.integers(0, 256, (40, 32), dtype=np.uint8)])
    index = FeatureIndex()
    index.add_many([(1, words(held), None)])
    # An upload of that pattern repeated: all its corners' descriptors alike.
    repeats = pattern.repeat(MIN_VOTES * 4, axis=0)
    upload = LocalFeatures(rng.uniform(0, 100, (len(repeats), 2)).astype(np.float32),
                           repeats, (100, 100))  # fmt: skip
    assert index.nominate([upload], 5) == []
    # Its own distinct corners still vote each.
    copy = LocalFeatures(rng.uniform(0, 100, (len(held), 2)).astype(np.float32), held, (100, 100))
    assert _nominated(index, [copy], 5) == [(1, 0)]


# A directory of buckets of words, searched, and one of every word (see _directory_bits).
DIRECTORIES = (16, 20, 24)


@pytest.mark.parametrize("bits", DIRECTORIES)
def test_adds_and_removes_in_place_nominate_as_a_build_of_the_same_pictures(
    monkeypatch: pytest.MonkeyPatch, bits: int
) -> None:
    monkeypatch.setattr(feature_index, "_directory_bits", lambda entries: bits)
    # Small enough that the recent run is merged, and removed entries dropped, often.
    monkeypatch.setattr(feature_index, "_RECENT", 500)
    monkeypatch.setattr(feature_index, "_DEAD", 5)
    rng = np.random.default_rng(4)
    pictures = {key: rng.integers(0, 256, (40, 32), dtype=np.uint8) for key in range(200)}
    # Every other picture with the words of it mirrored as well.
    turned = {key: rng.integers(0, 256, (40, 32), dtype=np.uint8) for key in range(0, 200, 2)}

    def filed(key: int) -> tuple[int, np.ndarray, np.ndarray | None]:
        return key, words(pictures[key]), words(turned[key]) if key in turned else None

    live = FeatureIndex()
    live.add_many(filed(key) for key in range(100))
    for key in range(100, 200):
        live.add_many([filed(key)])
        if key % 3 == 0:
            live.remove(key - 90)
    for key in range(40, 60):  # refiled under other words
        pictures[key] = rng.integers(0, 256, (40, 32), dtype=np.uint8)
        live.add_many([filed(key)])
    live.remove(12345)  # not held: ignored
    held = [key for key in pictures if key in live]
    built = FeatureIndex()
    built.add_many(filed(key) for key in held)

    # 33 removed (12, 15 ... 108), of which 6 (42 ... 57) filed again.
    assert len(live) == len(built) == len(held) == 200 - 33 + 6
    for key in range(200):
        upload = _random_upload(pictures, key, rng)
        nominated = _nominated(live, [upload], 3)
        assert nominated == _nominated(built, [upload], 3)
        assert ((key, 0) in nominated) is (key in held)
        if key in turned:
            upload = _random_upload(turned, key, rng)
            nominated = _nominated(live, [upload], 3)
            assert nominated == _nominated(built, [upload], 3)
            assert ((key, 1) in nominated) is (key in held)


@pytest.mark.parametrize("bits", DIRECTORIES)
def test_votes_are_those_a_comparison_of_every_word_gives(
    monkeypatch: pytest.MonkeyPatch, bits: int
) -> None:
    monkeypatch.setattr(feature_index, "_directory_bits", lambda entries: bits)
    monkeypatch.setattr(feature_index, "_RECENT", 2000)  # part packed, part recent
    rng = np.random.default_rng(5)
    # Few distinct words, so that many entries share each and every search path is taken.
    vocabulary = rng.integers(0, 256, (3000, 32), dtype=np.uint8)
    pictures = {key: vocabulary[rng.integers(0, 3000, 60)] for key in range(100)}
    index = FeatureIndex()
    index.add_many((key, words(pictures[key]), None) for key in range(80))
    index.add_many((key, words(pictures[key]), None) for key in range(80, 100))
    # All in one corner, whose region then ranks as the whole does.
    upload = LocalFeatures(
        np.full((400, 2), 90, np.float32), vocabulary[rng.integers(0, 3000, 400)], (100, 100)
    )
    query = words(upload.descriptors)
    # A word the upload repeats votes once, from its first descriptor.
    firsts = [
        np.isin(np.arange(len(column)), np.unique(column, return_index=True)[1]) for column in query
    ]
    votes = {}
    for key, descriptors in pictures.items():
        held = words(descriptors)
        shared = [
            np.isin(query[table], held[table]) & firsts[table] for table in range(WORD_TABLES)
        ]
        votes[key] = int(np.logical_or.reduce(shared).sum())
    expected = sorted(
        (key for key in votes if votes[key] >= MIN_VOTES), key=lambda k: (-votes[k], k)
    )

    found = [key for key, _ in _nominated(index, [upload], 100)]

    assert len(expected) > 20
    assert found == expected


def test_a_directory_of_every_word_costs_no_more_than_the_tails_it_spares() -> None:
    directory = {
        entries: feature_index._directory_bits(entries) for entries in range(0, 1 << 30, 997_001)
    }
    for entries, bits in directory.items():
        slots = 4 << bits  # bytes, as tails are a byte an entry
        if bits == feature_index.WORD_BITS:
            assert slots <= entries
        else:
            assert slots <= max(entries // 16, 4 << 16)
    assert directory[75_000_000 // 997_001 * 997_001] == feature_index.WORD_BITS  # 100k bans
    assert set(directory.values()) == {16, 17, 18, 19, 24}
