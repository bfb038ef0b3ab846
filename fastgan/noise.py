"""The noise behind ``python -m fastgan.generate --seed S``, drawn with numpy: the onnxruntime backend
draws it without torch, so both backends (and fastgan.evaluate's generator source) see the same z."""

from __future__ import annotations

import numpy as np


def generator_noise(seed: int, n: int, z_dim: int) -> np.ndarray:
    """float32 [n, z_dim] standard normal noise, a function of the seed alone (no global RNG)."""
    return np.random.default_rng(seed).standard_normal((n, z_dim), dtype=np.float32)
