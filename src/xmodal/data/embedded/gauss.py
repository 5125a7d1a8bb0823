"""The MFH synthetic multimodal Gaussian task (specs/mfh.md §2).

x1 is the teacher modality x^a, x2 the student modality x^b. Latent decisive features
z ~ N(0, I_m) set the binary label y = 1[z · a[:m] > 0]; some latents are copied into x1, some into
x2, some into both (the modality-general decisive ones); every other channel is N(0, 1) noise.

Settings:
* ``G`` (γ sweep, Fig. 2): m = 20, x1 25 channels, x2 50; `param` = overlap o ∈ 0..10.
* ``A`` (α sweep, Fig. 3): m = 50, x1 and x2 50 channels, 10 shared latents, `param` = d
  teacher-only latents.
* ``T`` (Table 2): a = ones, x1 and x2 50 channels, 10 teacher-only latents, `param` = k shared.

All noise is drawn before latents are copied in, so at one seed x2 and y do not depend on the
setting parameter (the no-KD baseline is flat across a sweep).

`make_run` follows the G/A protocol (seed → a → train; reseed seed + 1 → test); `table2_run` the
Table-2 one (one generator seeded 42 + run draws train set A, the test set, then train set B).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xmodal.data.bundle import DataBundle, DataInfo, DictDataset
from xmodal.registry import register_dataset

A_LEN = 500


@dataclass
class GaussSplit:
    x1: np.ndarray  # [n, d1] teacher modality
    x2: np.ndarray  # [n, d2] student modality
    y: np.ndarray  # [n] int64 in {0, 1}


@dataclass
class GaussLayout:
    """Which latent each modality's channels copy (-1 = noise channel)."""

    m: int
    src1: np.ndarray  # [d1] latent index per x1 channel or -1
    src2: np.ndarray  # [d2]
    gamma: float  # the spec's γ for this setting and parameter

    @property
    def shared_latents(self) -> np.ndarray:
        return np.intersect1d(self.src1[self.src1 >= 0], self.src2[self.src2 >= 0])

    @property
    def general_channels(self) -> np.ndarray:
        """x1 channels that carry a latent also seen by x2 (modality-general decisive)."""
        return np.flatnonzero(np.isin(self.src1, self.shared_latents))

    @property
    def specific_channels(self) -> np.ndarray:
        """x1 channels that carry a teacher-only latent (modality-specific decisive)."""
        return np.flatnonzero((self.src1 >= 0) & ~np.isin(self.src1, self.shared_latents))


def layout(setting: str, param: int) -> GaussLayout:
    if setting == "G":
        o = param
        if not 0 <= o <= 10:
            raise ValueError(f"setting G: overlap must be in 0..10, got {o}")
        src1 = np.full(25, -1)
        src1[10 - o : 20 - o] = np.arange(10 - o, 20 - o)
        src2 = np.full(50, -1)
        src2[:10] = np.arange(10)
        return GaussLayout(20, src1, src2, gamma=o / (20 - o))
    if setting == "A":
        d = param
        if not 0 <= d <= 40:
            raise ValueError(f"setting A: teacher-only latents must be in 0..40, got {d}")
        src1 = np.full(50, -1)
        src1[: d + 10] = np.arange(d + 10)
        src2 = np.full(50, -1)
        src2[:10] = np.arange(10)
        return GaussLayout(50, src1, src2, gamma=10 / (d + 10))
    if setting == "T":
        k = param
        if not 1 <= k <= 40:
            raise ValueError(f"setting T: shared latents must be in 1..40, got {k}")
        src1 = np.full(50, -1)
        src1[: 10 + k] = np.arange(10 + k)
        src2 = np.full(50, -1)
        src2[:k] = np.arange(k)
        return GaussLayout(10 + k, src1, src2, gamma=k / (10 + k))
    raise ValueError(f"unknown gauss setting {setting!r}; expected G, A or T")


def hyperplane(setting: str, rng: np.random.Generator) -> np.ndarray:
    return np.ones(A_LEN) if setting == "T" else rng.standard_normal(A_LEN)


def draw(lay: GaussLayout, a: np.ndarray, n: int, rng: np.random.Generator) -> GaussSplit:
    z = rng.standard_normal((n, lay.m))
    x1 = rng.standard_normal((n, len(lay.src1)))
    x2 = rng.standard_normal((n, len(lay.src2)))
    for x, src in ((x1, lay.src1), (x2, lay.src2)):
        ch = np.flatnonzero(src >= 0)
        x[:, ch] = z[:, src[ch]]
    y = (z @ a[: lay.m] > 0).astype(np.int64)
    return GaussSplit(x1.astype(np.float32), x2.astype(np.float32), y)


def make_run(setting: str, param: int, seed: int, n_train: int = 200, n_test: int = 1000) -> tuple[GaussSplit, GaussSplit, GaussLayout]:
    """One run of the reference protocol: seed → a → train; reseed seed+1 → test (same a)."""
    lay = layout(setting, param)
    rng = np.random.default_rng(seed)
    a = hyperplane(setting, rng)
    train = draw(lay, a, n_train, rng)
    test = draw(lay, a, n_test, np.random.default_rng(seed + 1))
    return train, test, lay


@dataclass
class Table2Draw:
    """One run of the Table-2 protocol (specs/mfh.md §9)."""

    train_a: GaussSplit  # regular teacher + Algorithm 1
    test: GaussSplit
    train_b: GaussSplit  # students and the reduced teacher
    layout: GaussLayout


def table2_run(k: int, run: int, n_train: int = 200, n_test: int = 1000, seed_base: int = 42) -> Table2Draw:
    """Setting T, one generator seeded ``seed_base + run``: train set A, then test, then train set B."""
    lay = layout("T", k)
    rng = np.random.default_rng(seed_base + run)
    a = hyperplane("T", rng)
    train_a = draw(lay, a, n_train, rng)
    test = draw(lay, a, n_test, rng)
    return Table2Draw(train_a, test, draw(lay, a, n_train, rng), lay)


@register_dataset("gauss")
def gauss_data(setting: str = "G", param: int = 10, seed: int = 0, n_train: int = 200, n_test: int = 1000) -> DataBundle:
    """Both modalities as batch keys `x1` (teacher side) and `x2` (student side)."""
    if setting not in ("G", "A", "T"):
        from xmodal.errors import ConfigError

        raise ConfigError(f"data.setting: expected one of G, A, T, got {setting!r}")
    train, test, lay = make_run(setting, param, seed, n_train, n_test)

    def ds(s: GaussSplit) -> DictDataset:
        return DictDataset(x1=torch.from_numpy(s.x1), x2=torch.from_numpy(s.x2), label=torch.from_numpy(s.y))

    info = DataInfo(
        num_classes=2,
        class_names=["0", "1"],
        extra={"dims": {"x1": train.x1.shape[1], "x2": train.x2.shape[1]}, "gamma": lay.gamma},
    )
    return DataBundle(train=ds(train), test=ds(test), info=info)
