"""Every backbone against one contract (``maskformer.model.Backbone``), as timm tests its models."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from maskformer.config import SWIN_VARIANTS, ModelConfig
from maskformer.model import Backbone
from maskformer.model.backbone import RES_NAMES, build_backbone

# name -> (ModelConfig overrides, expected res2..res5 channels)
BACKBONES = {
    "test_resnet": ({"backbone": "test_resnet"}, None),  # timm's 0.4 M test net: read from timm
    "resnet50": ({"backbone": "resnet50"}, (256, 512, 1024, 2048)),
    "resnet101": ({"backbone": "resnet101"}, (256, 512, 1024, 2048)),
    "resnet101c": ({"backbone": "resnet101c"}, (256, 512, 1024, 2048)),
    "swin_tiny": ({"backbone": "swin", **SWIN_VARIANTS["swin_tiny"]}, (96, 192, 384, 768)),
}


@pytest.fixture(scope="module", params=list(BACKBONES))
def backbone(request):
    overrides, channels = BACKBONES[request.param]
    model = build_backbone(replace(ModelConfig(), **overrides)).eval()
    return model, channels


def test_backbone_contract(backbone):
    model, channels = backbone
    assert isinstance(model, Backbone)
    assert list(model.out_channels) == list(RES_NAMES)
    assert model.strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    if channels is not None:
        assert tuple(model.out_channels.values()) == channels


@pytest.mark.parametrize("size", [(64, 64), (70, 94)])
def test_backbone_outputs_follow_the_contract(backbone, size):
    """Keys, channels and spatial sizes ceil(H / stride) for square and odd sizes."""
    model, _ = backbone
    h, w = size
    with torch.no_grad():
        feats = model(torch.randn(1, 3, h, w))
    assert list(feats) == list(RES_NAMES)
    for name, f in feats.items():
        stride = model.strides[name]
        assert f.shape == (
            1,
            model.out_channels[name],
            math.ceil(h / stride),
            math.ceil(w / stride),
        )
        assert torch.isfinite(f).all()
