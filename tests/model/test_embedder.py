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


def test_uint8_pixels_normalised_per_batch_equal_the_float_transform(caltech_dir) -> None:
    """`preprocess` keeps uint8 pixels and `embed_tensors` normalises the batch: the same vectors as the
    float transform of training and evaluation (`inference_transform`), on real photos."""
    import csv

    from PIL import Image

    from model.transforms import inference_transform

    with (caltech_dir / "labels.csv").open(newline="") as handle:
        paths = [caltech_dir / row["path"] for row in csv.DictReader(handle)][:200:50]
    photos = [Image.open(path).convert("RGB") for path in paths]
    embedder = Embedder.load(device="cpu", precision="fp32")
    pixels = torch.stack([embedder.preprocess(photo) for photo in photos])
    transform = inference_transform(embedder.model.config.preprocessing)
    floats = torch.stack([transform(photo) for photo in photos])
    assert pixels.dtype == torch.uint8 and pixels.shape == floats.shape
    torch.testing.assert_close(embedder.model_input(pixels), floats, atol=1e-5, rtol=0)
    assert embedder.model_input(floats) is floats
    cosine = (embedder.embed_tensors(pixels) * embedder.embed_tensors(floats)).sum(axis=1)
    assert cosine.min() >= 0.99999
