"""`Embedder.load`: the model a checkpoint (or the default) means, on the chosen engine."""

import numpy as np
import torch

from model import Embedder, default_model


def test_load_with_scales_embeds_multi_scale_and_changes_the_version() -> None:
    batch = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    single = Embedder.load(device="cpu", precision="fp32")
    multi = Embedder.load(device="cpu", precision="fp32", scales=(1.0, 0.707))
    model = default_model()
    model.config = model.config.with_changes(scales=(1.0, 0.707))
    with torch.inference_mode():
        expected = model.eval()(batch).numpy()
    assert multi.model.config.scales == (1.0, 0.707)
    np.testing.assert_allclose(multi.embed_tensors(batch), expected, atol=1e-4)
    assert not np.allclose(single.embed_tensors(batch), expected, atol=1e-3)
    assert multi.version != single.version and multi.version.startswith("default-")
    assert Embedder.load(device="cpu", scales=(1.0,)).version == single.version
