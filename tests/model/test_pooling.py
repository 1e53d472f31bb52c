"""Global descriptors: GeM generalises average (p = 1) and max (p -> inf) pooling."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.pooling import MAC, GeM, SPoC, gem


def _feature_map() -> torch.Tensor:
    return torch.rand(3, 8, 7, 7, generator=torch.Generator().manual_seed(1)) + 0.5


def test_gem_with_p_one_is_average_pooling():
    x = _feature_map()
    torch.testing.assert_close(GeM(p=1.0)(x), SPoC()(x))
    torch.testing.assert_close(SPoC()(x), x.mean(dim=(2, 3)))


def test_gem_with_large_p_approaches_max_pooling():
    x = _feature_map().double()
    maximum = MAC()(x)
    assert torch.allclose(maximum, x.amax(dim=(2, 3)))
    gaps = [(maximum - gem(x, p)).abs().max().item() for p in (3.0, 30.0, 1000.0)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.01 * maximum.min().item()


def test_gem_clamps_at_eps_and_learns_p():
    x = torch.zeros(1, 2, 3, 3)
    torch.testing.assert_close(GeM(p=3.0, eps=1e-6)(x), torch.full((1, 2), 1e-6))
    pool = GeM(p=3.0, learn_p=True)
    pool(_feature_map()).sum().backward()
    assert pool.p.grad is not None and pool.p.grad.abs() > 0
    assert "p" in dict(pool.named_parameters())
    assert "p" in dict(GeM(p=3.0).named_buffers())


def test_gem_equals_the_avg_pool2d_formula_it_replaced():
    for shape in ((3, 8, 7, 7), (2, 5, 4, 9), (1, 3, 1, 1)):
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(2)) * 3
        for p in (1.0, 3.0, torch.tensor(4.5)):
            old = F.avg_pool2d(x.clamp(min=1e-6).pow(p), kernel_size=x.shape[-2:]).pow(1.0 / p).flatten(1)
            torch.testing.assert_close(gem(x, p), old, rtol=1e-6, atol=1e-7)


def test_gem_exports_to_onnx_and_runs_the_same_there(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    pytest.importorskip("onnxscript", reason="onnxscript (torch.onnx's exporter) is not installed")
    path = tmp_path / "gem.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(GeM(p=3.0), (_feature_map(),), dynamo=True, dynamic_shapes=({0: batch},),
                                verbose=False)
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 8, 7, 7, generator=torch.Generator().manual_seed(3)) + 0.1
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, gem(x, 3.0).numpy(), rtol=1e-5, atol=1e-6)
