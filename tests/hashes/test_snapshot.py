import hashlib
import random
from pathlib import Path

import numpy as np
import pytest

from hashes import snapshot
from hashes.index import HammingIndex

BITS = 64


def _index(rng: random.Random, count: int = 40_000) -> tuple[HammingIndex, list[int]]:
    """An index large enough to have its chunk tables."""
    codes = [rng.getrandbits(BITS) for _ in range(count)]
    index = HammingIndex(BITS, 10)
    index.add_many(list(range(count)), [f"{code:016x}" for code in codes])
    assert index.tabled == count
    return index, codes


def _near(rng: random.Random, code: int, flips: int) -> str:
    for position in rng.sample(range(BITS), flips):
        code ^= 1 << position
    return f"{code:016x}"


def _maps(path: Path) -> bool:
    with open("/proc/self/maps") as maps:
        return any(line.rstrip().endswith(str(path)) for line in maps)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_loaded_index_maps_the_file_and_finds_what_the_saved_one_did(tmp_path: Path) -> None:
    rng = random.Random(1)
    index, codes = _index(rng)
    path = tmp_path / "index.snapshot"
    snapshot.save({"index": index, "note": "kept"}, path)
    loaded = snapshot.load(path)

    assert isinstance(loaded, dict) and loaded["note"] == "kept"
    mapped = loaded["index"]
    assert isinstance(mapped, HammingIndex) and _maps(path)
    assert mapped.tabled == len(codes)
    for _ in range(50):
        query = _near(rng, rng.choice(codes), rng.randrange(14))
        assert mapped.query(query, 10) == index.query(query, 10) == index.scan(query, 10)
    assert [n for n in mapped.query(f"{codes[7]:016x}", 0)] == [(7, 0)]


def test_changes_to_a_loaded_copy_are_its_own(tmp_path: Path) -> None:
    """Each load is copy-on-write: adds and removes change neither the file nor another
    process's (or load's) copy."""
    rng = random.Random(2)
    index, codes = _index(rng)
    path = tmp_path / "index.snapshot"
    snapshot.save(index, path)
    saved = _digest(path)
    first, second = snapshot.load(path), snapshot.load(path)
    assert isinstance(first, HammingIndex) and isinstance(second, HammingIndex)

    first.remove(7)
    first.add(10**9, f"{codes[8] ^ 1:016x}")
    assert first.query(f"{codes[7]:016x}", 0) == []
    assert first.query(f"{codes[8]:016x}", 1) == [(8, 0), (10**9, 1)]
    assert second.query(f"{codes[7]:016x}", 0) == [(7, 0)]
    assert second.query(f"{codes[8]:016x}", 1) == [(8, 0)]
    assert _digest(path) == saved
    assert snapshot.load(path).query(f"{codes[7]:016x}", 0) == [(7, 0)]  # type: ignore[attr-defined]


def test_arrays_of_every_shape_come_back_whole(tmp_path: Path) -> None:
    values = {
        "empty": np.zeros(0, dtype=np.int64),
        "bytes": np.arange(5, dtype=np.uint8),
        "grid": np.arange(12, dtype=np.float16).reshape(3, 4),
        "strided": np.arange(20)[::3],  # not contiguous: kept in the pickle
        "last": np.zeros(0, dtype=np.uint8),
    }
    path = tmp_path / "arrays.snapshot"
    snapshot.save(values, path)
    loaded = snapshot.load(path)
    assert isinstance(loaded, dict)
    for name, array in values.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array), name


def test_a_file_cut_short_or_of_something_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.snapshot"
    snapshot.save(_index(random.Random(3))[0], path)
    data = path.read_bytes()
    for name, broken in {
        "cut": data[: len(data) // 2],
        "head": data[:40],
        "other": b"PK\x03\x04" + bytes(5000),
        "empty": b"",
    }.items():
        (tmp_path / name).write_bytes(broken)
        with pytest.raises(snapshot.SnapshotError):
            snapshot.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        snapshot.load(tmp_path / "missing")


def test_a_save_that_fails_leaves_the_file_there_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "index.snapshot"
    snapshot.save([1, 2, 3], path)
    with pytest.raises(AttributeError):  # a local function cannot be pickled
        snapshot.save({"fails": lambda: None}, path)
    assert snapshot.load(path) == [1, 2, 3]
    assert [item.name for item in tmp_path.iterdir()] == ["index.snapshot"]
