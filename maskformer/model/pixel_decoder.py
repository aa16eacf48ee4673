"""Pixel decoders: the FPN ``BasePixelDecoder`` and "+N Enc" ``TransformerEncoderPixelDecoder``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from maskformer.model.position_encoding import PositionEmbeddingSine
from maskformer.model.transformer_decoder import TransformerEncoder


class ConvNorm(nn.Conv2d):
    """Conv2d plus optional ``.norm`` and ``.activation`` (keys ``x.weight``, ``x.norm.*``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        padding: int = 0,
        bias: bool = True,
        norm: nn.Module | None = None,
        activation: nn.Module | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def make_norm(norm: str, channels: int) -> nn.Module | None:
    """detectron2's ``get_norm`` for the values MaskFormer uses: "GN" (32 groups), "" (none)."""
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    if norm in ("", "none"):
        return None
    raise ValueError(f"unsupported pixel decoder norm {norm!r}; use 'GN' or ''")


def c2_xavier_fill(conv: nn.Conv2d) -> None:
    """fvcore's c2_xavier_fill: kaiming_uniform_(a=1) weights, zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def output_conv(in_ch: int, out_ch: int, norm: str) -> ConvNorm:
    """3x3 conv + norm + ReLU (``layer_i``)."""
    n = make_norm(norm, out_ch)
    act = nn.ReLU(inplace=True)  # acts on a fresh norm/conv output, never on a saved tensor
    conv = ConvNorm(in_ch, out_ch, 3, padding=1, bias=n is None, norm=n, activation=act)
    c2_xavier_fill(conv)
    return conv


def lateral_conv(in_ch: int, out_ch: int, norm: str) -> ConvNorm:
    """1x1 conv + norm, no activation (``adapter_i``)."""
    n = make_norm(norm, out_ch)
    conv = ConvNorm(in_ch, out_ch, 1, bias=n is None, norm=n)
    c2_xavier_fill(conv)
    return conv


class BasePixelDecoder(nn.Module):
    """FPN on res2..res5: ``y = layer_4(res5)``, then ``y = layer_i(adapter_i(res_i) + up(y))``."""

    def __init__(
        self,
        *,
        in_channels: dict[str, int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
    ) -> None:
        """Args: in_channels: channels of res2..res5 (in stride order)."""
        super().__init__()
        self.in_features = list(in_channels)  # ["res2", "res3", "res4", "res5"]
        n = len(self.in_features)
        for i, name in enumerate(self.in_features, start=1):
            if i < n:
                self.add_module(f"adapter_{i}", lateral_conv(in_channels[name], conv_dim, norm))
            self.add_module(
                f"layer_{i}",
                output_conv(in_channels[name], conv_dim, norm)
                if i == n
                else output_conv(conv_dim, conv_dim, norm),
            )
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)
        c2_xavier_fill(self.mask_features)

    def top_down(self, features: dict[str, Tensor], y: Tensor) -> Tensor:
        """Run the FPN from the coarsest map ``y`` (already through ``layer_n``) to stride 4."""
        for i in range(len(self.in_features) - 1, 0, -1):
            lateral = getattr(self, f"adapter_{i}")(features[self.in_features[i - 1]])
            # in place: saves one (B, C, H, W) allocation per level; add saves no inputs
            y = lateral.add_(F.interpolate(y, size=lateral.shape[-2:], mode="nearest"))
            y = getattr(self, f"layer_{i}")(y)
        return y

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """Returns mask features (B, mask_dim, H/4, W/4) and None (no transformer features)."""
        n = len(self.in_features)
        y = getattr(self, f"layer_{n}")(features[self.in_features[-1]])
        return self.mask_features(self.top_down(features, y)), None


class TransformerEncoderPixelDecoder(BasePixelDecoder):
    """The "+N Enc" decoder: res5 -> input_proj -> N post-norm encoder layers -> new ``layer_4``."""

    def __init__(
        self,
        *,
        in_channels: dict[str, int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
        enc_layers: int = 6,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        pre_norm: bool = False,
    ) -> None:
        super().__init__(in_channels=in_channels, conv_dim=conv_dim, mask_dim=mask_dim, norm=norm)
        res5 = self.in_features[-1]
        self.input_proj = nn.Conv2d(in_channels[res5], conv_dim, 1)
        c2_xavier_fill(self.input_proj)
        self.transformer = TransformerEncoderOnly(
            d_model=conv_dim,
            num_heads=num_heads,
            num_layers=enc_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            pre_norm=pre_norm,
        )
        self.pe_layer = PositionEmbeddingSine(num_pos_feats=conv_dim // 2, normalize=True)
        n = len(self.in_features)
        self.add_module(
            f"layer_{n}", output_conv(conv_dim, conv_dim, norm)
        )  # replaces the res5 one

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """Returns mask features (B, mask_dim, H/4, W/4), encoder out (B, conv_dim, H/32, W/32)."""
        x = features[self.in_features[-1]]
        pos = self.pe_layer(x)  # (B, conv_dim, h, w), from the pre-projection map
        enc = self.transformer(self.input_proj(x), pos)  # (B, conv_dim, h, w)
        y = getattr(self, f"layer_{len(self.in_features)}")(enc)
        return self.mask_features(self.top_down(features, y)), enc


class TransformerEncoderOnly(nn.Module):
    """Holds ``encoder`` so that keys read ``transformer.encoder.layers.{i}...`` (official)."""

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        num_layers: int,
        dim_feedforward: int,
        dropout: float,
        pre_norm: bool,
    ) -> None:
        super().__init__()
        self.encoder = TransformerEncoder(
            d_model=d_model,
            num_heads=num_heads,
            num_layers=num_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            pre_norm=pre_norm,
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        """Args: src, pos (B, C, H, W). Returns (B, C, H, W)."""
        b, c, h, w = src.shape
        memory = self.encoder(src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2))
        return memory.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)


def build_pixel_decoder(
    *,
    in_channels: dict[str, int],
    conv_dim: int,
    mask_dim: int,
    norm: str,
    enc_layers: int,
    num_heads: int,
    dim_feedforward: int,
    dropout: float,
    pre_norm: bool,
) -> BasePixelDecoder:
    """``TransformerEncoderPixelDecoder`` when ``enc_layers > 0``, else the plain FPN."""
    if enc_layers > 0:
        return TransformerEncoderPixelDecoder(
            in_channels=in_channels,
            conv_dim=conv_dim,
            mask_dim=mask_dim,
            norm=norm,
            enc_layers=enc_layers,
            num_heads=num_heads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            pre_norm=pre_norm,
        )
    return BasePixelDecoder(
        in_channels=in_channels, conv_dim=conv_dim, mask_dim=mask_dim, norm=norm
    )
