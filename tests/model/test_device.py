"""Device and precision selection: every branch that can run on a CPU."""

import pytest
import torch

from model.device import (
    DeviceError,
    autocast,
    cpu_supports_bf16,
    resolve_device,
    resolve_precision,
    training_autocast,
)


def test_auto_picks_cuda_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")


def test_unknown_device_and_precision_are_refused():
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(DeviceError, match="unknown precision"):
        resolve_precision(torch.device("cpu"), "int4")


def test_precision_choices():
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "fp32") == torch.float32
    assert resolve_precision(cpu, "bf16") == torch.bfloat16
    assert resolve_precision(torch.device("cuda"), "auto") == torch.float16
    assert resolve_precision(cpu, "auto") == (torch.bfloat16 if cpu_supports_bf16() else torch.float32)


def test_autocast_is_a_no_op_for_float32_and_casts_otherwise():
    a, b = torch.rand(4, 4), torch.rand(4, 4)
    with autocast(torch.device("cpu"), torch.float32):
        assert (a @ b).dtype == torch.float32
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16


class _PaddedDepthwise(torch.nn.Conv2d):
    """A convolution subclass with its own forward (like timm's same-padding Conv2dSame)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.nn.functional.pad(x, (1, 1, 1, 1)))


def test_training_autocast_runs_depthwise_convolutions_in_fp32_under_cpu_bf16():
    depthwise = _PaddedDepthwise(8, 8, 3, groups=8, padding=0)
    pointwise = torch.nn.Conv2d(8, 8, 1)
    net = torch.nn.Sequential(pointwise, depthwise)
    x = torch.rand(2, 8, 6, 6)
    cpu = torch.device("cpu")
    with training_autocast(cpu, torch.bfloat16, net):
        assert pointwise(x).dtype == torch.bfloat16
        inside = depthwise(x)
    assert inside.dtype == torch.float32 and inside.shape == (2, 8, 6, 6)  # the subclass's padding kept
    assert torch.equal(inside, depthwise(x))  # exactly the fp32 convolution
    assert "forward" not in vars(depthwise)  # nothing left behind
    inside.sum().backward()
    assert depthwise.weight.grad.dtype == torch.float32
    with training_autocast(cpu, torch.float32, net):
        assert pointwise(x).dtype == torch.float32 and "forward" not in vars(depthwise)
