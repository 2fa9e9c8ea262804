"""Deep vision–language fusion: GLIP's bidirectional cross-attention (``fuse_helper.py``) and the BERT layer
that the DyHead tower runs on the fused text after every fusion (``vldyhead.BertEncoderLayer``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .constants import is_compiling

__all__ = ["BiMultiHeadAttention", "BiAttentionBlock", "VLFuse", "BertEncoderLayer"]

_CLAMP = 50000.0  # official: "do not increase 50000, data type half has quite limited range"


class BiMultiHeadAttention(nn.Module):
    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"fusion embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim ** (-0.5)
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for m in (
            self.v_proj,
            self.l_proj,
            self.values_v_proj,
            self.values_l_proj,
            self.out_v_proj,
            self.out_l_proj,
        ):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        # The factored form (same function, fewer FLOPs); False runs the official operation order.
        self.factored = True

    def _shape(self, t: torch.Tensor, bsz: int) -> torch.Tensor:
        return t.view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2).contiguous()

    def forward(
        self, v: torch.Tensor, lang: torch.Tensor, mask_l: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.factored:
            return self.forward_factored(v, lang, mask_l)
        return self.forward_reference(v, lang, mask_l)

    def forward_reference(
        self, v: torch.Tensor, lang: torch.Tensor, mask_l: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The official computation, operation for operation (kept to test the factored form against)."""
        bsz, tgt_len, _ = v.shape
        proj_shape = (bsz * self.num_heads, -1, self.head_dim)
        q = self._shape(self.v_proj(v) * self.scale, bsz).view(*proj_shape)
        k = self._shape(self.l_proj(lang), bsz).view(*proj_shape)
        vv = self._shape(self.values_v_proj(v), bsz).view(*proj_shape)
        vl = self._shape(self.values_l_proj(lang), bsz).view(*proj_shape)
        src_len = k.size(1)
        attn = torch.bmm(q, k.transpose(1, 2)).clamp(min=-_CLAMP, max=_CLAMP)
        # Text side: softmax over ALL visual tokens (no visual mask: padded image area takes part, as
        # official).
        attn_t = attn.transpose(1, 2)
        attn_l = (attn_t - attn_t.max(dim=-1, keepdim=True)[0]).clamp(min=-_CLAMP, max=_CLAMP).softmax(dim=-1)
        if mask_l is not None:
            attn = (attn.view(bsz, self.num_heads, tgt_len, src_len) + _text_mask(mask_l, attn.dtype)).view(
                bsz * self.num_heads, tgt_len, src_len
            )
        attn_v = attn.softmax(dim=-1)
        out_v = torch.bmm(attn_v, vl).view(bsz, self.num_heads, tgt_len, self.head_dim).transpose(1, 2)
        out_l = torch.bmm(attn_l, vv).view(bsz, self.num_heads, src_len, self.head_dim).transpose(1, 2)
        out_v = self.out_v_proj(out_v.reshape(bsz, tgt_len, self.embed_dim))
        out_l = self.out_l_proj(out_l.reshape(bsz, src_len, self.embed_dim))
        return out_v, out_l

    def forward_factored(
        self, v: torch.Tensor, lang: torch.Tensor, mask_l: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same function with the visual projections folded into the text side.

        The official form projects all N visual tokens (22k for GLIP-T at 800x1333) to the 2048-wide
        embedding three times (query, value, and back out) although every product it feeds has the T text
        tokens on the other side. Since (v Wq_h + bq_h) k_h^T = v (Wq_h k_h^T) + bq_h k_h^T, and likewise for
        the value/output projections, the per-head matrices are formed on the text side (T x 256) and the
        visual side needs three products of width heads*T instead of six of width 2048: 16-32x fewer
        FLOPs for a short query, 2x fewer for a full 256-token chunk, and no N x 2048 tensors. Differences
        from :meth:`forward_reference` are float reassociation only (tested).
        """
        bsz, n, dv = v.shape
        h, d = self.num_heads, self.head_dim
        t = lang.shape[1]
        k = self.l_proj(lang).view(bsz, t, h, d)
        vl = self.values_l_proj(lang).view(bsz, t, h, d)
        wq = self.v_proj.weight.view(h, d, dv)
        # logits[b, n, (h, t)] = v[b, n] . a[b, (h, t)] + c[b, (h, t)], computed twice: once with the visual
        # tokens last (text side: softmax over them along a contiguous axis) and once with them first
        # (visual side: softmax over the T tokens). A second product this thin is cheaper than transposing
        # the logits, and a softmax along a middle axis measured several ms per layer on an H200.
        a = torch.einsum("hdc,bthd->bhtc", wq, k).reshape(bsz, h * t, dv) * self.scale
        c = torch.einsum("hd,bthd->bht", self.v_proj.bias.view(h, d), k).reshape(bsz, h * t, 1) * self.scale
        attn_l = torch.baddbmm(c, a, v.transpose(1, 2)).clamp(min=-_CLAMP, max=_CLAMP)
        # Text side: softmax over ALL visual tokens (no visual mask: the padded image area takes part, as
        # official).
        attn_l = (attn_l - attn_l.amax(dim=-1, keepdim=True)).clamp(min=-_CLAMP, max=_CLAMP).softmax(dim=-1)
        attn = torch.baddbmm(c.transpose(1, 2), v, a.transpose(1, 2)).clamp(min=-_CLAMP, max=_CLAMP)
        attn = attn.view(bsz, n, h, t)
        if mask_l is not None:
            attn = attn + _text_mask(mask_l, attn.dtype).view(bsz, 1, 1, t)
        attn_v = attn.softmax(dim=-1).view(bsz, n, h * t)
        # out_v = sum_h attn_v[h]^T @ (vl_h Wo_h^T) + bo
        wo = self.out_v_proj.weight.view(dv, h, d)
        u = torch.einsum("bthd,chd->bhtc", vl, wo).reshape(bsz, h * t, dv)
        out_v = torch.baddbmm(self.out_v_proj.bias.view(1, 1, dv), attn_v, u)
        # out_l: (attn_l_h @ v) Wvv_h^T + bvv_h (softmax rows sum to one), then the official out_l_proj
        z = torch.bmm(attn_l, v).view(bsz, h, t, dv)
        wvv = self.values_v_proj.weight.view(h, d, dv)
        y = torch.einsum("bhtc,hdc->bthd", z, wvv) + self.values_v_proj.bias.view(1, 1, h, d)
        out_l = self.out_l_proj(y.reshape(bsz, t, h * d))
        return out_v, out_l


def _text_mask(mask_l: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] 0/1 mask -> additive [B, 1, 1, T] mask.

    Official quirk kept on purpose: the 0/1 mask gets -9e15 where 0 and is ADDED, so valid text positions
    get +1 (softmax-invariant, but it is what the checkpoints were trained with).

    fp16 cannot hold -9e15 (largest 65504: masked_fill raises): there the mask stays fp32 and the sum
    promotes to fp32, as the official fp32 mask added to a half attention does."""
    m = mask_l[:, None, None, :].to(torch.float32 if dtype == torch.float16 else dtype)
    return m.masked_fill(m == 0, -9e15)


class BiAttentionBlock(nn.Module):
    """Pre-LN bidirectional attention with layer scale; the residual is on the NORMALISED inputs
    (official)."""

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, init_values: float):
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads)
        self.gamma_v = nn.Parameter(init_values * torch.ones(v_dim))
        self.gamma_l = nn.Parameter(init_values * torch.ones(l_dim))

    def forward(
        self, v: torch.Tensor, lang: torch.Tensor, mask_l: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.layer_norm_v(v)
        lang = self.layer_norm_l(lang)
        dv, dl = self.attn(v, lang, mask_l)
        return v + self.gamma_v * dv, lang + self.gamma_l * dl


class VLFuse(nn.Module):
    """All five levels are flattened into one visual sequence for one attention call, then split back."""

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, num_convs: int):
        super().__init__()
        self.b_attn = BiAttentionBlock(v_dim, l_dim, embed_dim, num_heads, init_values=1.0 / num_convs)

    def forward(self, visual: list[torch.Tensor], hidden: torch.Tensor, masks: torch.Tensor):
        sizes = [f.shape[-2:] for f in visual]
        bs = visual[0].shape[0]
        flat = torch.cat([f.flatten(2).transpose(1, 2) for f in visual], dim=1)  # permute_and_flatten, A=1
        new_v, new_l = self.b_attn(flat, hidden, masks)
        out, start = [], 0
        for h, w in sizes:  # each level's rows straight to channels-first: one copy, not two
            out.append(channels_first(new_v[:, start : start + h * w]).view(bs, -1, h, w))
            start += h * w
        return out, new_l


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """[B, N, C] -> contiguous [B, C, N].

    Why not ``x.transpose(1, 2).contiguous()`` on a CPU: a transposed 3-D copy takes the generic strided
    path (6.7 ms for GLIP-T's 6400 x 256 fusion output at 480x640 on 2 cores, six per frame), a 2-D one
    torch's blocked transpose (1.8 ms). Without gradients only (the copy into a fresh tensor is not
    recorded as the function of ``x``)."""
    if x.device.type != "cpu" or torch.is_grad_enabled() or is_compiling():
        return x.transpose(1, 2).contiguous()
    out = x.new_empty(x.shape[0], x.shape[2], x.shape[1])
    for i in range(x.shape[0]):
        out[i].copy_(x[i].t())
    return out


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"BERT hidden size {hidden} not divisible by {heads} heads")
        self.num_heads = heads
        self.head_size = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, ext_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        scores = (
            scores.clamp(min=-_CLAMP, max=_CLAMP) + ext_mask
        )  # GLIP's modeling_bert clamps before the mask
        ctx = torch.matmul(scores.softmax(dim=-1), v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.shape[0], ctx.shape[1], -1)


class _DenseLN(nn.Module):
    def __init__(self, cin: int, cout: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        self.LayerNorm = nn.LayerNorm(cout, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.self = _SelfAttention(hidden, heads)
        self.output = _DenseLN(hidden, hidden, eps)

    def forward(self, x: torch.Tensor, ext_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, ext_mask), x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertEncoderLayer(nn.Module):
    """Post-LN BERT layer (HF names) with GLIP's ±50000 score clamp; runs on the fused text features."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float = 1e-12):
        super().__init__()
        self.attention = _Attention(hidden, heads, eps)
        self.intermediate = _Intermediate(hidden, intermediate)
        self.output = _DenseLN(intermediate, hidden, eps)

    def forward(self, hidden: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        # transformers' get_extended_attention_mask: (1 - mask) * finfo(dtype).min
        ext = (1.0 - masks[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        attn_out = self.attention(hidden, ext)
        return self.output(self.intermediate(attn_out), attn_out)
