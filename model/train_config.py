"""`TrainConfig`: one training recipe, shared by `cgd train`, `POST /train` and the trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from model.config import checked_scales
from model.splits import ValMode

Engine = Literal["auto", "cached", "full"]
WhiteningChoice = Literal["auto", "learned", "pca", "none"]
ExpansionChoice = Literal["auto", "none"]


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe. The defaults are the `cgd train` / `POST /train` recipe (docs/RESULTS.md)."""

    loss: str = "proxy_anchor"
    epochs: int = 60
    max_minutes: float | None = None
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 3e-4
    backbone_lr: float | None = None
    head_lr: float | None = None
    weight_decay: float = 1e-4
    batch_size: int = 64
    images_per_class: int = 4
    image_size: int | None = None
    descriptors: str | None = None
    embedding_dim: int | None = None
    warmup_epochs: int = 1
    freeze_bn: bool = True
    grad_clip: float | None = 10.0
    hflip: bool = False
    val_fraction: float = 0.2
    val_mode: ValMode = "auto"
    patience: int | None = 8
    plateau_epochs: int | None = 2  # no gain for this many epochs: best weights back, lr x0.1 (twice)
    keep_start_if_not_better: bool = True  # False: write the best trained weights even when worse
    engine: Engine = "auto"  # auto: cached when the backbone splits into trunk and tail, else full
    tail_stages: int = 3  # backbone stages trained by the cached engine (the trunk is frozen)
    cache_views: int | None = None  # None: as many (1 to 4) as a quarter of the budget builds
    cache_max_gib: float = 4.0  # disk bound of the feature cache; fewer views beyond it
    whitening: WhiteningChoice = "auto"
    expansion: ExpansionChoice = "auto"  # search defaults (qe_n, dba_n) chosen on validation; none: off
    scales: tuple[float, ...] = (1.0,)  # inference scales written into the model (multi-scale descriptors)
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    precision: str = "auto"
    eval_batch_size: int = 64
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.images_per_class < 2 or self.batch_size < 2 * self.images_per_class:
            raise ValueError(f"batch_size {self.batch_size} must hold at least 2 classes of "
                             f"images_per_class {self.images_per_class} (>= 2)")
        if self.optimizer not in ("adamw", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use adamw or adam")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.engine not in ("auto", "cached", "full"):
            raise ValueError(f"unknown engine {self.engine!r}; use auto, cached or full")
        if self.whitening not in ("auto", "learned", "pca", "none"):
            raise ValueError(f"unknown whitening {self.whitening!r}; use auto, learned, pca or none")
        if self.expansion not in ("auto", "none"):
            raise ValueError(f"unknown expansion {self.expansion!r}; use auto or none")
        if self.cache_views is not None and not 1 <= self.cache_views <= 16:
            raise ValueError(f"cache_views must be in [1, 16], got {self.cache_views}")
        object.__setattr__(self, "scales", checked_scales(self.scales))
        if self.plateau_epochs is not None and self.plateau_epochs < 1:
            raise ValueError(f"plateau_epochs must be >= 1 (or None), got {self.plateau_epochs}")
        if self.tail_stages < 1:
            raise ValueError(f"tail_stages must be >= 1, got {self.tail_stages}")

    @property
    def effective_warmup_epochs(self) -> int:
        """Heads-only epochs: the asked warm-up, fitted inside the epochs (1 epoch: no warm-up)."""
        return min(self.warmup_epochs, self.epochs - 1)

    @property
    def classes_per_batch(self) -> int:
        return self.batch_size // self.images_per_class

    @property
    def resolved_backbone_lr(self) -> float:
        return self.lr if self.backbone_lr is None else self.backbone_lr

    @property
    def resolved_head_lr(self) -> float:
        return 10 * self.lr if self.head_lr is None else self.head_lr
