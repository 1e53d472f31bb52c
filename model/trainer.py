"""Fine-tuning a CGD model on labelled images, with model selection on a validation hold-out.

`train(images, config, out=...)` splits a validation set off the given (training) images, measures
the start model on it, trains (by default from a trunk feature cache: `model.train_engines`),
validates after every epoch, fits learned whitening when it helps, and writes the best model to
`out`: the trained one only when it beats the start model on validation by more than the
validation set's noise (`model.selection`); otherwise the start model itself, with `improved=False`.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from tqdm import tqdm

from index.postprocess import apply_whitening
from model.cache_budget import (
    VIEW0_BUDGET_SHARE,
    affordable_images,
    class_balanced_subset,
    trunk_images_per_s,
)
from model.cgd import CGD
from model.checkpoint import load_checkpoint, save_checkpoint
from model.curves import write_curves
from model.data import LabelledImage, class_index, short_side_median
from model.default import default_model
from model.device import resolve_device, resolve_precision
from model.distributed import SINGLE, Ranks
from model.embedder import Embedder
from model.evaluation import embed_dataset, inference_dataset
from model.expansion import choose_expansion
from model.finetune import parameter_groups, set_train_mode, training_model
from model.losses import build_criterion
from model.metrics import query_scores
from model.sampler import ClassBalancedBatchSampler
from model.schedule import StepPlan, lr_factor, plan_steps
from model.selection import better, choose_whitening, map_gain, recall_fell
from model.splits import split_validation
from model.stages import StageSplit, split_backbone
from model.train_config import TrainConfig
from model.train_engines import TrainEngine, build_engine

LOG = logging.getLogger(__name__)
PLATEAU_DECAYS = 2  # at most this many x0.1 learning-rate decays at validation plateaus

Stopped = Literal["completed", "converged", "cancelled", "budget"]  # converged: the plateau rule ended it


class CancelFlag(Protocol):
    """threading.Event, multiprocessing.Event or anything with `is_set()`."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class Progress:
    """One report. `phase` is "caching" (steps count the images the trunk runs over, of those planned
    within the budget) or "training" (optimiser steps); `eta_s` is the estimated time left, in seconds:
    with a time budget, at least what is left of it while caching. A report of phase
    "validated" follows each epoch's validation, with the epoch's history row in `epoch_record`."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float | None
    lr: float
    images_per_s: float
    eta_s: float
    phase: str = "training"
    epoch_record: dict[str, Any] | None = None


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
    recipe: dict[str, Any] = field(default_factory=dict)


def auto_image_size(images: Sequence[LabelledImage], start_size: int) -> int:
    """3x the median shorter side, rounded to a multiple of 32, in [64, start model's size]:
    small images are upsampled (so the backbone's map keeps a few cells), large ones cost no
    more than the start model's size."""
    side = short_side_median(images)
    return int(min(start_size, max(64, 32 * round(3 * side / 32))))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


StartEmbedder = Callable[[CGD], Embedder]


def load_start(start: Path | None) -> CGD:
    """The model training starts from: a checkpoint, or the embedded default model."""
    return default_model() if start is None else load_checkpoint(start).model


class _Run:
    """The mutable state of one training run (model, optimiser, engine, clocks, history)."""

    def __init__(self, images: Sequence[LabelledImage], config: TrainConfig, out: Path,
                 start: Path | None, ranks: Ranks = SINGLE,
                 start_embedder: StartEmbedder | None = None) -> None:
        self.config = config
        self.out = out
        self.ranks = ranks
        self.device = ranks.device(resolve_device(config.device))
        self.dtype = resolve_precision(self.device, config.precision)
        seed_everything(config.seed)
        self.train_images, self.val_images, self.val_mode = split_validation(
            images, config.val_fraction, config.val_mode, config.seed)
        self.classes, self.labels = class_index(self.train_images)
        _, self.val_labels = class_index(self.val_images)
        self.start_model = load_start(start)
        self.image_size = config.image_size or self.auto_image_size()
        embedding_dim = config.embedding_dim or self.start_model.embedding_dim
        self.criterion = build_criterion(config.loss, num_classes=len(self.classes),
                                         embedding_dim=embedding_dim).to(self.device)
        # The auxiliary classifier exists only when the loss reads its logits.
        uses_logits = getattr(self.criterion, "classification", None) is not None
        self.model = training_model(self.start_model, num_classes=len(self.classes) if uses_logits else 0,
                                    image_size=self.image_size, descriptors=config.descriptors,
                                    embedding_dim=embedding_dim)
        self.model.set_whitening(None)
        self.model.to(self.device, memory_format=torch.channels_last)
        ranks.broadcast_weights(self.model, self.criterion)
        groups = parameter_groups(self.model, backbone_lr=config.resolved_backbone_lr,
                                  head_lr=config.resolved_head_lr, freeze_bn=config.freeze_bn)
        # The criterion scales its own groups from the model's base lr (Proxy Anchor: proxies x100).
        groups += list(self.criterion.param_groups(config.resolved_backbone_lr))
        for group in groups:
            group["initial_lr"] = group["lr"]
        optimiser_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimiser = optimiser_class(groups, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.sampler, self.plan = self.sample_labels()
        self.engine: TrainEngine | None = None
        self.cache_views = 0
        self.offered_images = len(self.train_images)  # before `fit_to_budget` takes a subset
        self.decays = 0  # learning-rate decays at validation plateaus so far (`decay_on_plateau`)
        self.decayed_at = -1  # the epoch (history index) of the last plateau decay
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self.epoch = 0
        self.best_state: dict[str, dict[str, torch.Tensor]] | None = None  # model and criterion
        self.best: dict[str, float] = {}
        self.best_at = -1  # history index of the best weights; -1: the weights training started from
        self.best_ap: np.ndarray | None = None  # the best weights' AP@R of each validation query
        self.last_ap: np.ndarray | None = None  # the last epoch's
        self.baseline: dict[str, float] = {}
        self.baseline_ap: np.ndarray | None = None
        self.baseline_hits: np.ndarray | None = None  # the start model's top-1 hit of each validation query
        self.start_embedder = start_embedder  # the start model's serving engine (`train`)
        self.baseline_engine = "feature cache"  # what embedded the validation images for the baseline
        self.val_s = 0.0
        self.train_s = 0.0
        LOG.info("training on %d images of %d classes, validating on %d images (%s hold-out), "
                 "%d px, %s on %s", len(self.train_images), len(self.classes), len(self.val_images),
                 self.val_mode, self.image_size, self.dtype, self.device)

    def auto_image_size(self) -> int:
        """The start model's size when the cached engine will run: the pretrained trunk sees objects
        at the scale it was trained for, and the cache takes away the cost of large inputs
        (docs/RESULTS.md: 32 px images trained at 96 px lost test R@1 that 224 px kept). The full
        engine keeps the cheaper `auto_image_size`."""
        start_size = self.start_model.config.image_size
        cached = self.config.engine != "full" and split_backbone(
            self.start_model.backbone, self.config.tail_stages) is not None
        return start_size if cached else auto_image_size(self.train_images, start_size)

    def split(self) -> StageSplit | None:
        """The trunk/tail split of the cached engine, or None when the full engine is to run."""
        if self.config.engine == "full":
            return None
        split = split_backbone(self.model.backbone, self.config.tail_stages)
        usable = split is not None and self.image_size % split.stride == 0
        if not usable:
            if self.config.engine == "cached":
                raise ValueError(f"the cached engine needs a supported backbone and an image size that is a "
                                 f"multiple of its trunk's stride; got {self.model.config.backbone} at "
                                 f"{self.image_size} px")
            return None
        return split

    def sample_labels(self) -> tuple[ClassBalancedBatchSampler, StepPlan]:
        """The batch sampler over `self.labels` (this rank's share of each batch) and its epochs' plan."""
        config = self.config
        sampler = ClassBalancedBatchSampler(self.labels, config.classes_per_batch, config.images_per_class,
                                            seed=config.seed, rank=self.ranks.rank,
                                            world_size=self.ranks.world_size)
        return sampler, plan_steps(config.epochs, len(sampler))

    def fit_to_budget(self, split: StageSplit, budget_s: float) -> None:
        """Train on a class-balanced subset of the training images when caching view 0 of all of them
        would take more than its share of the budget (`model.cache_budget`; rank 0 measures)."""
        rate = self.ranks.decide(trunk_images_per_s(
            split.trunk, self.train_images, self.model.config.preprocessing, stride=split.stride,
            device=self.device, dtype=self.dtype) if self.ranks.is_main else None)
        count = affordable_images(budget_s, rate, len(self.val_images))
        if count >= len(self.train_images):
            return
        self.train_images = class_balanced_subset(self.train_images, count, self.config.seed)
        _, self.labels = class_index(self.train_images)
        self.sampler, self.plan = self.sample_labels()
        LOG.info("the trunk caches %.0f images/s: training on %d of the %d training images (every class "
                 "kept) so that caching stays within %.0f s", rate, len(self.train_images),
                 self.offered_images, budget_s * VIEW0_BUDGET_SHARE)

    def validate(self) -> tuple[dict[str, float], np.ndarray]:
        """Validation metrics of the model being trained, and the AP@R of each validation query."""
        began = time.perf_counter()
        metrics, per_query = query_scores(self.engine.val_embeddings(), self.val_labels.numpy())
        self.val_s = time.perf_counter() - began
        return metrics, per_query.ap

    def validate_start(self) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """The start model as it serves (its own image size, its whitening) on the validation images:
        from the feature cache when it shares the trunk and size, else by a full forward on its serving
        engine (`start_embedder`; torch on the training device without one). Its metrics, and each
        query's AP@R and top-1 hit."""
        embeddings = self.engine.val_embeddings_of(self.start_model)
        if embeddings is None:
            embedder = (self.start_embedder(self.start_model) if self.start_embedder is not None
                        else Embedder(self.start_model, "start", device=self.device))
            self.baseline_engine = f"{embedder.runtime} {embedder.precision}"
            embeddings, _ = embed_dataset(embedder, inference_dataset(embedder, self.val_images),
                                          self.config.eval_batch_size)
        metrics, per_query = query_scores(embeddings, self.val_labels.numpy())
        return metrics, per_query.ap, per_query.top1

    def set_lr(self) -> float:
        factor = min(lr_factor(self.step, self.plan.planned_steps), 0.1 ** self.decays)
        warm = self.epoch < self.config.effective_warmup_epochs
        for group in self.optimiser.param_groups:
            frozen = warm and group.get("name") == "backbone"
            group["lr"] = 0.0 if frozen else group["initial_lr"] * factor
        return self.config.resolved_head_lr * factor

    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        output = self.engine.forward(inputs)
        loss = self.criterion(output, labels.to(self.device, non_blocking=True)).total
        self.optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.ranks.average_gradients(p for group in self.optimiser.param_groups for p in group["params"])
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimiser)
            parameters = [p for g in self.optimiser.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(parameters, self.config.grad_clip)
        self.scaler.step(self.optimiser)
        self.scaler.update()
        return float(loss.detach())

    def choose_step_precision(self, steps: int = 3) -> float:
        """Seconds a step, in the precision asked, or with `precision="auto"` on a CPU in the faster of
        the automatic one and fp32: the precision that makes the trunk fast need not make a training
        step fast (bf16 training keeps depthwise convolutions in fp32, `training_autocast`; how the
        two compare depends on the CPU: docs/RESULTS.md). Each candidate is timed on the same real
        batches, as forward and backward with the backbone trainable and no weight changed (gradients
        are dropped). Rank 0 decides."""
        candidates = [self.dtype]
        if self.config.precision == "auto" and self.device.type == "cpu" and self.dtype != torch.float32:
            candidates.append(torch.float32)
        self.engine.set_trainable(True)
        set_train_mode(self.model, freeze_bn=True)
        # the same batches for every candidate; a tiny epoch repeats its own
        batches = list(itertools.islice(itertools.cycle(self.engine.batches(self.sampler)), steps + 1))
        timings = {}
        for dtype in candidates:
            self.engine.dtype = dtype
            seconds = []
            for inputs, labels in batches:
                began = time.perf_counter()
                self.criterion(self.engine.forward(inputs), labels.to(self.device)).total.backward()
                seconds.append(time.perf_counter() - began)
            timings[dtype] = float(np.median(seconds[1:]))  # the first pays the warm-up
        self.optimiser.zero_grad(set_to_none=True)
        chosen = self.ranks.decide(min(timings, key=timings.get))
        self.engine.dtype = chosen
        if len(candidates) > 1:
            LOG.info("a training step takes %s: training in %s", ", ".join(
                f"{t:.2f} s in {str(d).removeprefix('torch.')}" for d, t in timings.items()),
                str(chosen).removeprefix("torch."))
        return timings[chosen]

    def keep_best(self, metrics: dict[str, float], per_query: np.ndarray, at: int) -> None:
        """The current weights (model and loss parameters) become the best, validated at history `at`."""
        self.best, self.best_ap, self.best_at = metrics, per_query, at
        self.best_state = {name: {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                           for name, module in (("model", self.model), ("criterion", self.criterion))}

    def validate_reference(self) -> None:
        """Validate the weights training starts from; unless resumed, they are the first best, so that
        a run that only makes them worse goes back to them (also times one validation pass)."""
        metrics, per_query = self.ranks.decide(self.validate() if self.ranks.is_main else None)
        if self.best_state is None:
            self.keep_best(metrics, per_query, at=-1)

    def end_epoch(self, losses: list[float], images_per_s: float) -> bool:
        """Validate, record, keep the best weights; True when patience has run out. Rank 0 alone
        validates: every rank records its metrics (the ranks' weights are the same)."""
        metrics, self.last_ap = self.ranks.decide(self.validate() if self.ranks.is_main else None)
        row = {"epoch": self.epoch + 1, "step": self.step, "loss": float(np.mean(losses)) if losses else None,
               "val": metrics, "seconds": round(self.train_s, 1), "images_per_s": round(images_per_s, 1)}
        self.history.append(row)
        if better(metrics, self.best):
            self.keep_best(metrics, self.last_ap, at=len(self.history) - 1)
        LOG.info("epoch %d: loss %.4f, val R@1 %.4f MAP@R %.4f (start model %.4f / %.4f)", row["epoch"],
                 row["loss"] or float("nan"), metrics["recall@1"], metrics["map@r"],
                 self.baseline["recall@1"], self.baseline["map@r"])
        patience = self.config.patience
        return patience is not None and len(self.history) - 1 - self.best_at >= patience

    def fell_below_start(self) -> bool:
        """Whether no epoch has beaten the start's weights and the last one is below them beyond noise
        (`map_gain`): the learning rate is too high for this data. A dip after a trained best is left
        to the plateau rule (a high rate on data far from the start model dips and recovers)."""
        if self.best_at >= 0 or self.best_ap is None or self.last_ap is None:
            return False
        return map_gain(self.best_ap, self.last_ap, seed=self.config.seed).significant

    def decay_on_plateau(self) -> bool:
        """Go back to the best weights (the start's when no epoch beat them) and divide the learning
        rate by 10 after `plateau_epochs` epochs without a validation gain (counted from the best epoch
        or the last decay), or at once when an epoch fell below the start's weights beyond noise. So
        the budget refines the best model instead of drifting away from it: data close to the start
        model's peaks within a few epochs, or falls at the first rate; data far from it keeps improving
        and never plateaus. True when the rate was already divided `PLATEAU_DECAYS` times: nothing is
        left to gain, stop."""
        plateau = self.config.plateau_epochs
        if plateau is None or self.best_state is None:
            return False
        last = len(self.history) - 1
        fell = self.fell_below_start()
        if not fell and last - max(self.best_at, self.decayed_at) < plateau:
            return False
        if self.decays >= PLATEAU_DECAYS:
            return True
        self.model.load_state_dict(self.best_state["model"])
        self.criterion.load_state_dict(self.best_state["criterion"])
        self.decays += 1
        self.decayed_at = last
        LOG.info("%s: back to the weights of %s, learning rate x%g",
                 "validation fell below the start's" if fell else f"no validation gain for {plateau} epochs",
                 f"epoch {self.best_at + 1}" if self.best_at >= 0 else "the start", 0.1 ** self.decays)
        return False

    def init_criterion(self) -> None:
        """Per-class loss parameters (Proxy Anchor's proxies) start at the class centres of the start
        model's embeddings of the training images (rank 0 computes them for every rank)."""
        if not self.criterion.ranking.per_class_parameters:
            return
        embeddings = self.ranks.decide(self.engine.train_embeddings() if self.ranks.is_main else None)
        self.criterion.ranking.init_from_embeddings(torch.from_numpy(embeddings), self.labels)


def _state_path(out: Path) -> Path:
    return out.with_suffix(".resume.pt")


def _save_state(run: _Run) -> None:
    if not run.ranks.is_main:
        return
    torch.save({"config": asdict(run.config), "model": run.model.state_dict(),
                "criterion": run.criterion.state_dict(), "optimiser": run.optimiser.state_dict(),
                "epoch": run.epoch, "step": run.step, "history": run.history, "best": run.best,
                "best_state": run.best_state, "best_at": run.best_at,
                "best_ap": None if run.best_ap is None else torch.from_numpy(run.best_ap),
                "baseline": run.baseline, "train_s": run.train_s,
                "planned_steps": run.plan.planned_steps, "budget_limited": run.plan.budget_limited,
                "decays": run.decays, "decayed_at": run.decayed_at},
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
    run.best_at = state["best_at"]
    run.best_ap = None if state["best_ap"] is None else state["best_ap"].numpy()
    run.train_s = state["train_s"]
    run.decays, run.decayed_at = state.get("decays", 0), state.get("decayed_at", -1)
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
    ranks: Ranks = SINGLE,
    start_embedder: StartEmbedder | None = None,
) -> TrainResult:
    """Fine-tune from `start` (a checkpoint; None = the embedded default) on `images`, write the
    selected model to `out` and its curves beside it (the feature cache lives in `<out>.cache/`
    while training runs). With `resume`, continue from the state `<out>.resume.pt` that a previous,
    interrupted call with the same config left. With `ranks` of a data-parallel run (`model.distributed`),
    every process calls this on the same images: each trains on its share of every batch, rank 0
    validates, selects and writes, and every process returns rank 0's result. `start_embedder(model)`
    puts the start model on the engine that serves it (e.g. the service's ONNX runtime and its cached
    export), for the start's validation when the feature cache cannot give it."""
    t0 = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run = _Run(images, config, out, start, ranks, start_embedder)
    budget_s = None if config.max_minutes is None else 60.0 * config.max_minutes
    report = on_progress or (lambda progress: None)

    def cancelled() -> bool:
        return cancel is not None and cancel.is_set()

    cache_dir = out.with_suffix(".cache")

    def caching(done: int, planned: int, rate: float, views: int) -> None:
        """With a budget the job ends with it, so its ETA is what is left of it from the first report."""
        left = (planned - done) / max(rate, 1e-9)
        if budget_s is not None:
            left = max(left, budget_s - (time.perf_counter() - t0))
        report(Progress(0, run.plan.epochs, done, planned, None, 0.0, rate * views, left, phase="caching"))

    try:
        split = run.split()
        if split is not None and budget_s is not None:
            run.fit_to_budget(split, budget_s)
        run.engine = build_engine(run.model, config, run.train_images, run.labels, run.val_images,
                                  device=run.device, dtype=run.dtype, split=split, budget_s=budget_s,
                                  cache_dir=cache_dir, report=caching, cancelled=cancelled, ranks=ranks)
        run.cache_views = getattr(run.engine, "views", 0)
        if run.engine is None:
            return _finish(run, "cancelled", cache_dir)
        step_s = run.choose_step_precision()  # before any validation, so that all use one precision
        run.baseline, run.baseline_ap, run.baseline_hits = ranks.decide(
            run.validate_start() if ranks.is_main else None)
        if not (resume and _restore_state(run)):
            run.init_criterion()
            LOG.info("start model on validation: R@1 %.4f MAP@R %.4f", run.baseline["recall@1"],
                     run.baseline["map@r"])
        return _train_loop(run, budget_s, t0, step_s, report, cancelled, cache_dir)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def _train_loop(run: _Run, budget_s: float | None, t0: float, step_s: float,
                report: Callable[[Progress], None], cancelled: Callable[[], bool],
                cache_dir: Path) -> TrainResult:
    config = run.config
    run.validate_reference()
    began = t0 - run.train_s

    def replan(steps_per_s: float) -> None:
        """Fit the remaining steps to the budget; never after the first LR drop, so the speed of a
        shared machine can move the drops only while they lie ahead."""
        if run.step >= 0.6 * run.plan.planned_steps and run.step > 0:
            return
        run.plan = run.ranks.decide(plan_steps(config.epochs, len(run.sampler), budget_s=budget_s,
                                               elapsed_s=time.perf_counter() - began, steps_done=run.step,
                                               steps_per_s=steps_per_s, val_s=run.val_s))
        bar.total = run.plan.planned_steps

    bar = tqdm(total=run.plan.planned_steps, initial=run.step,
               disable=not config.progress_bar or not run.ranks.is_main,
               desc=f"train ({run.engine.name})", unit="step", dynamic_ncols=True)
    replan(1.0 / step_s)
    LOG.info("%s engine, %d px: %d steps planned (%.2f s a step measured)%s", run.engine.name,
             run.image_size, run.plan.planned_steps, step_s,
             f" within {config.max_minutes} min" if budget_s else "")
    stopped: Stopped = "completed"
    trained_steps, trained_s = 0, 0.0  # after warm-up: the speed the budget plan is made from
    while run.step < run.plan.planned_steps and stopped == "completed":
        run.sampler.set_epoch(run.epoch)
        warm = run.epoch < config.effective_warmup_epochs
        run.engine.set_trainable(not warm)
        set_train_mode(run.model, freeze_bn=config.freeze_bn)
        losses: list[float] = []
        window_start, window_images = time.perf_counter(), 0
        for batch, labels in run.engine.batches(run.sampler):
            lr = run.set_lr()
            losses.append(run.train_step(batch, labels))
            run.step += 1
            window_images += len(labels)
            images_per_s = window_images / max(1e-9, time.perf_counter() - window_start)
            steps_per_s = images_per_s / len(labels) if warm or not trained_s else trained_steps / trained_s
            eta = (run.plan.planned_steps - run.step) / max(steps_per_s, 1e-9) + run.val_s * max(
                0, run.plan.epochs - run.epoch)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
            progress = Progress(run.epoch + 1, run.plan.epochs, run.step, run.plan.planned_steps,
                                losses[-1], lr, images_per_s, eta)
            report(progress)
            over_budget = budget_s is not None and time.perf_counter() - began + run.val_s >= budget_s
            stopped = run.ranks.decide("cancelled" if cancelled() else "budget" if over_budget
                                       else "completed")
            if stopped != "completed":
                break
            if run.step >= run.plan.planned_steps:
                break
        run.train_s = time.perf_counter() - began
        if stopped == "cancelled":
            break
        window_s = time.perf_counter() - window_start
        if not warm:
            trained_steps, trained_s = trained_steps + len(losses), trained_s + window_s
        exhausted = run.end_epoch(losses, window_images / max(1e-9, window_s)) or run.decay_on_plateau()
        if losses:  # the epoch's last report again, with its validation
            report(replace(progress, phase="validated", epoch_record=run.history[-1]))
        if trained_s > 0:
            replan(trained_steps / trained_s)
        run.epoch += 1
        _save_state(run)
        if exhausted and run.step < run.plan.planned_steps:
            LOG.info("no further validation gain: stopping early")
            stopped = "converged"
            break
    bar.close()
    if stopped == "completed" and run.plan.budget_limited:
        stopped = "budget"
    return _finish(run, stopped, cache_dir)


def _finish(run: _Run, stopped: Stopped, cache_dir: Path) -> TrainResult:
    """Select (whitening, the promotion rule), write the model and the curves, drop the resume state:
    on rank 0, whose result every rank returns."""
    if not run.ranks.is_main:
        return run.ranks.decide(None)
    precision = str(run.engine.dtype).removeprefix("torch.") if run.engine else None
    recipe: dict[str, Any] = {"engine": run.engine.name if run.engine else None, "image_size": run.image_size,
                              "cache_views": run.cache_views, "steps": run.step, "epochs": run.epoch,
                              "train_images": len(run.train_images), "offered_images": run.offered_images,
                              "val_images": len(run.val_images),
                              "whitening": None, "train_seconds": round(run.train_s, 1), "stopped": stopped,
                              "step_precision": precision, "baseline_engine": run.baseline_engine}
    improved = False
    # The best weights are the start's when no epoch beat them: whitening may still improve them, but a
    # run cancelled before any epoch beat them keeps the start model at once.
    selecting = run.best_state is not None and (run.best_at >= 0 or stopped != "cancelled")
    if selecting:
        run.model.load_state_dict(run.best_state["model"])
        plain = run.engine.val_embeddings()
        val_labels = run.val_labels.numpy()
        fitted = None
        if run.config.whitening != "none":
            fitted = choose_whitening(run.engine.train_embeddings(), run.labels.numpy(), plain, val_labels,
                                      run.config.whitening, seed=run.config.seed)
        if fitted is not None:
            run.model.set_whitening(torch.from_numpy(fitted.mean), torch.from_numpy(fitted.projection))
            plain = apply_whitening(plain, fitted)
            recipe["whitening"] = fitted.kind
        run.best, final = query_scores(plain, val_labels)
        gain = map_gain(final.ap, run.baseline_ap, seed=run.config.seed)
        improved = gain.significant and not recall_fell(final.top1, run.baseline_hits, seed=run.config.seed)
        recipe["map_gain"] = {"mean": round(gain.mean, 4), "lower": round(gain.lower, 4),
                              "queries": gain.queries}
    extra = {"train_config": asdict(run.config), "baseline": run.baseline, "best": run.best,
             "improved": improved, "stopped": stopped, "val_mode": run.val_mode, "history": run.history,
             "recipe": recipe}
    use_trained = selecting and (improved or not run.config.keep_start_if_not_better)
    if use_trained:
        search = {"qe_n": 0, "dba_n": 0}
        if run.config.expansion == "auto":
            chosen = choose_expansion(plain, val_labels, seed=run.config.seed)
            search = {"qe_n": chosen.qe_n, "dba_n": chosen.dba_n}
            recipe["search_defaults"] = {**search, "map@r": round(chosen.metrics["map@r"], 4)}
        run.model.config = run.model.config.with_changes(scales=run.config.scales, **search)
        version = save_checkpoint(run.out, run.model.cpu().eval(), classes=run.classes, metrics=run.best,
                                  extra=extra)
        if not improved:
            LOG.warning("training did not beat the start model beyond validation noise: writing the "
                        "trained model as asked")
    else:
        LOG.warning("training did not beat the start model beyond validation noise (MAP@R %.4f vs %.4f): "
                    "keeping the start model", run.best.get("map@r", math.nan),
                    run.baseline.get("map@r", math.nan))
        version = save_checkpoint(run.out, copy.deepcopy(run.start_model).cpu().eval(),
                                  classes=run.classes, metrics=run.baseline, extra=extra)
    if run.history:
        write_curves(run.history, run.out, run.baseline)
    _state_path(run.out).unlink(missing_ok=True)
    return run.ranks.decide(TrainResult(
        checkpoint=run.out, version=version, baseline=run.baseline, best=run.best or dict(run.baseline),
        improved=improved, history=run.history, stopped=stopped, kept_start_model=not use_trained,
        val_mode=run.val_mode, image_size=run.image_size, recipe=recipe))
