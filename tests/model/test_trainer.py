"""A short real training on a few gtsrb32 classes (32 px, a few steps), through `train()`."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from model.cgd import CGD, create_cgd
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import CGDConfig, Preprocessing
from model.curves import curve_paths
from model.data import read_labels_csv
from model.default import init_projections
from model.device import cpu_supports_bf16
from model.embedder import Embedder, version_of
from model.trainer import Progress, TrainConfig, train

CLASSES = ("00_", "01_", "12_", "14_")


@pytest.fixture(scope="module")
def few_classes(gtsrb_dir: Path):
    images = [i for i in read_labels_csv(gtsrb_dir, "train") if i.label.startswith(CLASSES)]
    return images[::2]


@pytest.fixture(scope="module")
def small_start(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 32 px, 64-d start checkpoint over the offline lite0 weights (cheap to validate)."""
    config = CGDConfig(descriptors="G", embedding_dim=64, preprocessing=Preprocessing(image_size=32))
    model = create_cgd(config, pretrained=True)
    init_projections(model)
    path = tmp_path_factory.mktemp("start") / "start.pt"
    return path, save_checkpoint(path, model)


def _config(**changes) -> TrainConfig:
    base = dict(epochs=3, image_size=32, batch_size=16, images_per_class=4, warmup_epochs=1, lr=3e-4,
                patience=None, progress_bar=False, seed=1, cache_views=1, precision="fp32")
    return TrainConfig(**{**base, **changes})


@pytest.mark.parametrize("loss", ["proxy_anchor", "triplet"])
def test_training_loss_falls_and_the_checkpoint_reloads(few_classes, small_start, tmp_path: Path,
                                                        loss: str) -> None:
    reports: list[Progress] = []
    out = tmp_path / "run" / "model.pt"
    result = train(few_classes, _config(loss=loss), out=out, start=small_start[0], on_progress=reports.append)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert result.stopped == "completed" and result.val_mode == "images"
    caching = [r for r in reports if r.phase == "caching"]
    training = [r for r in reports if r.phase == "training"]
    assert caching and caching[-1].step == caching[-1].steps == len(few_classes)
    assert [r.step for r in training] == list(range(1, len(training) + 1))
    assert training[-1].steps == training[-1].step and training[-1].images_per_s > 0
    assert result.recipe["engine"] == "cached" and result.recipe["steps"] == len(training)
    assert result.recipe["baseline_engine"] == "feature cache"
    loaded = load_checkpoint(out)
    assert loaded.version == result.version
    assert loaded.extra["improved"] == result.improved == (not result.kept_start_model)
    assert loaded.config.descriptors == "G" and loaded.config.image_size == 32
    if result.improved:
        assert loaded.metrics == result.best and loaded.version != small_start[1]
        assert (loaded.config.num_classes == 4) == (loss == "triplet")
    else:
        assert loaded.metrics == result.baseline and loaded.version == small_start[1]
    json_path, png_path = curve_paths(out)
    assert png_path.stat().st_size > 1000
    assert [row["loss"] for row in json.loads(json_path.read_text())["history"]] == losses
    with torch.inference_mode():
        assert loaded.model(torch.rand(2, 3, 32, 32)).shape == (2, loaded.config.embedding_dim)


def test_cancel_stops_at_once_and_still_writes_a_loadable_model(few_classes, small_start,
                                                                tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    out = tmp_path / "cancelled.pt"
    result = train(few_classes, _config(), out=out, start=small_start[0], cancel=cancel)
    assert result.stopped == "cancelled" and result.history == []
    assert result.kept_start_model and not result.improved
    assert load_checkpoint(out).version == result.version == small_start[1]


def test_same_seed_same_losses(few_classes, small_start, tmp_path: Path) -> None:
    config = _config(epochs=2, precision="fp32")
    first = train(few_classes, config, out=tmp_path / "a.pt", start=small_start[0])
    second = train(few_classes, config, out=tmp_path / "b.pt", start=small_start[0])
    assert [r["loss"] for r in first.history] == pytest.approx([r["loss"] for r in second.history], rel=1e-4)


def test_time_budget_stops_training(few_classes, small_start, tmp_path: Path) -> None:
    reports: list[tuple[float, Progress]] = []
    began = time.perf_counter()
    result = train(few_classes, _config(epochs=50, max_minutes=0.02), out=tmp_path / "budget.pt",
                   start=small_start[0], on_progress=lambda p: reports.append((time.perf_counter(), p)))
    assert result.stopped == "budget"
    at, first = reports[0]  # the ETA covers the rest of the budget from the first report on
    assert first.phase == "caching" and first.eta_s >= 0.02 * 60 - (at - began) - 0.01
    assert 1 <= len(result.history) < 50
    assert load_checkpoint(tmp_path / "budget.pt").version == result.version


def test_a_budget_too_short_to_cache_every_image_trains_on_a_class_balanced_subset(
        few_classes, small_start, tmp_path: Path) -> None:
    result = train(few_classes, _config(epochs=2, max_minutes=0.001), out=tmp_path / "subset.pt",
                   start=small_start[0])
    recipe = result.recipe
    assert recipe["offered_images"] == len(few_classes) - recipe["val_images"]
    assert 4 * len(CLASSES) <= recipe["train_images"] < recipe["offered_images"]
    assert result.history  # it trained on what it cached


class _Crash(RuntimeError):
    pass


def test_resume_continues_an_interrupted_run(few_classes, small_start, tmp_path: Path) -> None:
    config = _config(epochs=3, precision="fp32")
    out = tmp_path / "resumed.pt"
    steps_per_epoch: list[int] = []

    def crash_in_second_epoch(progress: Progress) -> None:
        if progress.epoch == 2:
            steps_per_epoch.append(progress.step - 1)
            raise _Crash

    with pytest.raises(_Crash):
        train(few_classes, config, out=out, start=small_start[0], on_progress=crash_in_second_epoch)
    assert out.with_suffix(".resume.pt").is_file() and not out.exists()
    seen: list[Progress] = []
    result = train(few_classes, config, out=out, start=small_start[0], resume=True, on_progress=seen.append)
    seen = [progress for progress in seen if progress.phase == "training"]
    assert seen[0].epoch == 2 and seen[0].step == steps_per_epoch[0] + 1
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert not out.with_suffix(".resume.pt").exists()
    assert load_checkpoint(out).version == result.version


def test_the_full_engine_trains_too(few_classes, small_start, tmp_path: Path) -> None:
    result = train(few_classes, _config(engine="full", epochs=2), out=tmp_path / "full.pt",
                   start=small_start[0])
    assert result.recipe["engine"] == "full" and len(result.history) == 2


def test_without_the_cache_the_start_is_validated_on_the_engine_that_serves_it(
        few_classes, small_start, tmp_path: Path) -> None:
    served: list[Embedder] = []

    def serving_engine(model: CGD) -> Embedder:
        served.append(Embedder(model, small_start[1], runtime="onnxruntime", precision="fp32",
                               cache_dir=tmp_path / "engines"))
        return served[-1]

    result = train(few_classes, _config(engine="full", epochs=1), out=tmp_path / "full.pt",
                   start=small_start[0], start_embedder=serving_engine)
    assert len(served) == 1 and version_of(served[0].model, default=False) == small_start[1]
    assert result.recipe["baseline_engine"] == "onnxruntime fp32"
    assert 0 < result.baseline["map@r"] <= 1


def test_one_epoch_runs_without_a_warm_up(few_classes, small_start, tmp_path: Path) -> None:
    config = _config(epochs=1)
    assert config.effective_warmup_epochs == 0
    result = train(few_classes, config, out=tmp_path / "one.pt", start=small_start[0])
    assert len(result.history) == 1 and result.stopped == "completed"


def test_no_improvement_keeps_the_start_model(few_classes, small_start, tmp_path: Path) -> None:
    result = train(few_classes, _config(epochs=1, lr=1e-12, head_lr=1e-12, whitening="none"),
                   out=tmp_path / "same.pt", start=small_start[0])
    assert not result.improved and result.kept_start_model
    assert result.recipe["map_gain"]["lower"] <= 0
    assert load_checkpoint(tmp_path / "same.pt").version == small_start[1]


def test_a_validation_plateau_restores_the_best_weights_and_divides_the_learning_rate(
        few_classes, small_start, tmp_path: Path) -> None:
    """A learning rate far too high makes validation fall: a plateau of one epoch brings the best
    weights back at a tenth of the rate, from the next epoch on."""
    reports: list[Progress] = []
    config = _config(epochs=12, lr=0.5, head_lr=0.5, plateau_epochs=1, whitening="none", expansion="none")
    result = train(few_classes, config, out=tmp_path / "plateau.pt", start=small_start[0],
                   on_progress=reports.append)
    factors = [round(r.lr / 0.5, 6) for r in reports if r.phase == "training"]
    assert set(factors) <= {1.0, 0.1, 0.01}
    assert factors == sorted(factors, reverse=True) and 0.1 in factors
    first_decay = factors.index(0.1)
    assert any(row["step"] == first_decay for row in result.history)  # at an epoch's end
    # Two decays spent and still no gain: the run ends before its epochs, and says why.
    assert len(result.history) < 12 and result.stopped == result.recipe["stopped"] == "converged"


def test_an_epoch_that_falls_below_the_start_brings_the_start_weights_back_at_once(
        few_classes, small_start, tmp_path: Path) -> None:
    """Validation falling below the start's beyond noise is not waited out as a plateau: the next epoch
    starts from the start's weights at a tenth of the rate; asked to write the trained model anyway,
    the run writes those start weights (no epoch beat them)."""
    reports: list[Progress] = []
    config = _config(epochs=2, lr=0.5, head_lr=0.5, warmup_epochs=0, plateau_epochs=10, whitening="none",
                     expansion="none", keep_start_if_not_better=False)
    result = train(few_classes, config, out=tmp_path / "fell.pt", start=small_start[0],
                   on_progress=reports.append)
    factors = [round(r.lr / 0.5, 6) for r in reports if r.phase == "training"]
    assert factors.index(0.1) == result.history[0]["step"]  # from the second epoch on
    start = load_checkpoint(small_start[0]).model.backbone.state_dict()
    written = load_checkpoint(tmp_path / "fell.pt").model.backbone.state_dict()
    assert all(torch.equal(start[name], written[name]) for name in start)
    assert not result.improved


def test_plateau_epochs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="plateau_epochs"):
        _config(plateau_epochs=0)
    assert _config(plateau_epochs=None).plateau_epochs is None


@pytest.mark.parametrize(("precision", "chosen"), [
    ("auto", {"bfloat16", "float32"} if cpu_supports_bf16() else {"float32"}),
    ("bf16", {"bfloat16"}),
])
def test_steps_run_in_the_precision_asked_or_the_faster_one_measured(
        few_classes, small_start, tmp_path: Path, precision: str, chosen: set[str]) -> None:
    """`auto` times a step in bf16 and in fp32 where the CPU has native bf16 and keeps the faster; an
    explicit precision is kept."""
    result = train(few_classes, _config(epochs=1, precision=precision, whitening="none", expansion="none"),
                   out=tmp_path / f"{precision}.pt", start=small_start[0])
    assert result.recipe["step_precision"] in chosen
