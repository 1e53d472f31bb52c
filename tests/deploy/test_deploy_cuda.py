"""The GPU image uses one CUDA major version: base image, torch wheels and faiss-gpu agree.

- base image: `FROM nvidia/cuda:X.Y.Z-...`
- torch: `--index-url https://download.pytorch.org/whl/cuXY` (PyPI's torch 2.14 is a CUDA 13 build)
- faiss-gpu: the version pinned in docker/constraints.txt, whose wheel requires nvidia-cuda-runtime-cuNN
  (recorded below from the wheel's metadata, and re-read from the registry when it can be reached)
- the minimum NVIDIA driver stated in the image label, docker-compose.yml and docs/DEPLOYMENT.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.deploy.test_deploy_dockerfiles import CONSTRAINTS, GPU_DOCKERFILE, ROOT, Dockerfile, torch_install

# faiss-gpu version -> the CUDA runtime its wheel requires (Requires-Dist of the PyPI wheel).
FAISS_GPU_CUDA_REQUIREMENT = {
    "1.15.1": "nvidia-cuda-runtime-cu12<13,>=12.6",
}
# CUDA major.minor -> minimum Linux driver (NVIDIA's CUDA release notes, "CUDA Toolkit and
# Corresponding Driver Versions": the GA release's driver).
MIN_LINUX_DRIVER = {
    (12, 6): "560.28.03",
}


@pytest.fixture(scope="module")
def gpu() -> Dockerfile:
    return Dockerfile.read(GPU_DOCKERFILE)


def base_image_cuda(dockerfile: Dockerfile) -> tuple[int, int]:
    versions = set()
    for image in dockerfile.base_images():
        match = re.fullmatch(
            r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d+\.\d+", image
        )
        assert match, f"{image}: the GPU stages must use an nvidia/cuda runtime image with an exact version"
        versions.add((int(match.group(1)), int(match.group(2))))
    assert len(versions) == 1, f"the stages use different CUDA versions: {versions}"
    return versions.pop()


def torch_cuda(dockerfile: Dockerfile) -> tuple[int, int]:
    index = torch_install(dockerfile).options.get("--index-url", "")
    match = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)", index)
    assert match, f"torch must come from a PyTorch CUDA index (--index-url .../whl/cuXY), not {index!r}"
    return int(match.group(1)), int(match.group(2))


def faiss_gpu_pin() -> str:
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if line.startswith("faiss-gpu=="):
            return line.split("==", 1)[1]
    raise AssertionError("docker/constraints.txt does not pin faiss-gpu")


def cuda_runtime_of(requirement_text: str) -> tuple[int, Requirement]:
    requirement = Requirement(requirement_text)
    match = re.fullmatch(r"nvidia-cuda-runtime-cu(\d+)", requirement.name)
    assert match, f"{requirement_text!r} is not a CUDA runtime requirement"
    return int(match.group(1)), requirement


def test_base_image_torch_and_faiss_gpu_share_one_cuda_major(gpu):
    base_major, base_minor = base_image_cuda(gpu)
    torch_major, torch_minor = torch_cuda(gpu)
    version = faiss_gpu_pin()
    assert version in FAISS_GPU_CUDA_REQUIREMENT, (
        f"faiss-gpu {version}: record the CUDA runtime its wheel requires in FAISS_GPU_CUDA_REQUIREMENT"
    )
    faiss_major, runtime = cuda_runtime_of(FAISS_GPU_CUDA_REQUIREMENT[version])
    assert base_major == torch_major == faiss_major, (
        f"CUDA majors differ: base image {base_major}, torch cu{torch_major}x, faiss-gpu {faiss_major}"
    )
    assert (base_major, base_minor) == (torch_major, torch_minor), "base image and torch wheels: same CUDA"
    torch_runtime = Version(f"{torch_major}.{torch_minor}")
    assert runtime.specifier.contains(torch_runtime), (
        f"faiss-gpu {version} needs {runtime}, torch brings CUDA {torch_runtime}"
    )


def test_build_checks_torch_is_a_build_of_that_cuda_major(gpu):
    major, _ = base_image_cuda(gpu)
    (check,) = [r.value for r in gpu.runs(gpu.final_stage) if "torch.version.cuda" in r.value]
    assert check.startswith("--network=none ")
    assert f"== '{major}'" in check, (
        "the build-time check must compare torch.version.cuda with the base image"
    )


def test_minimum_driver_is_stated_consistently(gpu):
    cuda = base_image_cuda(gpu)
    assert cuda in MIN_LINUX_DRIVER, f"CUDA {cuda}: record its minimum Linux driver in MIN_LINUX_DRIVER"
    driver = MIN_LINUX_DRIVER[cuda]
    labels = " ".join(i.value for i in gpu.all("LABEL"))
    assert f'cgd-retrieval.min-nvidia-driver="{driver}"' in labels
    assert f'cgd-retrieval.cuda="{cuda[0]}.{cuda[1]}"' in labels
    assert f"driver >= {driver}" in (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert driver in (ROOT / "docs" / "DEPLOYMENT.md").read_text(encoding="utf-8")


def test_recorded_faiss_gpu_requirement_matches_the_registry(tmp_path):
    """Ask pip (metadata only, ~2 s) what the pinned faiss-gpu wheel requires; skip if PyPI is unreachable."""
    version = faiss_gpu_pin()
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-deps",
            "--ignore-installed",
            "--quiet",
            "--only-binary=:all:",
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.12",
            "--target",
            str(tmp_path / "target"),
            "--report",
            str(report),
            f"faiss-gpu=={version}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        unreachable = re.search(
            r"NewConnectionError|Temporary failure in name resolution|Max retries exceeded|"
            r"Network is unreachable|timed out",
            result.stderr,
        )
        if unreachable:
            pytest.skip(f"the package registry is unreachable: {unreachable.group(0)}")
        pytest.fail(f"pip could not resolve faiss-gpu=={version}:\n{result.stderr[-2000:]}")
    (item,) = json.loads(report.read_text(encoding="utf-8"))["install"]
    runtimes = [r for r in item["metadata"].get("requires_dist", []) if r.startswith("nvidia-cuda-runtime")]
    assert [str(Requirement(r)) for r in runtimes] == [str(Requirement(FAISS_GPU_CUDA_REQUIREMENT[version]))]
