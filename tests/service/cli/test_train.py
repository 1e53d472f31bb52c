"""`cgd train` and `cgd eval` end to end on a tiny class-folder copy of gtsrb32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model.checkpoint import load_checkpoint
from model.curves import curve_paths
from model.data import read_labels_csv
from service.cli import main


@pytest.fixture(scope="module")
def tiny_tree(gtsrb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for split in ("train", "test"):
        images = read_labels_csv(gtsrb_dir, split)
        for label in sorted({i.label for i in images})[:3]:
            for image in [i for i in images if i.label == label][:12]:
                (root / split / label).mkdir(parents=True, exist_ok=True)
                shutil.copy(image.path, root / split / label / image.path.name)
    return root


def test_eval_json_of_the_embedded_default(tiny_tree: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--data", str(tiny_tree), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) == {"recall@1", "recall@2", "recall@4", "recall@8", "map@r"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["recall@1"] <= metrics["recall@2"] <= metrics["recall@4"] <= metrics["recall@8"]


def test_train_writes_a_checkpoint_that_eval_reads(tiny_tree: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli.pt"
    code = main(["train", "--data", str(tiny_tree), "--out", str(out), "--epochs", "2", "--image-size", "32",
                 "--batch-size", "12", "--descriptors", "G", "--embedding-dim", "32", "--no-progress",
                 "--plateau-epochs", "0"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["version"] == load_checkpoint(out).version and summary["epochs_run"] == 2
    assert summary["val_mode"] == "images"
    assert ("did not beat the start model" in lines[0]) == (not summary["improved"])
    assert main(["eval", "--data", str(tiny_tree), "--checkpoint", str(out), "--json", "--ks", "1,2"]) == 0
    assert set(json.loads(capsys.readouterr().out.strip())) == {"recall@1", "recall@2", "map@r"}


@pytest.fixture(scope="module")
def four_class_tree(gtsrb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 10 training images: two ranks get 2 classes of every batch each."""
    root = tmp_path_factory.mktemp("tree4")
    images = read_labels_csv(gtsrb_dir, "train")
    for label in sorted({i.label for i in images})[:4]:
        for image in [i for i in images if i.label == label][:10]:
            (root / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(image.path, root / label / image.path.name)
    return root


def test_train_on_two_cpu_processes_writes_one_checkpoint_that_reloads(
        four_class_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run" / "two.pt"
    code = main(["train", "--data", str(four_class_tree), "--out", str(out), "--nproc-per-node", "2",
                 "--device", "cpu", "--epochs", "2", "--max-minutes", "0", "--image-size", "32",
                 "--batch-size", "16", "--descriptors", "G", "--embedding-dim", "32", "--cache-views", "1",
                 "--expansion", "none", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["processes"] == 2 and summary["epochs_run"] == 2 and summary["stopped"] == "completed"
    assert summary["recipe"]["engine"] == "cached" and summary["recipe"]["steps"] >= 2
    json_curves, png_curves = curve_paths(out)
    assert sorted(out.parent.iterdir()) == sorted([out, json_curves, png_curves]), (
        "one checkpoint and its curves; no feature cache or resume state left behind")
    loaded = load_checkpoint(out)
    assert loaded.version == summary["version"]
    assert loaded.extra["recipe"]["train_images"] == summary["recipe"]["train_images"]
    assert main(["eval", "--data", str(four_class_tree), "--checkpoint", str(out), "--json",
                 "--ks", "1"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out.strip())["recall@1"] <= 1.0
