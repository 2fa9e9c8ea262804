"""VL-DyHead with the ATSS box head and token-alignment (dot-product) logits; anchors and the box coder.

Official names: ``rpn.head.dyhead_tower.{i}``, ``rpn.head.{cls_logits,bbox_pred,centerness,scales}``,
``rpn.head.{dot_product_projection_text,log_scale,bias_lang,bias0}``,
``rpn.anchor_generator.cell_anchors.{l}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import GLIPConfig
from .constants import shape_constant
from .dyhead import DyConv
from .fusion import BertEncoderLayer, VLFuse
from .language import TextFeatures

__all__ = ["HeadOutputs", "VLDyHead", "AnchorGenerator", "BoxCoder", "RPN"]

_CLAMP = 50000.0


@dataclass
class HeadOutputs:
    logits: list[torch.Tensor]  # per level [B, H*W, T] token-alignment logits (before sigmoid)
    bbox_reg: list[torch.Tensor]  # per level [B, 4, H, W] (after Scale)
    centerness: list[torch.Tensor]  # per level [B, 1, H, W]
    cls_width: int  # width of the unused cls_logits conv: the official score tensor's width
    fused_text: torch.Tensor | None = None  # [B, T, D] text after the last fusion/BERT layer
    # per level [A] indices of the locations ``logits`` hold ([B, A, T]); None: every location (H*W)
    locations: list[torch.Tensor] | None = None


class Scale(nn.Module):
    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class VLDyHead(nn.Module):
    def __init__(self, cfg: GLIPConfig):
        super().__init__()
        h = cfg.head
        lang = cfg.language
        if cfg.fpn_channels != h.channels:
            raise ValueError(f"FPN channels ({cfg.fpn_channels}) must equal DyHead channels ({h.channels})")
        self.early_fusion = h.early_fusion
        tower: list[nn.Module] = []
        for _ in range(h.num_convs):
            if h.early_fusion:
                tower.append(
                    VLFuse(h.channels, lang.hidden_size, h.fusion_embed_dim, h.fusion_num_heads, h.num_convs)
                )
                tower.append(
                    BertEncoderLayer(
                        lang.hidden_size,
                        lang.num_attention_heads,
                        lang.intermediate_size,
                        lang.layer_norm_eps,
                    )
                )
            tower.append(DyConv(h.channels, h.group_norm_groups, h.use_deform, h.use_dyrelu, h.use_dyfuse))
        self.dyhead_tower = nn.ModuleList(tower)
        self.cls_logits = nn.Conv2d(h.channels, h.num_classes, 1)
        self.bbox_pred = nn.Conv2d(h.channels, 4, 1)
        self.centerness = nn.Conv2d(h.channels, 1, 1)
        bias_value = -math.log((1 - h.prior_prob) / h.prior_prob)
        self.dot_product_projection_text = nn.Linear(lang.hidden_size, h.channels, bias=True)
        self.log_scale = nn.Parameter(torch.tensor([h.log_scale], dtype=torch.float32))
        self.bias_lang = nn.Parameter(torch.zeros(lang.hidden_size))
        self.bias0 = nn.Parameter(torch.tensor([bias_value], dtype=torch.float32))
        for m in (self.cls_logits, self.bbox_pred, self.centerness):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.cls_logits.bias, bias_value)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(len(h.anchor_strides)))

    def run_tower(
        self, visual: list[torch.Tensor], text: TextFeatures
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        hidden = text.hidden
        for layer in self.dyhead_tower:
            if isinstance(layer, VLFuse):
                visual, hidden = layer(visual, hidden, text.masks)
            elif isinstance(layer, BertEncoderLayer):
                hidden = layer(hidden, text.masks)
            else:
                visual = layer(visual)
        return visual, hidden

    def forward(self, visual: list[torch.Tensor], text: TextFeatures) -> HeadOutputs:
        visual, hidden = self.run_tower(visual, text)
        embedding = hidden if self.early_fusion else text.embedded
        return self.predict(visual, embedding, hidden if self.early_fusion else None)

    def token_projection(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text side of the alignment logits (depends on the text only when there is no early fusion)."""
        embedding = F.normalize(embedding, p=2, dim=-1)
        proj_tokens = self.dot_product_projection_text(embedding / 2.0)
        token_bias = torch.matmul(embedding, self.bias_lang) + self.bias0
        return proj_tokens, token_bias

    def box_outputs(self, visual: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        bbox_reg = [self.scales[i](self.bbox_pred(v)) for i, v in enumerate(visual)]
        centerness = [self.centerness(v) for v in visual]
        return bbox_reg, centerness

    def alignment_logits(
        self, visual: list[torch.Tensor], proj_tokens: torch.Tensor, token_bias: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per level [B, H*W, T] logits: q.p / exp(log_scale) + bias, clamped to ±50000 (CLAMP_DOT_PRODUCT).

        The scale is applied to the T token vectors rather than to the H*W x T product and the bias is added
        by the product itself: the same numbers up to float rounding, two passes over the logits fewer."""
        scaled = (proj_tokens / self.log_scale.exp()).transpose(-1, -2)  # [B, C, T]
        bias = token_bias.unsqueeze(1)  # [B, 1, T]
        # permute_and_flatten with A = 1: [B, H*W, C]
        return [
            torch.baddbmm(bias, v.flatten(2).transpose(1, 2), scaled).clamp(min=-_CLAMP, max=_CLAMP)
            for v in visual
        ]

    def chunk_token_matrix(self, proj_tokens: torch.Tensor, token_bias: torch.Tensor) -> torch.Tensor:
        """G prompt chunks' [G, T, C] tokens and [G, T] biases -> [C+1, G*T]: for visual queries with a last
        column of ones, ``queries @ matrix`` are the G chunks' alignment logits side by side, unclamped
        (no early fusion: one product scores every chunk of a group).

        The scale is applied to the tokens and the bias rides in the product: adding it to the [H*W, G*T]
        output (addmm copies it there first) was one more pass over the largest tensor here. The ±50000
        clamp exists for fp16 range and cannot change a probability (the sigmoid is exactly 0 or 1 beyond
        ±104 in fp32), so it is left out."""
        g, t, c = proj_tokens.shape
        scaled = torch.cat([proj_tokens / self.log_scale.exp(), token_bias[:, :, None]], dim=2)
        return scaled.reshape(g * t, c + 1).t()

    def predict(
        self, visual: list[torch.Tensor], embedding: torch.Tensor, fused_text: torch.Tensor | None = None
    ) -> HeadOutputs:
        proj_tokens, token_bias = self.token_projection(embedding)
        bbox_reg, centerness = self.box_outputs(visual)
        logits = self.alignment_logits(visual, proj_tokens, token_bias)
        return HeadOutputs(logits, bbox_reg, centerness, self.cls_logits.out_channels, fused_text)


class _BufferList(nn.Module):
    def __init__(self, tensors: list[torch.Tensor]):
        super().__init__()
        for i, t in enumerate(tensors):
            self.register_buffer(str(i), t)

    def __getitem__(self, i: int) -> torch.Tensor:
        return getattr(self, str(i))

    def __len__(self) -> int:
        return len(self._buffers)


def cell_anchor(stride: int, size: int) -> torch.Tensor:
    """Detectron ``generate_anchors`` for one size and aspect ratio 1 (+1 pixel convention)."""
    base = stride  # anchor [0, 0, s-1, s-1]
    w = float(base)
    ctr = 0.5 * (w - 1)
    ws = round(math.sqrt(w * w)) * (size / stride)
    return torch.tensor(
        [[ctr - 0.5 * (ws - 1), ctr - 0.5 * (ws - 1), ctr + 0.5 * (ws - 1), ctr + 0.5 * (ws - 1)]],
        dtype=torch.float32,
    )


class AnchorGenerator(nn.Module):
    def __init__(self, sizes: tuple[int, ...], strides: tuple[int, ...]):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError("anchor sizes and strides must have the same length")
        self.strides = tuple(strides)
        self.cell_anchors = _BufferList([cell_anchor(s, z) for s, z in zip(strides, sizes, strict=False)])
        # Anchors kept per frame size; they depend on the cell anchors, which a checkpoint loads (in place)
        # and .to() replaces, so they are this module's own and dropped when those change.
        self._grids: dict = {}
        self._grids_stamp: tuple = ()

    def grid(self, level: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        s = self.strides[level]
        shifts_x = torch.arange(0, w * s, step=s, dtype=torch.float32, device=device)
        shifts_y = torch.arange(0, h * s, step=s, dtype=torch.float32, device=device)
        sy, sx = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shifts = torch.stack((sx.reshape(-1), sy.reshape(-1), sx.reshape(-1), sy.reshape(-1)), dim=1)
        base = self.cell_anchors[level].to(device)
        return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level [H*W, 4] anchors: the same for every frame of a size, so kept (constants.py)."""
        stamp = tuple((b.data_ptr(), b._version) for b in self.cell_anchors._buffers.values())
        if stamp != self._grids_stamp:
            self._grids, self._grids_stamp = {}, stamp
        return [
            shape_constant(
                (str(f.device), i, f.shape[-2], f.shape[-1]),
                f.device,
                lambda i=i, f=f: self.grid(i, f.shape[-2], f.shape[-1], f.device),
                store=self._grids,
            )
            for i, f in enumerate(feats)
        ]


class BoxCoder:
    """ATSS box coder, weights (10, 10, 5, 5), legacy +1 widths."""

    weights = (10.0, 10.0, 5.0, 5.0)
    clip = math.log(1000.0 / 16)

    def encode(self, gt: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        ew = anchors[:, 2] - anchors[:, 0] + 1
        eh = anchors[:, 3] - anchors[:, 1] + 1
        ex = (anchors[:, 2] + anchors[:, 0]) / 2
        ey = (anchors[:, 3] + anchors[:, 1]) / 2
        gw = gt[:, 2] - gt[:, 0] + 1
        gh = gt[:, 3] - gt[:, 1] + 1
        gx = (gt[:, 2] + gt[:, 0]) / 2
        gy = (gt[:, 3] + gt[:, 1]) / 2
        wx, wy, ww, wh = self.weights
        return torch.stack(
            (wx * (gx - ex) / ew, wy * (gy - ey) / eh, ww * torch.log(gw / ew), wh * torch.log(gh / eh)),
            dim=1,
        )

    def decode(self, preds: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        anchors = anchors.to(preds.dtype)
        widths = anchors[:, 2] - anchors[:, 0] + 1
        heights = anchors[:, 3] - anchors[:, 1] + 1
        ctr_x = (anchors[:, 2] + anchors[:, 0]) / 2
        ctr_y = (anchors[:, 3] + anchors[:, 1]) / 2
        wx, wy, ww, wh = self.weights
        dx = preds[:, 0::4] / wx
        dy = preds[:, 1::4] / wy
        dw = torch.clamp(preds[:, 2::4] / ww, max=self.clip)
        dh = torch.clamp(preds[:, 3::4] / wh, max=self.clip)
        pcx = dx * widths[:, None] + ctr_x[:, None]
        pcy = dy * heights[:, None] + ctr_y[:, None]
        pw = torch.exp(dw) * widths[:, None]
        ph = torch.exp(dh) * heights[:, None]
        boxes = torch.zeros_like(preds)
        boxes[:, 0::4] = pcx - 0.5 * (pw - 1)
        boxes[:, 1::4] = pcy - 0.5 * (ph - 1)
        boxes[:, 2::4] = pcx + 0.5 * (pw - 1)
        boxes[:, 3::4] = pcy + 0.5 * (ph - 1)
        return boxes


class RPN(nn.Module):
    """``rpn.head`` + ``rpn.anchor_generator`` (+ ``rpn.tunable_linear`` once prompt tuning is enabled)."""

    def __init__(self, cfg: GLIPConfig):
        super().__init__()
        self.head = VLDyHead(cfg)
        self.anchor_generator = AnchorGenerator(cfg.head.anchor_sizes, cfg.head.anchor_strides)
        self.tunable_linear: nn.Linear | None = None
