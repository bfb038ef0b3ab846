"""The noise behind ``python -m fastgan.generate --seed S``, drawn with numpy: the onnxruntime backend
draws it without torch, so both backends (and fastgan.evaluate's generator source) see the same z."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def generator_noise(seed: int, n: int, z_dim: int) -> np.ndarray:
    """float32 [n, z_dim] standard normal noise, a function of the seed alone (no global RNG)."""
    return np.random.default_rng(seed).standard_normal((n, z_dim), dtype=np.float32)


def generator_noise_chunks(seed: int, n: int, z_dim: int, chunk: int) -> Iterator[np.ndarray]:
    """generator_noise(seed, n, z_dim) in consecutive blocks of at most ``chunk`` rows, drawn from the same
    stream: their concatenation equals it bit for bit, and a large n never holds all its noise at once."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        yield rng.standard_normal((min(chunk, n - start), z_dim), dtype=np.float32)
