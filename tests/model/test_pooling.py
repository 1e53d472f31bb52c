"""Global descriptors: GeM generalises average (p = 1) and max (p -> inf) pooling."""

import torch

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
