"""Backbones returning res2..res5 feature maps: timm CNNs (ResNet, ...) or the official Swin."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import timm
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from timm.layers.norm_act import FrozenBatchNorm2d  # torchvision's, re-exported by timm
from torch import Tensor, nn

from maskformer.config import ConfigError, ModelConfig
from maskformer.model.swin import SwinTransformer

RES_NAMES = ("res2", "res3", "res4", "res5")
_STRIDES = (4, 8, 16, 32)
RES_STRIDES = dict(zip(RES_NAMES, _STRIDES, strict=True))  # res2 -> 4, ..., res5 -> 32


@runtime_checkable
class Backbone(Protocol):
    """What the pixel decoder and the predictor need of a backbone (every backbone is tested
    against this contract in tests/test_backbones.py).

    Attributes:
        out_channels: channels of each output, ``{"res2": C2, ..., "res5": C5}``.
        strides: stride of each output relative to the input, ``{"res2": 4, ..., "res5": 32}``.

    Calling it on (B, 3, H, W) returns ``{"res2": (B, C2, ceil(H/4), ceil(W/4)), ...,
    "res5": (B, C5, ceil(H/32), ceil(W/32))}`` for any H, W.
    """

    out_channels: dict[str, int]
    strides: dict[str, int]

    def __call__(self, x: Tensor) -> dict[str, Tensor]: ...


# Our names -> timm names. "resnet101c" is detectron2's DeepLab ResNet (R-103): deep 3x3 stem
# (64, 64, 128 channels) plus multi-grid dilations (1, 2, 4) in res5.
_TIMM_NAMES = {"resnet101c": "resnet101s"}
RES5_MULTI_GRID = (1, 2, 4)


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model; keys live under ``body.`` (``body.conv1.weight``, ...)."""

    def __init__(self, *, name: str, pretrained: bool = False, frozen_bn: bool = False) -> None:
        super().__init__()
        timm_name = _TIMM_NAMES.get(name, name)
        try:
            self.body = timm.create_model(timm_name, pretrained=pretrained, features_only=True)
        except (RuntimeError, ValueError, TypeError) as e:
            raise ConfigError(
                f"backbone {name!r} is not a timm model with features_only: {e}"
            ) from None
        reductions = self.body.feature_info.reduction()
        channels = self.body.feature_info.channels()
        missing = [s for s in _STRIDES if s not in reductions]
        if missing:
            raise ConfigError(f"backbone {name!r} has no features at stride(s) {missing}")
        # the last feature map of each stride: index into the list the body returns
        self.indices = [max(i for i, r in enumerate(reductions) if r == s) for s in _STRIDES]
        self.out_channels = {n: channels[i] for n, i in zip(RES_NAMES, self.indices, strict=True)}
        self.strides = dict(RES_STRIDES)
        if name == "resnet101c":
            _set_res5_multi_grid(self.body, RES5_MULTI_GRID)
        if frozen_bn:
            self.body = freeze_batch_norm_2d(self.body)
            for m in self.body.modules():
                if type(m) is FrozenBatchNorm2d:
                    m.__class__ = FusedFrozenBatchNorm2d

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Args: x (B, 3, H, W).

        Returns:
            {"res2": (B, C2, H/4, W/4), ..., "res5": (B, C5, H/32, W/32)}.
        """
        feats = self.body(x)
        return {n: feats[i] for n, i in zip(RES_NAMES, self.indices, strict=True)}


class FusedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """detectron2's FrozenBN (fixed statistics and affine, all buffers) in one fused kernel.

    torchvision's version computes ``x * scale + shift`` in two passes over the activation; the
    eval-mode ``batch_norm`` kernel does it in one and matches PyTorch/HF BatchNorm bit for bit.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            momentum=0.0,
            eps=self.eps,
        )


def _set_res5_multi_grid(body: nn.Module, grid: tuple[int, ...]) -> None:
    """Give the 3x3 conv of res5 block i dilation (and padding) grid[i]; the stride is unchanged."""
    blocks = list(body.layer4.children())
    if len(blocks) != len(grid):
        raise ConfigError(
            f"res5 has {len(blocks)} blocks but the multi-grid has {len(grid)} entries"
        )
    for block, d in zip(blocks, grid, strict=True):
        block.conv2.dilation = (d, d)
        block.conv2.padding = (d, d)


def build_backbone(cfg: ModelConfig) -> Backbone:
    """The backbone named by ``cfg.backbone``; ``out_channels`` maps res2..res5 to channels."""
    if cfg.backbone == "swin":
        if cfg.pretrained:
            raise ConfigError(
                "ImageNet weights for the official-layout Swin backbone are not "
                "bundled; start from a converted MaskFormer checkpoint instead"
            )
        return SwinTransformer(
            embed_dim=cfg.swin_embed_dim,
            depths=tuple(cfg.swin_depths),
            num_heads=tuple(cfg.swin_num_heads),
            window_size=cfg.swin_window_size,
            drop_path_rate=cfg.swin_drop_path_rate,
        )
    return TimmBackbone(name=cfg.backbone, pretrained=cfg.pretrained, frozen_bn=cfg.frozen_bn)
