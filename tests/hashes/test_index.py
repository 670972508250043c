import random

import numpy as np
import pytest

import hashes.index as index_module
from hashes.index import (
    HammingIndex,
    _Ascending,
    _by_value,
    _chunk,
    _Flags,
    _held_chunk,
    _RowNumbers,
    _Runs,
    decode,
    decode_joined,
    pair_bits,
)
from hashes.matching import FingerprintStore, MatchRule, search_radii


def random_code(rng: random.Random, bits: int) -> int:
    return rng.getrandbits(bits)


def near(rng: random.Random, code: int, bits: int, flips: int) -> int:
    for position in rng.sample(range(bits), flips):
        code ^= 1 << position
    return code


def to_hex(code: int, bits: int) -> str:
    return f"{code:0{bits // 4}x}"


def brute_force(entries: dict[int, int], query: int, max_distance: int) -> list[tuple[int, int]]:
    found = [(key, (code ^ query).bit_count()) for key, code in entries.items()]
    return sorted(
        ((key, distance) for key, distance in found if distance <= max_distance),
        key=lambda item: (item[1], item[0]),
    )


def clustered_codes(rng: random.Random, bits: int, count: int) -> list[int]:
    """Codes in tight clusters, so that small radii find something, plus random ones."""
    centres = [random_code(rng, bits) for _ in range(20)]
    return [
        near(rng, rng.choice(centres), bits, rng.randrange(bits // 8))
        if rng.random() < 0.7
        else random_code(rng, bits)
        for _ in range(count)
    ]


@pytest.mark.parametrize("bits", [64, 256])
def test_query_agrees_with_brute_force_through_adds_removes_and_replacements(bits):
    rng = random.Random(bits)
    index = HammingIndex(bits)
    entries: dict[int, int] = {}
    # More than the initial capacity, so the index has to grow.
    for key, code in enumerate(clustered_codes(rng, bits, 3000)):
        stored_key = key * 7 - 5000  # negative and sparse keys too
        index.add(stored_key, to_hex(code, bits))
        entries[stored_key] = code

    def check() -> None:
        assert len(index) == len(entries)
        queries = [
            near(rng, code, bits, rng.randrange(8))
            for code in rng.sample(list(entries.values()), 15)
        ]
        queries += [random_code(rng, bits) for _ in range(5)]
        for query in queries:
            for radius in (0, 3, bits // 8, bits // 4, bits // 2):
                expected = brute_force(entries, query, radius)
                assert index.query(to_hex(query, bits), radius) == expected

    check()
    for key in rng.sample(list(entries), 1200):
        index.remove(key)
        del entries[key]
    check()
    for key in rng.sample(list(entries), 300):  # replace existing keys
        entries[key] = random_code(rng, bits)
        index.add(key, to_hex(entries[key], bits))
    for key in range(10**9, 10**9 + 500):  # and add new ones into the freed rows
        entries[key] = near(rng, rng.choice(list(entries.values())), bits, 2)
        index.add(key, to_hex(entries[key], bits))
    check()


def test_empty_index_finds_nothing():
    index = HammingIndex(256)

    assert index.query("0" * 64, 256) == []
    assert len(index) == 0
    assert 1 not in index


def test_distance_zero_finds_exact_copies_only():
    index = HammingIndex(64)
    index.add(1, "00000000000000ff")
    index.add(2, "00000000000000fe")
    index.add(3, "00000000000000ff")

    assert index.query("00000000000000ff", 0) == [(1, 0), (3, 0)]


def test_max_distance_of_all_bits_returns_everything_nearest_first():
    index = HammingIndex(64)
    index.add(10, "f" * 16)
    index.add(5, "0" * 16)
    index.add(7, "0" * 15 + "3")

    assert index.query("0" * 16, 64) == [(5, 0), (7, 2), (10, 64)]


def test_ties_are_ordered_by_key():
    index = HammingIndex(64)
    for key in (9, 3, 6):
        index.add(key, "0" * 15 + "1")

    assert index.query("0" * 16, 1) == [(3, 1), (6, 1), (9, 1)]


def test_add_replaces_and_remove_forgets():
    index = HammingIndex(64)
    index.add(1, "0" * 16)
    index.add(1, "f" * 16)

    assert len(index) == 1
    assert index.query("f" * 16, 0) == [(1, 0)]
    assert index.query("0" * 16, 0) == []

    index.remove(1)
    index.remove(1)
    index.remove(42)

    assert len(index) == 0
    assert 1 not in index
    assert index.query("f" * 16, 64) == []


def test_multiples_of_64_bits_other_than_64_and_256_work():
    index = HammingIndex(128)
    index.add(1, "f" * 32)

    assert index.query("0" * 32, 128) == [(1, 128)]


@pytest.mark.parametrize("bits", [0, 32, 100, -64])
def test_bits_must_be_a_positive_multiple_of_64(bits):
    with pytest.raises(ValueError, match="multiple of 64"):
        HammingIndex(bits)


@pytest.mark.parametrize("code", ["0" * 15, "0" * 64, "z" * 16, "00 " * 16])
def test_codes_of_the_wrong_size_or_not_hex_are_rejected(code):
    index = HammingIndex(64)

    with pytest.raises(ValueError):
        index.add(1, code)
    with pytest.raises(ValueError):
        index.query(code, 3)


@pytest.mark.parametrize("bits", [64, 256])
def test_many_added_at_once_are_searched_as_if_added_one_by_one(bits: int) -> None:
    rng = random.Random(bits)
    codes = {key: f"{rng.getrandbits(bits):0{bits // 4}x}" for key in range(3000)}
    one_by_one, at_once = HammingIndex(bits), HammingIndex(bits)
    for key, code in codes.items():
        one_by_one.add(key, code)
    at_once.add(5, "0" * (bits // 4))  # replaced by the batch
    at_once.add_many(list(codes), list(codes.values()))
    assert len(at_once) == len(one_by_one) == 3000
    for query in [*list(codes.values())[:20], f"{rng.getrandbits(bits):0{bits // 4}x}"]:
        radius = bits // 4
        assert at_once.query(query, radius) == one_by_one.query(query, radius)
    with pytest.raises(ValueError):  # malformed, as add says
        at_once.add_many([9000, 9001], ["ab" * (bits // 8), "abc"])


def test_a_build_out_of_key_order_keeps_each_keys_last_and_finds_what_adds_one_by_one_do() -> None:
    rng = random.Random(7)
    keys = rng.sample(range(2**40, 2**40 + 200_000), 40_000)  # wider than 32 bits
    keys += keys[:500]  # given twice: the second code and tag stand
    codes = [f"{rng.getrandbits(64):016x}" for _ in keys]
    tags = [rng.randrange(3) for _ in keys]
    built, one_by_one = HammingIndex(64), HammingIndex(64)
    built.add_many(keys, codes, tags)  # on an empty index: packed at once
    for key, code, tag in zip(keys, codes, tags, strict=True):
        one_by_one.add(key, code, tag)
    assert len(built) == built.tabled == len(one_by_one) == 40_000
    assert [built.get(key) for key in keys[:20]] == list(
        zip(codes[-500:-480], tags[-500:-480], strict=True)
    )
    for query in [*codes[:10], *codes[-10:], f"{rng.getrandbits(64):016x}"]:
        assert built.query(query, 12) == one_by_one.query(query, 12)


def test_codes_written_one_after_another_decode_only_when_each_is_whole() -> None:
    codes = ["00ff" * 4, "0123456789abcdef"]
    words = decode_joined("".join(codes), 2, 64)
    assert words.tolist() == [[0x00FF00FF00FF00FF], [0x0123456789ABCDEF]]
    assert decode(codes, 64).tolist() == words.tolist()
    assert decode_joined("ab" * 64, 2, 256).shape == (2, 4)
    for joined, count in [
        ("00ff" * 4 + "0123", 2),  # one short
        ("00ff" * 4, 2),
        ("00ff 00ff00ff00ff", 1),  # fromhex skips spaces
        ("zz" * 8, 1),
    ]:
        with pytest.raises(ValueError, match="64-bit hash of 16 hex digits"):
            decode_joined(joined, count, 64)
    with pytest.raises(ValueError, match="'abc'"):  # named among the rest
        decode(["ab" * 8, "abc", "cd" * 8], 64)


def _brute_force_radii(
    entries: dict[int, int], query: int, radii: tuple[int, ...]
) -> dict[int, list[tuple[int, int]]]:
    found = sorted(((code ^ query).bit_count(), key) for key, code in entries.items())
    return {
        radius: [(key, distance) for distance, key in found if distance <= radius]
        for radius in radii
    }


@pytest.fixture
def held_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables of one-word codes keep a chunk's codes in its run whatever their size (at
    the sizes of a test a search finds too few rows in a chunk to be worth it)."""
    monkeypatch.setattr(index_module, "_HELD", 0)


@pytest.mark.parametrize(
    ("bits", "radius", "layout"), [(64, 10, None), (64, 10, 10), (64, 10, 4), (256, 31, 31)]
)
def test_chunk_tables_find_exactly_what_brute_force_finds(
    bits: int, radius: int, layout: int | None, held_codes: None
) -> None:
    """Past a few tens of thousands of codes the index searches chunk tables; through
    adds after the build, removals, replacements and rebuilds it must still find every
    code a full comparison finds, and nothing else: at any radius, whatever radius the
    tables were laid out for (``layout``: one-word codes keep a chunk's codes in its run
    for it)."""
    rng = random.Random(bits * 31)
    entries = dict(enumerate(clustered_codes(rng, bits, 40_000)))
    index = HammingIndex(bits, layout)
    index.add_many(list(entries), [to_hex(code, bits) for code in entries.values()])
    assert index.tabled == 40_000
    assert (index._tables.coded is not None) == (bits == 64 and layout is not None)
    radii = (0, 3, radius, bits // 4 + 8)

    def check() -> None:
        assert len(index) == len(entries)
        stored = list(entries.values())
        queries = [
            near(rng, rng.choice(stored), bits, rng.randrange(radius + 4)) for _ in range(16)
        ]
        queries += [random_code(rng, bits) for _ in range(4)]
        # Near codes after their complements (an upload's negative): a full comparison
        # reads their distances from the complement's.
        nearby = [near(rng, rng.choice(stored), bits, 2) for _ in range(2)]
        queries += [code ^ ((1 << bits) - 1) for code in nearby] + nearby
        codes = [to_hex(query, bits) for query in queries]
        # All the queries at once, as an upload's turns and views are looked up.
        together = {limit: index.search_many(codes, limit) for limit in radii}
        for number, query in enumerate(queries):
            expected = _brute_force_radii(entries, query, radii)
            for limit in radii:
                assert index.query(codes[number], limit) == expected[limit]
                assert index.scan(codes[number], limit) == expected[limit]
                keys, _, distances = together[limit][number]
                pairs = zip(keys.tolist(), distances.tolist(), strict=True)
                assert sorted(pairs, key=lambda pair: pair[::-1]) == expected[limit]

    check()
    removed = rng.sample(list(entries), 3000)
    for key in removed:  # removed from the tables: masked until the next rebuild
        index.remove(key)
        del entries[key]
    for key in rng.sample(list(entries), 500):  # replaced: the old code must not be found
        entries[key] = near(rng, entries[key], bits, radius + 1)
        index.add(key, to_hex(entries[key], bits))
    for key in removed[:200]:  # back again
        entries[key] = random_code(rng, bits)
        index.add(key, to_hex(entries[key], bits))
    assert index.tabled == 40_000  # not rebuilt yet
    check()
    for key in range(10**9, 10**9 + 5000):  # enough churn to rebuild the tables
        entries[key] = near(rng, rng.choice(list(entries.values())[:100]), bits, 3)
        index.add(key, to_hex(entries[key], bits))
    assert index.tabled != 40_000
    check()


def test_keys_and_tags_too_large_for_the_narrow_types_are_kept_whole() -> None:
    index = HammingIndex(64)
    index.add_many([1, 2], ["00" * 8, "ff" * 8], [7, 8])
    narrow = index.nbytes()
    big_key, big_tag = 2**40 + 3, 2**20 + 5
    index.add(big_key, "0f" * 8, big_tag)
    assert index.nbytes() > narrow  # the tags widened
    index.add(-(2**35), "f0" * 8, 1)
    assert index.get(big_key) == ("0f" * 8, big_tag)
    assert index.get(1) == ("00" * 8, 7)
    assert big_key in index and -(2**35) in index and 2**41 not in index
    assert index.query("0f" * 8, 0) == [(big_key, 0)]
    keys, tags, distances = index.search("0f" * 8, 0)
    assert keys.tolist() == [big_key] and tags.tolist() == [big_tag] and distances.tolist() == [0]
    index.remove(big_key)
    assert big_key not in index and len(index) == 3
    assert 2**41 not in HammingIndex(64)  # a key wider than any held is simply absent


def test_tags_widen_a_step_at_a_time_and_keep_their_values() -> None:
    index = HammingIndex(64)
    sizes = []
    for key, tag in enumerate([5, 255, 256, 65_535, 65_536]):
        index.add(key, f"{key:016x}", tag)
        sizes.append(index.nbytes())
    assert sizes[0] == sizes[1] < sizes[2] == sizes[3] < sizes[4]
    assert [index.get(key)[1] for key in range(5)] == [5, 255, 256, 65_535, 65_536]


def test_removing_a_key_wider_than_the_held_ones_leaves_the_others() -> None:
    index = HammingIndex(64)
    index.add_many(list(range(5000)), [f"{key:016x}" for key in range(5000)])
    assert index.tabled == 0 and len(index) == 5000  # packed in key order, in 32 bits
    index.remove(2**32 + 1)  # 1 in its low 32 bits
    index.remove(-(2**40))
    assert 1 in index and len(index) == 5000
    index.remove(1)
    assert 1 not in index and index.get(2) == (f"{2:016x}", 0)
    assert 2**64 not in index and -(2**64) not in index


@pytest.mark.parametrize(
    ("gap", "jump", "steps"),
    [
        (3, 0, np.uint8),
        (900, 0, np.uint16),
        (2**20, 0, np.uint32),
        (2**40, 0, np.int64),
        (3, 2**40, np.uint8),  # one gap: its block holds its keys whole
    ],
)
def test_packed_keys_are_held_in_the_narrowest_steps_that_fit(
    gap: int, jump: int, steps: type
) -> None:
    rng = np.random.default_rng(gap)
    keys = -(2**50) + np.cumsum(rng.integers(1, gap, 6000)) + np.repeat([0, jump], 3000)
    index = HammingIndex(64)
    index.add_many(keys.tolist(), [f"{key % 2**64:016x}" for key in keys.tolist()])
    assert index._indexed == 6000 and index._packed_keys._steps.dtype == steps
    assert all(index.get(key) == (f"{key % 2**64:016x}", 0) for key in keys.tolist())
    # Keys between, before and after those held are not.
    others = {int(key) + 1 for key in keys} | {int(keys[0]) - 1, int(keys[-1]) + 1}
    assert not any(key in index for key in others - set(keys.tolist()))
    for key in keys[::7].tolist():
        index.remove(key)
    assert sorted(key for key in keys.tolist() if key in index) == sorted(
        set(keys.tolist()) - set(keys[::7].tolist())
    )
    code = f"{int(keys[1]) % 2**64:016x}"
    assert index.query(code, 0) == [(int(keys[1]), 0)]


def test_a_code_every_key_holds_is_found_once_for_each(held_codes: None) -> None:
    index = HammingIndex(64, 10)
    index.add_many(list(range(40_000)), ["0f" * 8] * 40_000)
    assert index._tables.coded is not None
    keys, _, distances = index.search("0f" * 7 + "0e", 10)
    assert sorted(keys.tolist()) == list(range(40_000)) and set(distances.tolist()) == {1}


@pytest.mark.parametrize("layout", [None, 3])
def test_tables_stay_exact_when_one_chunk_value_holds_more_rows_than_16_bits_count(
    layout: int | None, held_codes: None
) -> None:
    rng = random.Random(11)
    # 70,000 codes sharing their first 32 bits: one slot of the first chunk holds them all.
    entries = {key: rng.getrandbits(32) for key in range(70_000)}
    index = HammingIndex(64, layout)
    index.add_many(list(entries), [to_hex(code, 64) for code in entries.values()])
    assert index.tabled == 70_000
    for query in [*rng.sample(list(entries.values()), 5), rng.getrandbits(64)]:
        assert index.query(to_hex(query, 64), 3) == brute_force(entries, query, 3)


def test_codes_held_by_many_keys_are_found_for_each_live_key(held_codes: None) -> None:
    """A 64-bit code found in the chunk that holds codes, not rows, is found back by its
    code: every live key holding it must come back, and no removed one."""
    rng = random.Random(12)
    shared = clustered_codes(rng, 64, 3000)
    entries = {key: rng.choice(shared) for key in range(40_000)}
    index = HammingIndex(64, 10)
    index.add_many(list(entries), [to_hex(code, 64) for code in entries.values()])
    assert index.tabled == 40_000 and index._tables.coded is not None
    for key in rng.sample(list(entries), 2000):
        index.remove(key)
        del entries[key]
    queries = [near(rng, code, 64, rng.randrange(11)) for code in rng.sample(shared, 30)]
    together = index.search_many([to_hex(query, 64) for query in queries], 10)
    for query, (keys, _, distances) in zip(queries, together, strict=True):
        expected = brute_force(entries, query, 10)
        assert expected  # the same codes are held by several keys each
        found = zip(keys.tolist(), distances.tolist(), strict=True)
        assert sorted(found, key=lambda pair: pair[::-1]) == expected


def test_a_chunk_keeps_its_codes_where_the_radius_searched_reads_many_rows_in_it() -> None:
    # 10M one-word codes in chunks of 22, 21 and 21 bits: at radius 10 a query finds
    # about 7.4k rows in the second; at radius 4, about 100. Codes of several words never.
    assert _held_chunk([22, 21, 21], 10_000_000, 10) == 1
    assert _held_chunk([22, 21, 21], 10_000_000, 4) is None
    assert _held_chunk([22, 21, 21], 10_000_000, None) is None
    assert _held_chunk([16, 16, 16, 16], 100_000, 10) is None
    assert search_radii(MatchRule()) == {"pdq": 31, "phash": 10, "dhash": 4}
    store = FingerprintStore(search_radii(MatchRule()))
    assert store._indexes["phash"].radius == 10 and store._indexes["pdq"].radius == 31


@pytest.mark.parametrize(("gap", "kind"), [(3, np.uint8), (300, np.uint16), (70_000, np.uint32)])
def test_offsets_are_held_in_the_narrowest_steps_that_fit_and_read_back_whole(
    gap: int, kind: type
) -> None:
    positions = np.concatenate([[0], np.cumsum(np.random.default_rng(1).integers(0, gap, 1023))])
    # In pieces of whole blocks, as the chunks give them, read back as one.
    offsets = _Ascending([positions[:320], positions[320:]])
    assert offsets._steps.dtype == kind
    assert offsets[np.arange(1024)].tolist() == positions.tolist()


@pytest.mark.parametrize("in_runs", [True, False])
def test_tags_come_back_as_given_whether_held_as_runs_or_one_a_row(in_runs: bool) -> None:
    """Tags in runs (a group for each imported list) are held as runs, others one a row;
    either way each key's tag comes back, through adds (some replacing packed keys, with
    tags wider than a byte), removes and the rebuilds they cause."""
    rng = random.Random(6)
    keys = list(range(0, 80_000, 2))
    tags = [(key // 30_000 if in_runs else rng.randrange(101)) for key in keys]
    entries = {key: (rng.getrandbits(64), tag) for key, tag in zip(keys, tags, strict=True)}
    index = HammingIndex(64)
    index.add_many(keys, [to_hex(code, 64) for code, _ in entries.values()], tags)
    held = index._packed_tags
    assert isinstance(held, _Runs) if in_runs else held.dtype == np.uint8
    assert held.nbytes < (100 if in_runs else 50_000)
    for round in range(1, 4):
        added = rng.sample(range(100_000), 3000)
        for key in added:
            entries[key] = (rng.getrandbits(64), 1000 * round)
        index.add_many(added, [to_hex(entries[key][0], 64) for key in added], [1000 * round] * 3000)
        for key in rng.sample(sorted(entries), 2000):
            index.remove(key)
            del entries[key]
        for key, (code, tag) in entries.items():
            assert index.get(key) == (to_hex(code, 64), tag)
    sample = rng.sample(sorted(entries), 200)
    found = index.search_many([to_hex(entries[key][0], 64) for key in sample], 0)
    for key, (keys_found, tags_found, _) in zip(sample, found, strict=True):
        assert tags_found[keys_found == key].tolist() == [entries[key][1]]


def test_blocks_whose_steps_do_not_fit_hold_their_values_apart() -> None:
    """Dense keys but for gaps (an index's first keys, then ids millions on), and dense
    offsets but for one value held by a thousand rows: byte steps, the odd blocks whole."""
    dense = np.arange(10_000_000, 10_000_000 + 1277, dtype=np.int64)
    keys = np.concatenate([[2, 9], dense, [2**40]])
    crowded = np.cumsum(np.random.default_rng(4).integers(0, 3, 1280))
    crowded[700:] += 1000
    for values in (keys, crowded):
        held = _Ascending([values[:640], values[640:]])
        assert held._steps.dtype == np.uint8 and 1 <= len(held._wide) <= 2
        assert held[np.arange(1280)].tolist() == values.tolist()
        assert held[np.asarray([1279, 0, 700, 5])].tolist() == values[[1279, 0, 700, 5]].tolist()
    held = _Ascending([keys])
    wanted = np.concatenate([keys, keys + 1, [0, 1, 3, 2**40 - 1, 2**41, 10_000_000 - 1]])
    where = {int(value): place for place, value in enumerate(keys)}
    expected = [where.get(int(value), -1) for value in wanted]
    assert held.find(wanted, len(keys)).tolist() == expected
    assert [held.find_one(int(value), len(keys)) for value in wanted] == expected
    assert held.nbytes() < keys.nbytes // 3


def test_ascending_values_are_found_where_they_are_and_others_not() -> None:
    values = np.cumsum(np.random.default_rng(2).integers(1, 5, 1000))
    padded = np.concatenate([values, np.full(24, values[-1])])  # to whole blocks
    held = _Ascending([padded])
    wanted = np.arange(-3, int(values[-1]) + 4)
    found = held.find(wanted, len(values))
    where = {int(value): place for place, value in enumerate(values)}
    assert found.tolist() == [where.get(int(value), -1) for value in wanted]
    # One at a time, as a key added or removed is looked for, the same.
    assert [int(held.find(wanted[at : at + 1], len(values))[0]) for at in range(len(wanted))] == (
        found.tolist()
    )
    assert held.find(wanted, 0).tolist() == [-1] * len(wanted)
    assert _Ascending([]).find(wanted, 0).tolist() == [-1] * len(wanted)


@pytest.mark.parametrize("width", [5, 8, 16, 17, 24])
def test_chunk_values_are_ordered_by_value_whatever_their_width(width: int) -> None:
    values = np.random.default_rng(width).integers(0, 1 << width, 20_000)
    order = _by_value(values.copy(), np.arange(len(values), dtype=np.uint64))
    assert order.tolist() == np.argsort(values, kind="stable").tolist()  # ties by row


@pytest.mark.parametrize("chunk_bits", [13, 15])
def test_chunk_values_of_queries_are_read_across_word_boundaries(
    chunk_bits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query's chunk values, read for every chunk at once, are each chunk's bits, where
    a chunk straddles two words too (capped at 13 bits, 256-bit codes are cut in 13s and
    12s; at 15, in 15s and 14s); and a search through such tables finds what the full
    comparison does, for codes so far from their stored ones that few chunks find them."""
    monkeypatch.setattr(index_module, "_MAX_CHUNK_BITS", chunk_bits)
    rng = np.random.default_rng(chunk_bits)
    codes = rng.integers(0, 2**64, (40_000, 4), dtype=np.uint64)
    index = HammingIndex(256, 31)
    index.add_arrays(np.arange(len(codes)), codes, np.zeros(len(codes), dtype=np.uint32))
    tables = index._tables
    assert tables is not None
    assert any(start // 64 != (start + width - 1) // 64 for start, width in _spans(tables))
    queries = codes[rng.integers(0, len(codes), 20)]
    for query in queries:  # 25 to 31 bits from its stored code
        for position in rng.choice(256, rng.integers(25, 32), replace=False):
            query[position // 64] ^= np.uint64(1) << np.uint64(position % 64)
    values = tables.values(queries)
    whole = [int(index_module.encode(row), 16) for row in queries]
    for column, (start, width) in enumerate(_spans(tables)):
        expected = [code >> (256 - start - width) & ((1 << width) - 1) for code in whole]
        assert values[:, column].tolist() == expected
        assert _chunk(queries, start, width).tolist() == expected
    for code in (index_module.encode(row) for row in queries):
        assert index.query(code, 31) == index.scan(code, 31) != []


def _spans(tables: "index_module._Tables") -> list[tuple[int, int]]:
    return list(zip(tables.starts, tables.widths, strict=True))


def test_row_numbers_take_four_bytes_past_two_to_the_24() -> None:
    for rows in (1 << 24, (1 << 24) + 1):
        numbers = _RowNumbers(3, rows)
        numbers.put(0, np.asarray([rows - 1, 0, 5]))
        assert numbers[np.asarray([2, 0, 1])].tolist() == [5, rows - 1, 0]
    assert _RowNumbers(3, 1 << 24).nbytes() < _RowNumbers(3, 1 + (1 << 24)).nbytes()


@pytest.mark.parametrize("words", [1, 4])
def test_pair_bits_counts_the_bits_each_pair_of_rows_differs_in(words: int) -> None:
    rng = np.random.default_rng(words)
    left = rng.integers(0, 2**64, (50, words), dtype=np.uint64)
    right = rng.integers(0, 2**64, (30, words), dtype=np.uint64)
    left_rows = rng.integers(0, 50, 200)
    right_rows = rng.integers(0, 30, 200)
    expected = [
        sum((int(a) ^ int(b)).bit_count() for a, b in zip(left[i], right[j], strict=True))
        for i, j in zip(left_rows, right_rows, strict=True)
    ]
    assert pair_bits(left, left_rows, right, right_rows).tolist() == expected
    assert len(pair_bits(left, left_rows[:0], right, right_rows[:0])) == 0


def test_flags_eight_to_a_byte_are_read_and_set_as_a_bool_a_row_would_be() -> None:
    rng = np.random.default_rng(3)
    flags, expected = _Flags(37, 13), np.zeros(37, dtype=bool)
    expected[:13] = True
    for step in range(200):
        rows = rng.integers(0, len(expected), rng.integers(0, 6))  # repeats among them
        value = bool(rng.integers(0, 2))
        flags.put(rows, value)
        expected[rows] = value
        if step in (50, 120):
            flags, expected = flags.grown(len(expected) + 30), np.append(expected, [False] * 30)
        begin = int(rng.integers(0, len(expected)))
        end = int(rng.integers(begin, len(expected) + 1))
        assert flags.span(begin, end).tolist() == expected[begin:end].tolist()
        every = np.arange(len(expected))
        assert flags[every].tolist() == expected.tolist()
        assert [flags.is_set(row) for row in range(len(expected))] == expected.tolist()
    assert flags.nbytes() == -(-len(expected) // 8)  # 97 rows: 13 bytes
