"""Backbone registry, the stride-1 ResNet stage 4, and the offline ImageNet weights."""

import pytest
import torch
from PIL import Image
from timm.data import ImageNetInfo

from model import UnknownBackboneError, create_backbone, list_backbones
from model.config import Preprocessing
from model.pretrained import imagenet_lite0
from model.transforms import inference_transform


def test_registry_lists_the_paper_backbones():
    assert {"resnet50", "seresnet50", "shufflenet_v2", "tf_efficientnet_lite0"} <= set(list_backbones())


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(UnknownBackboneError, match="resnet50"):
        create_backbone("no_such_net")


def test_non_cnn_timm_model_is_refused():
    with pytest.raises(UnknownBackboneError, match="not a CNN"):
        create_backbone("test_vit")


@pytest.mark.parametrize(
    ("name", "channels", "side"),
    [("resnet50", 2048, 14), ("seresnet50", 2048, 14), ("shufflenet_v2", 1024, 7),
     ("tf_efficientnet_lite0", 1280, 7)],
)
def test_feature_map_sizes_at_224_px(name, channels, side):
    backbone = create_backbone(name).eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 224, 224))
    assert features.shape == (1, channels, side, side)
    assert backbone.num_features == channels
    assert features.min() >= 0


def test_any_timm_cnn_works_by_name():
    backbone = create_backbone("resnet18").eval()
    with torch.no_grad():
        assert backbone(torch.rand(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_offline_lite0_classifies_a_real_photo(caltech_dir):
    model = imagenet_lite0()
    image = Image.open(caltech_dir / "images/accordion/image_0001.jpg").convert("RGB")
    with torch.no_grad():
        probabilities = model(inference_transform(Preprocessing())(image)[None]).softmax(dim=1)[0]
    top = int(probabilities.argmax())
    assert ImageNetInfo().index_to_description(top).startswith("accordion")
    assert probabilities[top] > 0.5


def test_local_weights_file_loads(tmp_path):
    source = create_backbone("tf_efficientnet_lite0", pretrained=True)
    path = tmp_path / "lite0.pth"
    torch.save(source.body.state_dict(), path)
    loaded = create_backbone("tf_efficientnet_lite0", pretrained=path)
    for key, value in source.body.state_dict().items():
        assert torch.equal(loaded.body.state_dict()[key], value)
