import numpy as np


def flipped(descriptors: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """``descriptors`` with ``bits`` of each one's 256 bits flipped at random."""
    unpacked = np.unpackbits(descriptors, axis=1)
    for row in unpacked:
        row[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(unpacked, axis=1)
