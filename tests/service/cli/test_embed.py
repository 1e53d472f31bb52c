"""`cgd embed` and `cgd info` as a user runs them: a real process, real files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from model import CGDConfig, create_cgd, save_checkpoint


def _cgd(*args: str) -> subprocess.CompletedProcess:
    """Run the installed `cgd` console script of this environment."""
    cgd = Path(sys.executable).with_name("cgd")
    return subprocess.run([str(cgd), *args], capture_output=True, text=True, timeout=300, check=False)


def test_embed_prints_a_unit_vector_per_image(caltech_dir):
    images = sorted((caltech_dir / "images" / "anchor").glob("*.jpg"))[:2]
    result = _cgd("embed", *map(str, images), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in images]
    for line in lines:
        vector = np.array(line["embedding"])
        assert vector.shape == (1536,)
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
        assert line["model_version"].startswith("default-")


def test_embed_reports_a_missing_file_cleanly(tmp_path):
    result = _cgd("embed", str(tmp_path / "missing.jpg"), "--device", "cpu")
    assert result.returncode == 2
    assert "missing.jpg" in result.stderr and "Traceback" not in result.stderr


def test_info_prints_the_checkpoint(tmp_path):
    model = create_cgd(CGDConfig(embedding_dim=64, num_classes=2))
    version = save_checkpoint(tmp_path / "m.pt", model, classes=["cat", "dog"], metrics={"recall@1": 0.9})
    result = _cgd("info", str(tmp_path / "m.pt"))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["version"] == version
    assert info["classes"] == ["cat", "dog"]
    assert info["config"]["embedding_dim"] == 64
    assert info["metrics"] == {"recall@1": 0.9}
