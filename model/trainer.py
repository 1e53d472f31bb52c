"""Fine-tuning a CGD model on labelled images, with model selection on a validation hold-out.

`train(images, config, out=...)` splits a validation set off the given (training) images, measures
the start model on it, trains, validates after every epoch, and writes the best model to `out`:
the trained one only when it beats the start model on validation (higher MAP@R, ties broken by
R@1); otherwise the start model itself, and the result says `improved=False`.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.cgd import CGD
from model.checkpoint import load_checkpoint, save_checkpoint
from model.curves import write_curves
from model.data import LabelledImage, LabelledImageDataset, class_index, short_side_median
from model.default import default_model
from model.device import autocast, resolve_device, resolve_precision
from model.embedder import Embedder
from model.evaluation import evaluate, inference_dataset
from model.finetune import parameter_groups, set_backbone_trainable, set_train_mode, training_model
from model.losses import build_criterion
from model.sampler import ClassBalancedBatchSampler
from model.schedule import StepPlan, lr_factor, plan_steps
from model.splits import ValMode, split_validation
from model.transforms import train_transform

LOG = logging.getLogger(__name__)

Stopped = Literal["completed", "cancelled", "budget"]


class CancelFlag(Protocol):
    """threading.Event, multiprocessing.Event or anything with `is_set()`."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe. The defaults are the `cgd train` / `POST /train` recipe (docs/RESULTS.md)."""

    loss: str = "proxy_anchor"
    epochs: int = 30
    max_minutes: float | None = None
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-4
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
    patience: int | None = 4
    keep_start_if_not_better: bool = True  # False: write the best trained weights even when worse
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    precision: str = "auto"
    eval_batch_size: int = 64
    cache_images: bool = True
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
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")

    @property
    def classes_per_batch(self) -> int:
        return self.batch_size // self.images_per_class

    @property
    def resolved_backbone_lr(self) -> float:
        return self.lr if self.backbone_lr is None else self.backbone_lr

    @property
    def resolved_head_lr(self) -> float:
        return 10 * self.lr if self.head_lr is None else self.head_lr


@dataclass(frozen=True)
class Progress:
    """One training step's report. `eta_s` is the estimated time left, in seconds."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    lr: float
    images_per_s: float
    eta_s: float


@dataclass
class TrainResult:
    """What `train` wrote and why. Metrics are validation metrics (fractions in [0, 1])."""

    checkpoint: Path
    version: str
    baseline: dict[str, float]
    best: dict[str, float]
    improved: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: Stopped = "completed"
    kept_start_model: bool = False
    val_mode: str = "classes"
    image_size: int = 224


def auto_image_size(images: Sequence[LabelledImage], start_size: int) -> int:
    """3x the median shorter side, rounded to a multiple of 32, in [64, start model's size]:
    small images are upsampled (so the backbone's map keeps a few cells), large ones cost no
    more than the start model's size."""
    side = short_side_median(images)
    return int(min(start_size, max(64, 32 * round(3 * side / 32))))


def better(candidate: dict[str, float], reference: dict[str, float]) -> bool:
    """Higher MAP@R wins; ties are broken by Recall@1."""
    return (candidate["map@r"], candidate["recall@1"]) > (reference["map@r"], reference["recall@1"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_start(start: Path | None) -> CGD:
    """The model training starts from: a checkpoint, or the embedded default model."""
    return default_model() if start is None else load_checkpoint(start).model


class _Run:
    """The mutable state of one training run (model, optimiser, clocks, history)."""

    def __init__(self, images: Sequence[LabelledImage], config: TrainConfig, out: Path,
                 start: Path | None) -> None:
        self.config = config
        self.out = out
        self.device = resolve_device(config.device)
        self.dtype = resolve_precision(self.device, config.precision)
        seed_everything(config.seed)
        train_images, val_images, self.val_mode = split_validation(
            images, config.val_fraction, config.val_mode, config.seed)
        self.classes, labels = class_index(train_images)
        self.start_model = load_start(start)
        start_size = self.start_model.config.image_size
        self.image_size = config.image_size or auto_image_size(train_images, start_size)
        embedding_dim = config.embedding_dim or self.start_model.embedding_dim
        self.criterion = build_criterion(config.loss, num_classes=len(self.classes),
                                         embedding_dim=embedding_dim).to(self.device)
        # The auxiliary classifier exists only when the loss reads its logits.
        uses_logits = getattr(self.criterion, "classification", None) is not None
        self.model = training_model(self.start_model, num_classes=len(self.classes) if uses_logits else 0,
                                    image_size=self.image_size, descriptors=config.descriptors,
                                    embedding_dim=embedding_dim)
        self.model.to(self.device, memory_format=torch.channels_last)
        groups = parameter_groups(self.model, backbone_lr=config.resolved_backbone_lr,
                                  head_lr=config.resolved_head_lr, freeze_bn=config.freeze_bn)
        # The criterion scales its own groups from the model's base lr (Proxy Anchor: proxies x100).
        groups += list(self.criterion.param_groups(config.resolved_backbone_lr))
        for group in groups:
            group["initial_lr"] = group["lr"]
        optimiser_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimiser = optimiser_class(groups, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.sampler = ClassBalancedBatchSampler(labels, config.classes_per_batch, config.images_per_class,
                                                 seed=config.seed)
        dataset = LabelledImageDataset(train_images, labels, train_transform(
            self.model.config.preprocessing, hflip=config.hflip), cache=config.cache_images)
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=config.num_workers,
                                 persistent_workers=config.num_workers > 0)
        self.val_images = val_images
        self.val_trained = inference_dataset(Embedder(self.model, "training", device=self.device),
                                             val_images, cache=config.cache_images)
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self.epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best: dict[str, float] = {}
        self.baseline: dict[str, float] = {}
        self.val_s = 0.0
        self.train_s = 0.0
        self.plan = plan_steps(config.epochs, len(self.sampler))
        LOG.info("training on %d images of %d classes, validating on %d images (%s hold-out), "
                 "%d px, %s on %s", len(train_images), len(self.classes), len(val_images),
                 self.val_mode, self.image_size, self.dtype, self.device)

    def validate(self, model: CGD) -> dict[str, float]:
        began = time.perf_counter()
        if model is self.model:
            dataset = self.val_trained
        else:
            dataset = inference_dataset(Embedder(model, "start", device=self.device), self.val_images)
        metrics = evaluate(model, dataset, batch_size=self.config.eval_batch_size, device=str(self.device),
                           precision=self.config.precision)
        self.val_s = time.perf_counter() - began
        return metrics

    def set_lr(self) -> float:
        factor = lr_factor(self.step, self.plan.planned_steps)
        warm = self.epoch < self.config.warmup_epochs
        for group in self.optimiser.param_groups:
            frozen = warm and group.get("name") == "backbone"
            group["lr"] = 0.0 if frozen else group["initial_lr"] * factor
        return self.config.resolved_head_lr * factor

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        with autocast(self.device, self.dtype):
            output = self.model.forward_train(images)
        loss = self.criterion(output, labels).total
        self.optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimiser)
            parameters = [p for g in self.optimiser.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(parameters, self.config.grad_clip)
        self.scaler.step(self.optimiser)
        self.scaler.update()
        return float(loss.detach())

    def end_epoch(self, losses: list[float], images_per_s: float) -> bool:
        """Validate, record, keep the best weights; True when patience has run out."""
        metrics = self.validate(self.model)
        row = {"epoch": self.epoch + 1, "step": self.step, "loss": float(np.mean(losses)) if losses else None,
               "val": metrics, "seconds": round(self.train_s, 1), "images_per_s": round(images_per_s, 1)}
        self.history.append(row)
        if not self.best or better(metrics, self.best):
            self.best = metrics
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        LOG.info("epoch %d: loss %.4f, val R@1 %.4f MAP@R %.4f (start model %.4f / %.4f)", row["epoch"],
                 row["loss"] or float("nan"), metrics["recall@1"], metrics["map@r"],
                 self.baseline["recall@1"], self.baseline["map@r"])
        patience = self.config.patience
        if patience is None:
            return False
        best_epoch = max(range(len(self.history)), key=lambda i: (
            self.history[i]["val"]["map@r"], self.history[i]["val"]["recall@1"], -i))
        return len(self.history) - 1 - best_epoch >= patience


def _state_path(out: Path) -> Path:
    return out.with_suffix(".resume.pt")


def _save_state(run: _Run) -> None:
    torch.save({"config": asdict(run.config), "model": run.model.state_dict(),
                "criterion": run.criterion.state_dict(), "optimiser": run.optimiser.state_dict(),
                "epoch": run.epoch, "step": run.step, "history": run.history, "best": run.best,
                "best_state": run.best_state, "baseline": run.baseline, "train_s": run.train_s,
                "planned_steps": run.plan.planned_steps, "budget_limited": run.plan.budget_limited},
               _state_path(run.out))


def _restore_state(run: _Run) -> bool:
    path = _state_path(run.out)
    if not path.is_file():
        return False
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["config"] != asdict(run.config):
        LOG.warning("%s was written for another config; starting afresh", path)
        return False
    run.model.load_state_dict(state["model"])
    run.criterion.load_state_dict(state["criterion"])
    run.optimiser.load_state_dict(state["optimiser"])
    run.epoch, run.step, run.history = state["epoch"], state["step"], state["history"]
    run.best, run.best_state, run.baseline = state["best"], state["best_state"], state["baseline"]
    run.train_s = state["train_s"]
    run.plan = StepPlan(state["planned_steps"], len(run.sampler), state["budget_limited"])
    LOG.info("resumed from %s at epoch %d, step %d", path, run.epoch, run.step)
    return True


def train(
    images: Sequence[LabelledImage],
    config: TrainConfig,
    *,
    out: Path,
    start: Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: CancelFlag | None = None,
    resume: bool = False,
) -> TrainResult:
    """Fine-tune from `start` (a checkpoint; None = the embedded default) on `images`, write the
    selected model to `out` and its curves beside it. With `resume`, continue from the state
    `<out>.resume.pt` that a previous, interrupted call with the same config left."""
    t0 = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run = _Run(images, config, out, start)
    budget_s = None if config.max_minutes is None else 60.0 * config.max_minutes
    if not (resume and _restore_state(run)):
        run.baseline = run.validate(run.start_model)
        LOG.info("start model on validation: R@1 %.4f MAP@R %.4f", run.baseline["recall@1"],
                 run.baseline["map@r"])
    began = t0 - run.train_s
    stopped: Stopped = "completed"
    trained_images, trained_s = 0, 0.0  # after warm-up: the speed the budget plan is made from

    def replan(images_per_s: float) -> None:
        """Fit the remaining steps to the budget at `images_per_s`; never after the first LR drop,
        so the speed of a shared machine can move the drops only while they lie ahead."""
        if budget_s is None or run.step >= 0.6 * run.plan.planned_steps:
            return
        run.plan = plan_steps(config.epochs, len(run.sampler), budget_s=budget_s,
                              elapsed_s=time.perf_counter() - began, steps_done=run.step,
                              steps_per_s=images_per_s / config.batch_size, val_s=run.val_s)
        bar.total = run.plan.planned_steps
        LOG.info("time budget %.1f min: %d steps planned at %.1f images/s", config.max_minutes,
                 run.plan.planned_steps, images_per_s)
    bar = tqdm(total=run.plan.planned_steps, initial=run.step, disable=not config.progress_bar,
               desc="train", unit="step", dynamic_ncols=True)
    while run.step < run.plan.planned_steps and stopped == "completed":
        run.sampler.set_epoch(run.epoch)
        set_backbone_trainable(run.model, run.epoch >= config.warmup_epochs, freeze_bn=config.freeze_bn)
        set_train_mode(run.model, freeze_bn=config.freeze_bn)
        losses: list[float] = []
        window_start, window_images = time.perf_counter(), 0
        for batch, labels in run.loader:
            lr = run.set_lr()
            losses.append(run.train_step(batch, labels))
            run.step += 1
            window_images += len(labels)
            images_per_s = window_images / max(1e-9, time.perf_counter() - window_start)
            elapsed = time.perf_counter() - began
            warm = run.epoch < config.warmup_epochs
            if not warm and trained_s == 0.0 and len(losses) == 5:
                replan(images_per_s)
            eta = (run.plan.planned_steps - run.step) * config.batch_size / max(images_per_s, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
            if on_progress is not None:
                on_progress(Progress(run.epoch + 1, run.plan.epochs, run.step, run.plan.planned_steps,
                                     losses[-1], lr, images_per_s, eta))
            if cancel is not None and cancel.is_set():
                stopped = "cancelled"
                break
            if budget_s is not None and elapsed + run.val_s >= budget_s:
                stopped = "budget"
                break
            if run.step >= run.plan.planned_steps:
                break
        run.train_s = time.perf_counter() - began
        if stopped == "cancelled":
            break
        window_s = time.perf_counter() - window_start
        if run.epoch >= config.warmup_epochs:
            trained_images, trained_s = trained_images + window_images, trained_s + window_s
        exhausted = run.end_epoch(losses, window_images / max(1e-9, window_s))
        if trained_s > 0:
            replan(trained_images / trained_s)
        run.epoch += 1
        _save_state(run)
        if exhausted and run.step < run.plan.planned_steps:
            LOG.info("no validation improvement for %d epochs: stopping early", config.patience)
            break
    bar.close()
    if stopped == "completed" and run.plan.budget_limited:
        stopped = "budget"
    return _finish(run, stopped)


def _finish(run: _Run, stopped: Stopped) -> TrainResult:
    """Write the selected model, the curves, and drop the resume state."""
    improved = bool(run.best) and better(run.best, run.baseline)
    extra = {"train_config": asdict(run.config), "baseline": run.baseline, "best": run.best,
             "improved": improved, "stopped": stopped, "val_mode": run.val_mode, "history": run.history}
    use_trained = run.best_state is not None and (improved or not run.config.keep_start_if_not_better)
    if use_trained:
        run.model.load_state_dict(run.best_state)
        version = save_checkpoint(run.out, run.model.cpu().eval(), classes=run.classes, metrics=run.best,
                                  extra=extra)
        if not improved:
            LOG.warning("training did not beat the start model on validation (MAP@R %.4f vs %.4f): "
                        "writing the trained model as asked", run.best["map@r"], run.baseline["map@r"])
    else:
        LOG.warning("training did not beat the start model on validation (MAP@R %.4f vs %.4f): "
                    "keeping the start model", run.best.get("map@r", math.nan), run.baseline["map@r"])
        version = save_checkpoint(run.out, copy.deepcopy(run.start_model).cpu().eval(),
                                  classes=run.classes, metrics=run.baseline, extra=extra)
    write_curves(run.history, run.out, run.baseline)
    _state_path(run.out).unlink(missing_ok=True)
    return TrainResult(checkpoint=run.out, version=version, baseline=run.baseline,
                       best=run.best or dict(run.baseline), improved=improved, history=run.history,
                       stopped=stopped, kept_start_model=not use_trained, val_mode=run.val_mode,
                       image_size=run.image_size)
