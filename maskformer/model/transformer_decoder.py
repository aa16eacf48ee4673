"""DETR transformer layers (post-norm by default), batch-first, ``nn.MultiheadAttention`` keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class EncoderLayer(nn.Module):
    """Self-attention (pos added to q and k) and an FFN, each with residual, dropout, LayerNorm."""

    def __init__(
        self, *, d_model: int, num_heads: int, dim_feedforward: int, dropout: float, pre_norm: bool
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            d_model, num_heads, dropout=dropout, batch_first=True
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(self, src: Tensor, pos: Tensor | None) -> Tensor:
        """Args: src, pos (B, L, D). Returns (B, L, D)."""
        if self.pre_norm:
            x = self.norm1(src)
            q = _with_pos(x, pos)
            src = src + self.dropout1(self.self_attn(q, q, x, need_weights=False)[0])
            return src + self.dropout2(self._ffn(self.norm2(src)))
        q = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(q, q, src, need_weights=False)[0]))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class DecoderLayer(nn.Module):
    """Query self-attention, cross-attention to memory, FFN (DETR forward_post / forward_pre)."""

    def __init__(
        self, *, d_model: int, num_heads: int, dim_feedforward: int, dropout: float, pre_norm: bool
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            d_model, num_heads, dropout=dropout, batch_first=True
        )
        self.multihead_attn = nn.MultiheadAttention(
            d_model, num_heads, dropout=dropout, batch_first=True
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None,
        query_pos: Tensor | None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        """Args: tgt, query_pos (B, Q, D); memory, pos (B, L, D); memory_mask (B * heads, Q, L),
        True where a query may not attend. Returns (B, Q, D)."""
        key = _with_pos(memory, pos)
        if self.pre_norm:
            x = self.norm1(tgt)
            q = _with_pos(x, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, q, x, need_weights=False)[0])
            x = self.norm2(tgt)
            x = self.multihead_attn(
                _with_pos(x, query_pos), key, memory, attn_mask=memory_mask, need_weights=False
            )[0]
            tgt = tgt + self.dropout2(x)
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        q = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, q, tgt, need_weights=False)[0]))
        x = self.multihead_attn(
            _with_pos(tgt, query_pos), key, memory, attn_mask=memory_mask, need_weights=False
        )[0]
        tgt = self.norm2(tgt + self.dropout2(x))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class TransformerEncoder(nn.Module):
    """A stack of encoder layers; a final ``norm`` exists only with pre-norm (as in DETR)."""

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
        self.layers = nn.ModuleList(
            EncoderLayer(
                d_model=d_model,
                num_heads=num_heads,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                pre_norm=pre_norm,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model) if pre_norm else None

    def forward(self, src: Tensor, pos: Tensor | None) -> Tensor:
        """Args: src, pos (B, L, D). Returns (B, L, D)."""
        for layer in self.layers:
            src = layer(src, pos)
        return self.norm(src) if self.norm is not None else src


class TransformerDecoder(nn.Module):
    """A stack of decoder layers; the shared final ``norm`` is applied to every layer's output."""

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
        self.layers = nn.ModuleList(
            DecoderLayer(
                d_model=d_model,
                num_heads=num_heads,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                pre_norm=pre_norm,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None,
        query_pos: Tensor,
        return_intermediate: bool = True,
    ) -> Tensor:
        """Args: tgt, query_pos (B, Q, D); memory, pos (B, L, D).

        Returns:
            (L_dec, B, Q, D) normed outputs of every layer, or (1, B, Q, D) of the last one only.
        """
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos)
            if return_intermediate:
                outputs.append(self.norm(tgt))
        if not return_intermediate:
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)  # (L_dec, B, Q, D)


class Transformer(nn.Module):
    """The predictor's transformer: a decoder only (the official config has 0 encoder layers)."""

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        dec_layers: int,
        dim_feedforward: int,
        dropout: float,
        pre_norm: bool,
    ) -> None:
        super().__init__()
        self.decoder = TransformerDecoder(
            d_model=d_model,
            num_heads=num_heads,
            num_layers=dec_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            pre_norm=pre_norm,
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self, src: Tensor, pos: Tensor, query_embed: Tensor, return_intermediate: bool = True
    ) -> Tensor:
        """Args: src, pos (B, D, H, W) memory and its encoding; query_embed (Q, D).

        Returns:
            (L_dec or 1, B, Q, D) decoder outputs after the shared norm.
        """
        b = src.shape[0]
        memory = src.flatten(2).transpose(1, 2)  # (B, HW, D)
        pos = pos.flatten(2).transpose(1, 2)  # (B, HW, D)
        query_pos = query_embed.unsqueeze(0).expand(b, -1, -1)  # (B, Q, D)
        tgt = torch.zeros_like(query_pos)
        return self.decoder(tgt, memory, pos, query_pos, return_intermediate)
