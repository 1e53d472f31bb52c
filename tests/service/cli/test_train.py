"""`cgd train` and `cgd eval` end to end on a tiny class-folder copy of gtsrb32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model.checkpoint import load_checkpoint
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
                 "--batch-size", "12", "--descriptors", "G", "--embedding-dim", "32", "--no-progress"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["version"] == load_checkpoint(out).version and summary["epochs_run"] == 2
    assert summary["val_mode"] == "images"
    assert ("did not beat the start model" in lines[0]) == (not summary["improved"])
    assert main(["eval", "--data", str(tiny_tree), "--checkpoint", str(out), "--json", "--ks", "1,2"]) == 0
    assert set(json.loads(capsys.readouterr().out.strip())) == {"recall@1", "recall@2", "map@r"}
