"""Exact in-memory search for hashes within a Hamming distance.

A brute-force scan, vectorised with numpy: at a million 256-bit entries a query takes a few
milliseconds, which is simpler and more predictable than an approximate index, and never
misses a match. ``benchmarks/bench_index.py`` prints the figures.
"""

import numpy as np

_INITIAL_CAPACITY = 1024


class HammingIndex:
    """Keys (ints) mapped to fixed-width hex hashes, searchable by Hamming distance.

    Codes are stored word-major, shape ``(bits // 64, capacity)``, so that each 64-bit word
    of every entry is one contiguous array: a query XORs and popcounts word by word, which
    is several times faster than reducing across the short rows of an ``(n, words)`` array.
    Removal moves the last entry into the freed slot, so the live entries stay packed at
    the front and a scan never has to skip holes.
    """

    def __init__(self, bits: int) -> None:
        if bits <= 0 or bits % 64:
            raise ValueError(f"bits must be a positive multiple of 64, not {bits}")
        self.bits = bits
        self._codes = np.zeros((bits // 64, _INITIAL_CAPACITY), dtype=np.uint64)
        self._keys = np.zeros(_INITIAL_CAPACITY, dtype=np.int64)
        self._rows: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: int) -> bool:
        return key in self._rows

    def add(self, key: int, code_hex: str) -> None:
        """Store ``code_hex`` under ``key``, replacing any code the key already has."""
        code = self._words(code_hex)
        row = self._rows.get(key)
        if row is None:
            row = len(self._rows)
            if row == self._keys.shape[0]:
                self._grow()
            self._keys[row] = key
            self._rows[key] = row
        self._codes[:, row] = code

    def add_many(self, keys: list[int], codes: list[str]) -> None:
        """``add`` for many at once, as a rebuild does: decoded and stored in a few numpy
        operations rather than one Python call each."""
        fresh = [
            (key, code) for key, code in zip(keys, codes, strict=True) if key not in self._rows
        ]
        for key, code in zip(keys, codes, strict=True):
            if key in self._rows:
                self.add(key, code)  # replaced in place
        if not fresh:
            return
        words = self.bits // 64
        try:
            raw = bytes.fromhex("".join(code for _, code in fresh))
        except ValueError:
            raw = b""
        if len(raw) != len(fresh) * words * 8:
            for key, code in fresh:  # one is malformed: add them one by one, which says which
                self.add(key, code)
            return
        start = len(self._rows)
        end = start + len(fresh)
        while end > self._keys.shape[0]:
            self._grow()
        codes_matrix = np.frombuffer(raw, dtype=">u8").reshape(len(fresh), words)
        self._codes[:, start:end] = codes_matrix.T.astype(np.uint64)
        self._keys[start:end] = [key for key, _ in fresh]
        self._rows.update((key, start + offset) for offset, (key, _) in enumerate(fresh))

    def remove(self, key: int) -> None:
        """Forget ``key``; a key that is not there is ignored."""
        row = self._rows.pop(key, None)
        if row is None:
            return
        last = len(self._rows)
        if row != last:
            moved = int(self._keys[last])
            self._codes[:, row] = self._codes[:, last]
            self._keys[row] = moved
            self._rows[moved] = row

    def query(self, code_hex: str, max_distance: int) -> list[tuple[int, int]]:
        """Every ``(key, distance)`` within ``max_distance``, nearest first, then by key."""
        code = self._words(code_hex)
        count = len(self._rows)
        distances = np.zeros(count, dtype=np.uint16)
        scratch = np.empty(count, dtype=np.uint64)
        for word in range(code.shape[0]):
            np.bitwise_xor(self._codes[word, :count], code[word], out=scratch)
            distances += np.bitwise_count(scratch)
        hits = np.flatnonzero(distances <= max_distance)
        keys = self._keys[hits]
        found = distances[hits]
        order = np.lexsort((keys, found))
        return list(zip(keys[order].tolist(), found[order].tolist(), strict=True))

    def _words(self, code_hex: str) -> np.ndarray:
        raw = bytes.fromhex(code_hex)
        # Checked on the decoded bytes, because fromhex skips spaces.
        if len(raw) * 8 != self.bits:
            raise ValueError(
                f"Expected a {self.bits}-bit hash of {self.bits // 4} hex digits, got {code_hex!r}."
            )
        return np.frombuffer(raw, dtype=">u8").astype(np.uint64)

    def _grow(self) -> None:
        capacity = self._keys.shape[0] * 2
        codes = np.zeros((self._codes.shape[0], capacity), dtype=np.uint64)
        codes[:, : self._keys.shape[0]] = self._codes
        keys = np.zeros(capacity, dtype=np.int64)
        keys[: self._keys.shape[0]] = self._keys
        self._codes, self._keys = codes, keys
