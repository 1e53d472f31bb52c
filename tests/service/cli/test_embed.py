"""`cgd embed` and `cgd info` as a user runs them: a real process, real files.

The two successful `cgd embed` tests read their lines from one run on all their images (`embedded`).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model import CGDConfig, Embedder, create_cgd, save_checkpoint
from service.images import decode_image


def _cgd(*args: str) -> subprocess.CompletedProcess:
    """Run the installed `cgd` console script of this environment."""
    cgd = Path(sys.executable).with_name("cgd")
    return subprocess.run([str(cgd), *args], capture_output=True, text=True, timeout=300, check=False)


def _asymmetric(size: tuple[int, int] = (96, 64)) -> np.ndarray:
    """(h, w, 3) uint8: a red left third, a blue bottom band, noise elsewhere; no symmetry to hide a turn."""
    pixels = np.random.default_rng(7).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[:, : size[0] // 3] = (220, 30, 30)
    pixels[-size[1] // 4:] = (30, 30, 220)
    return pixels


def _decoding_cases(folder: Path) -> list[Path]:
    """An EXIF-rotated JPEG and a transparent PNG in `folder`."""
    rotated = folder / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image must be turned 90 degrees clockwise
    Image.fromarray(_asymmetric()).save(rotated, format="JPEG", quality=95, exif=exif)
    transparent = folder / "logo.png"
    rgba = np.dstack([_asymmetric(), np.zeros((64, 96), dtype=np.uint8)])
    rgba[16:48, 24:72, 3] = 255  # an opaque window; the noise around it is hidden under alpha 0
    Image.fromarray(rgba, "RGBA").save(transparent, format="PNG")
    return [rotated, transparent]


@pytest.fixture(scope="module")
def embedded(caltech_dir, tmp_path_factory) -> dict[str, dict]:
    """One `cgd embed` run on two real photos and the `_decoding_cases`: its printed line per image path."""
    images = sorted((caltech_dir / "images" / "anchor").glob("*.jpg"))[:2]
    images += _decoding_cases(tmp_path_factory.mktemp("decoding"))
    result = _cgd("embed", *map(str, images), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in images]  # one line per image, in order
    return {line["image"]: line for line in lines}


def test_embed_prints_a_unit_vector_per_image(caltech_dir, embedded):
    images = sorted((caltech_dir / "images" / "anchor").glob("*.jpg"))[:2]
    for line in (embedded[str(path)] for path in images):
        vector = np.array(line["embedding"])
        assert vector.shape == (1536,)
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
        assert line["model_version"].startswith("default-")


def test_embed_decodes_like_the_service(embedded):
    """An EXIF-rotated JPEG and a transparent PNG: `cgd embed` gives the vectors of the service's decoding."""
    paths = [Path(image) for image in embedded if Path(image).name in ("phone.jpg", "logo.png")]
    printed = np.array([embedded[str(path)]["embedding"] for path in paths])
    decoded = [decode_image(path.read_bytes(), filename=path.name, max_bytes=10**7, max_pixels=10**7)
               for path in paths]
    assert decoded[0].size == (64, 96)  # upright: the turn was applied
    expected = Embedder.load(device="cpu").embed_images(decoded)
    np.testing.assert_allclose(printed, expected, atol=1e-5)


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


def test_info_without_a_checkpoint_describes_the_default_model_and_its_runtime(tmp_path):
    result = _cgd("info", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["version"] == Embedder.load(None, device="cpu", precision="fp32").version
    runtime = info["runtime"]
    assert runtime["choice"] is None and "not measured yet" in runtime["note"]  # no service ran there
    assert runtime["cpu_flags"]["avx2"] == ("avx2" in Path("/proc/cpuinfo").read_text())
