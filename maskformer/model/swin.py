"""Swin Transformer backbone as the official MaskFormer has it (pad then shift, per-stage norms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn


def window_partition(x: Tensor, ws: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of ws -> (B * nW, ws * ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)  # (B*nW, ws*ws, C)


def window_reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    """(B * nW, ws * ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)  # (B, H, W, C)


def relative_position_index(ws: int) -> Tensor:
    """(ws*ws, ws*ws) index into the ((2ws-1)^2, heads) relative position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
    coords = coords.flatten(1)  # (2, ws*ws)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # (N, N, 2)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(hp: int, wp: int, ws: int, shift: int, device, dtype) -> Tensor:
    """Shifted-window attention mask on the padded (hp, wp) grid: 0 inside, -100 across regions.

    Returns:
        (nW, ws*ws, ws*ws) additive mask.
    """
    # Region ids 0..8 of the shifted grid, as comparisons (no in-place slice writes: these export
    # to ONNX for any hp, wp, including an empty first region when hp or wp equals ws).
    ys = torch.arange(hp, device=device)
    xs = torch.arange(wp, device=device)
    row = (ys >= hp - ws).long() + (ys >= hp - shift).long()  # (hp,) in {0, 1, 2}
    col = (xs >= wp - ws).long() + (xs >= wp - shift).long()  # (wp,)
    img = (row[:, None] * 3 + col[None, :]).float()[None, :, :, None]  # (1, hp, wp, 1)
    win = window_partition(img, ws).squeeze(-1)  # (nW, ws*ws)
    diff = win[:, None, :] - win[:, :, None]  # (nW, N, N)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0).to(dtype)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias."""

    def __init__(
        self,
        *,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Args: x (B*nW, N, C); mask (nW, N, N) additive or None. Returns (B*nW, N, C)."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*nW, nH, N, hd)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).to(q.dtype)  # (nH, N, N)
        if mask is None:
            attn_bias = bias.unsqueeze(0)  # (1, nH, N, N)
        else:
            nw = mask.shape[0]
            attn_bias = bias.unsqueeze(0) + mask.unsqueeze(1).to(q.dtype)  # (nW, nH, N, N)
            attn_bias = attn_bias.repeat(bw // nw, 1, 1, 1)  # (B*nW, nH, N, N)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=drop, scale=self.scale
        )
        out = out.transpose(1, 2).reshape(bw, n, c)  # (B*nW, N, C)
        return self.proj_drop(self.proj(out))


class SwinBlock(nn.Module):
    """LN -> (shifted) window attention -> residual; LN -> MLP -> residual."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim=dim, window_size=window_size, num_heads=num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Tensor, h: int, w: int, mask: Tensor | None) -> Tensor:
        """Args: x (B, H*W, C); mask (nW, N, N) for the padded grid. Returns (B, H*W, C)."""
        b, _, c = x.shape
        ws, s = self.window_size, self.shift_size
        y = self.norm1(x).view(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))  # (B, Hp, Wp, C); pad first, then shift
        hp, wp = h + pad_b, w + pad_r
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(window_partition(y, ws), mask if s > 0 else None)  # (B*nW, N, C)
        y = window_reverse(y, ws, hp, wp)  # (B, Hp, Wp, C)
        if s > 0:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        y = y[:, :h, :w, :].reshape(b, h * w, c)  # (B, H*W, C)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (x0, x1, x2, x3 order) -> LN(4C) -> Linear(4C -> 2C, no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """Args: x (B, H*W, C). Returns (B, ceil(H/2)*ceil(W/2), 2C)."""
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        x = x.view(b, -1, 4 * c)  # (B, H/2*W/2, 4C)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Blocks at one resolution, then (except in the last stage) PatchMerging."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path: list[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim=dim,
                num_heads=num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                drop_path=drop_path[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor | None]:
        """Args: x (B, H*W, C). Returns the stage output (B, H*W, C) and the downsampled input of
        the next stage (B, ceil(H/2)*ceil(W/2), 2C) or None."""
        ws = self.window_size
        # Ceil-division with non-negative operands: traced into ONNX, (-h) // ws would truncate.
        hp, wp = (h + ws - 1) // ws * ws, (w + ws - 1) // ws * ws
        mask = shifted_window_mask(hp, wp, ws, self.shift_size, x.device, x.dtype)
        for blk in self.blocks:
            x = blk(x, h, w, mask)
        down = self.downsample(x, h, w) if self.downsample is not None else None
        return x, down


class PatchEmbed(nn.Module):
    """Zero-pad to a multiple of the patch size, then a strided conv and LayerNorm."""

    def __init__(self, *, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (B, 3, H, W). Returns (B, C, ceil(H/4), ceil(W/4))."""
        p = self.patch_size
        _, _, h, w = x.shape
        x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(x)  # (B, C, Wh, Ww)
        b, c, wh, ww = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))  # (B, Wh*Ww, C)
        return x.transpose(1, 2).reshape(b, c, wh, ww)


class SwinTransformer(nn.Module):
    """Hierarchical Swin returning res2..res5 (strides 4..32), each through its own LayerNorm."""

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        drop_path_rate: float = 0.3,
        patch_size: int = 4,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size=patch_size, embed_dim=embed_dim)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        n = len(depths)
        self.layers = nn.ModuleList(
            SwinStage(
                dim=embed_dim * 2**i,
                depth=depths[i],
                num_heads=num_heads[i],
                window_size=window_size,
                drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                downsample=i < n - 1,
            )
            for i in range(n)
        )
        self.num_features = [embed_dim * 2**i for i in range(n)]
        for i, c in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(c))
        self.out_channels = {f"res{i + 2}": c for i, c in enumerate(self.num_features)}
        self.strides = {f"res{i + 2}": 4 * 2**i for i in range(len(self.num_features))}
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Args: x (B, 3, H, W).

        Returns:
            {"res2": (B, C, H/4, W/4), ..., "res5": (B, 8C, H/32, W/32)}, sizes rounded up.
        """
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        outs = {}
        for i, stage in enumerate(self.layers):
            out, down = stage(x, h, w)
            out = getattr(self, f"norm{i}")(out)
            outs[f"res{i + 2}"] = out.view(-1, h, w, out.shape[-1]).permute(0, 3, 1, 2).contiguous()
            if down is not None:
                x, h, w = down, (h + 1) // 2, (w + 1) // 2
        return outs


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
