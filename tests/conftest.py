"""Shared fixtures. Keep this small: per-area fixtures belong in that area's test file."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from maskformer.config import apply_overrides, get_preset


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_cfg():
    """The tiny preset on timm's 0.4 M-parameter test_resnet: fast enough for any unit test."""
    return apply_overrides(get_preset("maskformer_tiny"), {"model.backbone": "test_resnet"})
