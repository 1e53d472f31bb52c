"""The CGD model configuration, parsed once and frozen."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

DESCRIPTOR_LETTERS = frozenset("SMG")
MIN_SCALE, MAX_SCALE = 0.25, 4.0  # input scales of multi-scale descriptors

# The 12 distinct configurations of the paper: 3 single descriptors, 6 ordered pairs, and one
# triple per first letter (only the first letter of a triple matters: it feeds the classifier).
DESCRIPTOR_CONFIGS: tuple[str, ...] = (
    "S", "M", "G", "SM", "SG", "MS", "MG", "GS", "GM", "SMG", "MSG", "GSM",
)


class ConfigError(ValueError):
    """A model configuration that cannot be built."""


def checked_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """`scales` as a tuple of floats; ConfigError unless 1 to n factors in [MIN_SCALE, MAX_SCALE]."""
    scales = tuple(float(scale) for scale in scales)
    if not scales or any(not MIN_SCALE <= scale <= MAX_SCALE for scale in scales):
        raise ConfigError(f"scales must be 1 to n factors in [{MIN_SCALE:g}, {MAX_SCALE:g}], got {scales}")
    return scales


@dataclass(frozen=True)
class Preprocessing:
    """How images become tensors for a backbone: resize/crop geometry and normalisation."""

    image_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ConfigError(f"image_size must be at least 16 px, got {self.image_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ConfigError(f"unknown interpolation {self.interpolation!r}")


@dataclass(frozen=True)
class CGDConfig:
    """Everything needed to rebuild a CGD network (weights excluded).

    `descriptors` is a string of 1 to 3 distinct letters from S (SPoC), M (MAC) and G (GeM);
    the first letter feeds the auxiliary classifier. `embedding_dim` is split evenly over them.
    `whitening`: the model ends with a learned whitening (d x d, fitted after training).
    `scales`: input scales whose descriptors are averaged at inference (multi-scale; training uses 1).
    `qe_n`, `dba_n`: the model's search defaults, alpha-QE with the top `qe_n` hits and database-side
    augmentation with each item's top `dba_n` neighbours (alpha 3; 0 = off), chosen on validation by
    `model.expansion`; the service and `cgd eval` apply them.
    """

    backbone: str = "tf_efficientnet_lite0"
    descriptors: str = "SG"
    embedding_dim: int = 1536
    gem_p: float = 3.0
    learn_gem_p: bool = False
    num_classes: int = 0
    whitening: bool = False
    scales: tuple[float, ...] = (1.0,)
    qe_n: int = 0
    dba_n: int = 0
    preprocessing: Preprocessing = field(default_factory=Preprocessing)

    def __post_init__(self) -> None:
        letters = self.descriptors.upper()
        object.__setattr__(self, "descriptors", letters)
        if not 1 <= len(letters) <= 3 or set(letters) - DESCRIPTOR_LETTERS:
            raise ConfigError(
                f"descriptors must be 1 to 3 letters from S, M, G (e.g. 'SG'), got {self.descriptors!r}"
            )
        if len(set(letters)) != len(letters):
            raise ConfigError(f"descriptors must not repeat a letter, got {letters!r}")
        if self.embedding_dim <= 0 or self.embedding_dim % len(letters):
            raise ConfigError(
                f"embedding_dim {self.embedding_dim} must be a positive multiple of the "
                f"number of descriptors ({len(letters)} in {letters!r})"
            )
        if self.gem_p < 1.0:
            raise ConfigError(f"gem_p must be >= 1, got {self.gem_p}")
        object.__setattr__(self, "scales", checked_scales(self.scales))
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.qe_n < 0 or self.dba_n < 0:
            raise ConfigError(f"qe_n and dba_n must be >= 0, got {self.qe_n} and {self.dba_n}")

    @property
    def branch_dim(self) -> int:
        """Output size of each descriptor's projection (d / n)."""
        return self.embedding_dim // len(self.descriptors)

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    def with_changes(self, **changes: Any) -> CGDConfig:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, as stored in checkpoints."""
        data = asdict(self)
        data["preprocessing"]["mean"] = list(self.preprocessing.mean)
        data["preprocessing"]["std"] = list(self.preprocessing.std)
        # Options added after the first checkpoints are left out at their defaults, so the version
        # hash of a checkpoint written before they existed stays the same.
        if self.scales == (1.0,):
            del data["scales"]
        else:
            data["scales"] = list(self.scales)
        for name in ("whitening", "qe_n", "dba_n"):
            if not data[name]:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CGDConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config fields: {sorted(unknown)}")
        values = dict(data)
        pre = dict(values.pop("preprocessing", {}))
        for key in ("mean", "std"):
            if key in pre:
                pre[key] = tuple(float(v) for v in pre[key])
        return cls(**values, preprocessing=Preprocessing(**pre))
