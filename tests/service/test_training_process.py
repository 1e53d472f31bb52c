"""`service.training_process` with two data-parallel training processes (gloo on the CPU), as a service
with several GPUs runs its jobs: real spawned processes on a few real gtsrb32 classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.checkpoint import load_checkpoint
from model.data import read_labels_csv
from model.train_config import TrainConfig
from model.trainer import Progress
from service.training_process import TrainingSpec, run_training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def four_classes(gtsrb_dir: Path) -> list[tuple[str, str]]:
    """4 classes x 10 training images: each of two ranks gets 2 classes of every batch."""
    images = read_labels_csv(gtsrb_dir, "train")
    chosen = sorted({image.label for image in images})[:4]
    return [(str(image.path), image.label) for label in chosen
            for image in [i for i in images if i.label == label][:10]]


def _spec(images: list[tuple[str, str]], out: Path, epochs: int) -> TrainingSpec:
    config = TrainConfig(epochs=epochs, image_size=32, batch_size=16, descriptors="G", embedding_dim=32,
                         cache_views=1, expansion="none", device="cpu", progress_bar=False,
                         keep_start_if_not_better=False)
    return TrainingSpec(images=images, config=config, start_checkpoint=None, out=str(out), threads=0,
                        processes=2)


def test_a_job_trains_in_two_processes_and_rank_0_reports_and_writes(four_classes, tmp_path) -> None:
    reports: list[Progress] = []
    result = run_training(_spec(four_classes, tmp_path / "job.pt", epochs=2), reports.append, lambda: False)
    assert result.recipe["processes"] == 2 and result.stopped == "completed" and len(result.history) == 2
    assert result.recipe["engine"] == "cached" and result.recipe["steps"] >= 2
    validated = [report for report in reports if report.epoch_record is not None]
    assert [report.epoch_record["epoch"] for report in validated] == [1, 2], "one report per epoch: rank 0's"
    loaded = load_checkpoint(result.checkpoint)
    assert loaded.version == result.version and not result.kept_start_model
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pt") == ["job.pt"]


def test_a_cancel_reaches_every_rank(four_classes, tmp_path) -> None:
    reports: list[Progress] = []
    result = run_training(_spec(four_classes, tmp_path / "job.pt", epochs=50), reports.append,
                          lambda: any(report.epoch_record is not None for report in reports))
    assert result.stopped == "cancelled" and result.recipe["processes"] == 2
    assert len(result.history) < 50
