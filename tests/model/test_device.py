"""Device and precision selection: every branch that can run on a CPU."""

import pytest
import torch

from model.device import DeviceError, autocast, cpu_supports_bf16, resolve_device, resolve_precision


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
