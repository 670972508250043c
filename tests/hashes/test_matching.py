import math
import random

import pytest

from hashes import matching
from hashes.algorithms import ALGORITHMS, Fingerprint
from hashes.matching import DEFAULT_RULE_CONFIG, FingerprintStore, Match, Matcher, MatchRule

PHASH = "0123456789abcdef"
DHASH = "fedcba9876543210"
PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"


def flipped(code: str, bits: int) -> str:
    """``code`` with its lowest ``bits`` bits inverted: exactly ``bits`` away."""
    width = len(code) * 4
    return f"{int(code, 16) ^ ((1 << bits) - 1):0{width // 4}x}"


def fingerprint(phash: int = 0, dhash: int = 0, pdq: int = 0, quality: int | None = 100):
    """A full fingerprint the given distances from the reference hashes above."""
    return Fingerprint(
        hashes={
            "phash": flipped(PHASH, phash),
            "dhash": flipped(DHASH, dhash),
            "pdq": flipped(PDQ, pdq),
        },
        pdq_quality=quality,
    )


def matcher(
    *groups: dict[str, int], pdq_min_quality: int = 50, veto: float = 1, **banned: Fingerprint
) -> Matcher:
    result = Matcher(MatchRule(groups=groups, pdq_min_quality=pdq_min_quality, veto=veto))
    for key, value in banned.items():
        result.add(int(key.removeprefix("k")), value)
    return result


def test_a_group_matches_only_when_every_algorithm_in_it_is_close():
    banned = matcher({"phash": 10, "dhash": 10}, k1=fingerprint())

    assert banned.match(fingerprint(phash=10, dhash=10, pdq=200)) == [
        Match(key=1, distances={"phash": 10, "dhash": 10, "pdq": 200}, rule="phash<=10+dhash<=10")
    ]
    assert banned.match(fingerprint(phash=3, dhash=11)) == []
    assert banned.match(fingerprint(phash=11, dhash=0)) == []


def test_a_group_needs_every_algorithm_present_on_both_sides():
    banned = matcher({"phash": 10, "dhash": 10}, k1=fingerprint())

    assert banned.match(Fingerprint(hashes={"phash": PHASH})) == []


def test_any_group_is_enough_and_the_first_matching_one_is_named():
    banned = matcher({"pdq": 31}, {"phash": 4}, k1=fingerprint())

    assert [m.rule for m in banned.match(fingerprint(phash=40, pdq=31))] == ["pdq<=31"]
    assert [m.rule for m in banned.match(fingerprint(phash=4, pdq=32))] == ["phash<=4"]
    assert [m.rule for m in banned.match(fingerprint(phash=2, pdq=2))] == ["pdq<=31"]
    assert banned.match(fingerprint(phash=5, pdq=32)) == []


@pytest.mark.parametrize(
    ("upload_quality", "banned_quality", "votes"),
    [
        (100, 100, True),
        (50, 50, True),
        (49, 100, False),
        (100, 49, False),
        (None, 100, True),  # a pasted PDQ hash comes without a quality
        (100, None, True),
    ],
)
def test_pdq_does_not_vote_below_the_minimum_quality(upload_quality, banned_quality, votes):
    banned = matcher({"pdq": 31}, {"phash": 4}, k1=fingerprint(quality=banned_quality))

    via_pdq = banned.match(fingerprint(phash=30, quality=upload_quality))
    via_phash = banned.match(fingerprint(phash=4, quality=upload_quality))

    assert [m.key for m in via_pdq] == ([1] if votes else [])
    # A low quality silences PDQ only; the other groups still decide.
    assert [m.rule for m in via_phash] == (["pdq<=31"] if votes else ["phash<=4"])


def test_a_match_s_chance_is_how_likely_random_hashes_would_lie_as_near() -> None:
    assert Match(1, {"phash": 0}, "").chance == 2.0**-64
    assert Match(1, {"phash": 64}, "").chance == 1.0
    half = 0.5 + math.comb(64, 32) / 2**65  # 32 of 64 bits or fewer differ
    assert Match(1, {"phash": 32, "pdq": 0}, "").chance == pytest.approx(half * 2.0**-256)


def test_a_single_pasted_hash_can_be_banned_on_its_own():
    banned = Matcher(MatchRule.from_config(DEFAULT_RULE_CONFIG))
    banned.add(7, Fingerprint(hashes={"phash": PHASH}))

    assert banned.match(fingerprint(phash=2, dhash=30, pdq=120)) == [
        Match(key=7, distances={"phash": 2}, rule="phash<=2")
    ]
    assert banned.match(fingerprint(phash=4)) == []


def test_matches_are_sorted_best_first_then_by_key():
    banned = matcher(
        {"phash": 10},
        {"pdq": 31},
        k4=fingerprint(phash=6),
        k3=fingerprint(phash=2),
        k2=fingerprint(phash=6),
        k1=Fingerprint(hashes={"pdq": PDQ}, pdq_quality=100),
    )

    matches = banned.match(fingerprint())

    # Distances as fractions of each hash's width, averaged: pdq 0 beats phash 2/64.
    assert [m.key for m in matches] == [1, 3, 2, 4]


def test_add_replaces_and_remove_forgets():
    banned = matcher({"phash": 4}, k1=fingerprint())
    banned.add(1, Fingerprint(hashes={"dhash": DHASH}))

    assert len(banned) == 1
    assert banned.match(fingerprint()) == []

    banned.add(2, fingerprint())
    banned.remove(2)
    banned.remove(99)

    assert len(banned) == 1
    assert banned.match(fingerprint()) == []


def random_fingerprint(rng: random.Random, centres: list[Fingerprint]) -> Fingerprint:
    """Near one of a few centres, so that every group gets hits; some hashes missing."""
    centre = rng.choice(centres)
    hashes = {}
    for name, code in centre.hashes.items():
        if rng.random() < 0.85:
            bits = ALGORITHMS[name].bits
            flips = rng.sample(range(bits), rng.randrange(bits // 4))
            value = int(code, 16)
            for position in flips:
                value ^= 1 << position
            hashes[name] = f"{value:0{bits // 4}x}"
    if not hashes:
        hashes["phash"] = centre.hashes["phash"]
    quality = rng.choice([None, 20, 49, 50, 80, 100]) if "pdq" in hashes else None
    return Fingerprint(hashes=hashes, pdq_quality=quality)


def brute_force(rule: MatchRule, banned: dict[int, Fingerprint], upload: Fingerprint):
    def votes(name: str, side: Fingerprint) -> bool:
        return name != "pdq" or side.pdq_quality is None or side.pdq_quality >= rule.pdq_min_quality

    found = set()
    for key, candidate in banned.items():
        distances = upload.distance(candidate)
        voting = {n for n in distances if votes(n, upload) and votes(n, candidate)}
        if any(distances[n] > rule.veto * ALGORITHMS[n].bits for n in voting):
            continue
        for group in rule.groups:
            if all(name in voting and distances[name] <= limit for name, limit in group.items()):
                found.add(key)
                break
    return found


@pytest.mark.parametrize(
    "config",
    [
        DEFAULT_RULE_CONFIG,
        {"groups": [{"pdq": 60, "phash": 8}, {"dhash": 12}], "pdq_min_quality": 0},
        {"groups": [{"pdq": 31}, {"dhash": 12}], "veto": 1},
        {"groups": [{"phash": 6, "dhash": 4}, {"pdq": 50, "phash": 8}, {"dhash": 2}]},
    ],
)
def test_matcher_agrees_with_brute_force(config):
    rng = random.Random(1)
    rule = MatchRule.from_config(config)
    centres = [
        Fingerprint(
            hashes={
                name: f"{rng.getrandbits(a.bits):0{a.bits // 4}x}" for name, a in ALGORITHMS.items()
            },
            pdq_quality=100,
        )
        for _ in range(5)
    ]
    banned = {key: random_fingerprint(rng, centres) for key in range(400)}
    index = Matcher(rule)
    for key, value in banned.items():
        index.add(key, value)
    hits = 0

    for _ in range(60):
        upload = random_fingerprint(rng, centres)
        matches = index.match(upload)
        expected = brute_force(rule, banned, upload)
        hits += len(expected)

        assert {m.key for m in matches} == expected
        assert all(m.distances == upload.distance(banned[m.key]) for m in matches)

    assert hits > 100


def test_a_group_another_group_s_search_reaches_is_not_searched_again():
    # pHash at 10 (for pdq 60 + phash 10) finds every match of phash 10 + dhash 6.
    assert Matcher(MatchRule()).radii == {"pdq": 31, "phash": 10, "dhash": 4}
    assert Matcher(MatchRule(groups=({"phash": 10, "dhash": 6},))).radii == {"dhash": 6}


def test_the_default_rule_is_the_rule_built_from_its_settings():
    assert MatchRule.from_config(DEFAULT_RULE_CONFIG) == MatchRule()


def test_default_rule_matches_a_stripe_texture_whose_dhash_cannot_vote():
    # Fine vertical stripes: dHash is one row repeated, and edits move PDQ past 31.
    stripes = Fingerprint(
        hashes={"phash": PHASH, "dhash": "e0e0e0e0e0e0e0e0", "pdq": PDQ}, pdq_quality=100
    )
    banned = Matcher(MatchRule.from_config(DEFAULT_RULE_CONFIG))
    banned.add(1, stripes)

    def edited(phash: int, pdq: int) -> Fingerprint:
        hashes = {**stripes.hashes, "phash": flipped(PHASH, phash), "pdq": flipped(PDQ, pdq)}
        return Fingerprint(hashes=hashes, pdq_quality=100)

    assert [m.rule for m in banned.match(edited(phash=8, pdq=58))] == ["pdq<=60+phash<=10"]
    assert banned.match(edited(phash=12, pdq=58)) == []
    assert banned.match(edited(phash=8, pdq=61)) == []


def test_a_hash_as_far_apart_as_unrelated_pictures_vetoes_a_group():
    # A clip-art pane and a photo of a sign: dHash 4 apart, but pHash 20 and PDQ 126.
    banned = matcher({"dhash": 4}, veto=0.375, k1=fingerprint())

    assert banned.match(fingerprint(dhash=4, phash=20, pdq=96)) != []
    assert banned.match(fingerprint(dhash=4, phash=20, pdq=97)) == []
    assert banned.match(fingerprint(dhash=4, phash=25, pdq=0)) == []
    # A hash that may not vote cannot veto either.
    assert banned.match(fingerprint(dhash=4, pdq=200, quality=10)) != []
    assert matcher({"dhash": 4}, veto=1, k1=fingerprint()).match(fingerprint(dhash=4, pdq=200))


def test_pdq_min_quality_defaults_to_50():
    assert MatchRule.from_config({"groups": [{"pdq": 31}]}).pdq_min_quality == 50


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"groups": [{"ahash": 4}]}, "Unknown algorithm 'ahash'"),
        ({"groups": [{"phash": -1}]}, "from 0 to 64, not -1"),
        ({"groups": [{"phash": 65}]}, "from 0 to 64, not 65"),
        ({"groups": [{"pdq": 257}]}, "from 0 to 256"),
        ({"groups": [{"pdq": 31.5}]}, "whole number"),
        ({"groups": [{"pdq": "31"}]}, "whole number"),
        ({"groups": [{"pdq": True}]}, "whole number"),
        ({"groups": []}, "at least one group"),
        ({"groups": [{}]}, "non-empty mapping"),
        ({"groups": ["pdq"]}, "non-empty mapping"),
        ({"groups": {"pdq": 31}}, "must be a list"),
        ({}, "must be a list"),
        ({"groups": [{"pdq": 31}], "pdq_min_quality": 101}, "from 0 to 100"),
        ({"groups": [{"pdq": 31}], "pdq_min_quality": None}, "from 0 to 100"),
        ({"groups": [{"pdq": 31}], "threshold": 3}, "Unknown match rule settings"),
        ({"groups": [{"pdq": 31}], "veto": 0}, "veto must be a share"),
        ({"groups": [{"pdq": 31}], "veto": 1.5}, "veto must be a share"),
        ({"groups": [{"pdq": 31}], "veto": "0.5"}, "veto must be a share"),
    ],
)
def test_from_config_rejects_bad_settings_with_a_clear_message(config, message):
    with pytest.raises(ValueError, match=message):
        MatchRule.from_config(config)


def test_only_the_pdq_index_holds_the_pdq_quality() -> None:
    """The quality rates the PDQ hash: the pHash and dHash indexes hold the group alone,
    as runs, and a fingerprint still comes back with its quality."""
    rng = random.Random(8)
    stored = {
        key: Fingerprint(
            hashes={
                "phash": f"{rng.getrandbits(64):016x}",
                "dhash": f"{rng.getrandbits(64):016x}",
                "pdq": f"{rng.getrandbits(256):064x}",
            },
            pdq_quality=rng.randrange(101),
        )
        for key in range(40_000)
    }
    store = FingerprintStore()
    store.extend((key, value, 1 + key // 20_000) for key, value in stored.items())
    indexes = store._indexes
    assert indexes["phash"]._packed_tags.nbytes < 100 and indexes["dhash"]._packed_tags.nbytes < 100
    assert indexes["pdq"]._packed_tags.nbytes >= 40_000
    for key in rng.sample(sorted(stored), 500):
        assert store.get(key) == (stored[key], 1 + key // 20_000)
    [(keys, groups, _)] = store.search("phash", [stored[25_000].hashes["phash"]], 0)
    assert (keys.tolist(), groups.tolist()) == ([25_000], [2])


def test_a_store_gives_back_each_fingerprint_and_group_as_stored(monkeypatch) -> None:
    """Packed into arrays in batches (small ones here, to cross their edges), every
    fingerprint comes back whole: its hashes, missing ones missing, and its PDQ quality,
    none included."""
    monkeypatch.setattr(matching, "_BATCH", 7)
    rng = random.Random(5)
    centres = [fingerprint()]
    stored = {key: random_fingerprint(rng, centres) for key in range(40)}
    store = FingerprintStore()
    store.extend((key, value, key % 3) for key, value in stored.items())

    assert len(store) == 40
    for key, value in stored.items():
        assert store.get(key) == (value, key % 3)
    assert store.get(99) is None

    replaced = Fingerprint(hashes={"dhash": DHASH}, pdq_quality=None)
    store.add_many([(3, replaced), (41, replaced)], group=2)
    assert store.get(3) == (replaced, 2)
    assert len(store) == 41
    assert store.remove(3) and not store.remove(3)
    assert 3 not in store and len(store) == 40


def test_matchers_sharing_a_store_see_only_their_own_group() -> None:
    store = FingerprintStore()
    strict = Matcher(MatchRule(groups=({"pdq": 5},)), store, group=0)
    loose = Matcher(MatchRule(groups=({"pdq": 40},)), store, group=1)
    strict.add(1, fingerprint(pdq=20))
    loose.add(2, fingerprint(pdq=20))

    assert [match.key for match in strict.match(fingerprint())] == []
    assert [match.key for match in loose.match(fingerprint())] == [2]
    assert strict.fingerprint(2) is None and loose.fingerprint(2) == fingerprint(pdq=20)
