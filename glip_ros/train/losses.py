"""GLIP training losses (``ATSSLossComputation`` of the official ``rpn/loss.py``) and ATSS assignment.

* ATSS: per level the top-9 anchors by centre distance are candidates; positives are candidates whose IoU
  reaches mean+std of the candidates' IoUs and whose centre lies inside the GT box; conflicts go to the
  highest-IoU GT. IoU uses the legacy +1 convention as ``boxlist_iou``.
* Token-level sigmoid focal loss (alpha 0.25, gamma 2) on the alignment logits, only where the text attention
  mask is 1, summed and divided by the number of positive anchors (averaged over processes).
* GIoU on decoded boxes weighted by the centerness targets (x 2.0), centerness BCE on positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "box_iou_plus1",
    "atss_assign",
    "centerness_targets",
    "token_sigmoid_focal_loss",
    "giou_loss",
    "GLIPLoss",
    "LossOutput",
]

INF = 100000000


def box_iou_plus1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU [N,M] of xyxy boxes with +1 widths (maskrcnn_benchmark ``boxlist_iou``, TO_REMOVE = 1)."""
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None] - inter)


def atss_assign(
    anchors_per_level: list[torch.Tensor], gt_boxes: torch.Tensor, topk: int = 9
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (matched GT index per anchor [A] long, -1 for background; IoU of the match [A])."""
    anchors = torch.cat(anchors_per_level, 0)
    num_anchors = anchors.shape[0]
    num_gt = gt_boxes.shape[0]
    if num_gt == 0:
        return torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device), anchors.new_zeros(
            num_anchors
        )
    ious = box_iou_plus1(anchors, gt_boxes)  # [A, G]
    gt_c = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2.0
    an_c = (anchors[:, :2] + anchors[:, 2:]) / 2.0
    distances = (an_c[:, None, :] - gt_c[None, :, :]).pow(2).sum(-1).sqrt()  # [A, G]
    candidates = []
    start = 0
    for level_anchors in anchors_per_level:
        end = start + level_anchors.shape[0]
        k = min(topk, level_anchors.shape[0])
        _, idx = distances[start:end].topk(k, dim=0, largest=False)
        candidates.append(idx + start)
        start = end
    cand = torch.cat(candidates, 0)  # [C, G]
    cand_ious = ious[cand, torch.arange(num_gt, device=anchors.device)]
    # unbiased std, torch's default in the official code (a single candidate: std 0 instead of NaN)
    std = cand_ious.std(0) if cand.shape[0] > 1 else torch.zeros_like(cand_ious[0])
    thresh = cand_ious.mean(0) + std
    is_pos = cand_ious >= thresh[None, :]
    cx = an_c[cand, 0]  # [C, G]
    cy = an_c[cand, 1]
    ltrb = torch.stack(
        [cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy], dim=-1
    )
    is_pos &= ltrb.min(dim=-1).values > 0.01
    ious_inf = torch.full_like(ious, -INF)
    g_idx = torch.arange(num_gt, device=anchors.device).expand_as(cand)
    ious_inf[cand[is_pos], g_idx[is_pos]] = ious[cand[is_pos], g_idx[is_pos]]
    values, matched = ious_inf.max(dim=1)
    matched[values == -INF] = -1
    return matched, values.clamp(min=0)


def centerness_targets(anchors: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of the anchor centre in its matched GT box."""
    cx = (anchors[:, 2] + anchors[:, 0]) / 2
    cy = (anchors[:, 3] + anchors[:, 1]) / 2
    lr = torch.stack([cx - gt[:, 0], gt[:, 2] - cx], dim=1)
    tb = torch.stack([cy - gt[:, 1], gt[:, 3] - cy], dim=1)
    c = torch.sqrt(
        (lr.min(dim=1).values / lr.max(dim=1).values).clamp(min=0)
        * (tb.min(dim=1).values / tb.max(dim=1).values).clamp(min=0)
    )
    return torch.nan_to_num(c, nan=0.0)


def token_sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    text_mask: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Summed focal loss over [B, N, T] where ``text_mask`` [B, T] is 1 (official
    ``token_sigmoid_binary_focal_loss``)."""
    mask = (text_mask > 0)[:, None, :].expand_as(logits)
    x = logits[mask].float()
    t = targets[mask].float()
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss.sum()


def giou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Summed (weighted) 1 - GIoU of xyxy boxes, as the official ``GIoULoss`` (no +1, 1e-7 guards)."""
    px1 = torch.min(pred[:, 0], pred[:, 2])
    py1 = torch.min(pred[:, 1], pred[:, 3])
    px2 = torch.max(pred[:, 0], pred[:, 2])
    py2 = torch.max(pred[:, 1], pred[:, 3])
    tx1, ty1, tx2, ty2 = target.unbind(1)
    t_area = (tx2 - tx1) * (ty2 - ty1)
    p_area = (px2 - px1) * (py2 - py1)
    iw = (torch.min(px2, tx2) - torch.max(px1, tx1)).clamp(min=0)
    ih = (torch.min(py2, ty2) - torch.max(py1, ty1)).clamp(min=0)
    inter = iw * ih
    union = t_area + p_area - inter + 1e-7
    iou = inter / union
    cw = torch.max(px2, tx2) - torch.min(px1, tx1)
    ch = torch.max(py2, ty2) - torch.min(py1, ty1)
    area_c = cw * ch + 1e-7
    losses = 1 - (iou - (area_c - union) / area_c)
    if weight is not None:
        losses = losses * weight
    return losses.sum()


@dataclass
class LossOutput:
    total: torch.Tensor
    token: torch.Tensor
    reg: torch.Tensor
    centerness: torch.Tensor
    num_pos: int


def _world_average(x: float) -> float:
    """Average of a scalar over processes (``num_pos_avg_per_gpu``); identity without torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([x], dtype=torch.float64, device=_dist_device())
        torch.distributed.all_reduce(t)
        return float(t.item()) / torch.distributed.get_world_size()
    return x


def _dist_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class GLIPLoss:
    """Token focal + GIoU (x reg_weight) + centerness, given head outputs and per-image targets.

    ``targets``: list per image of dicts with ``boxes`` [G,4] xyxy (in the resized image's pixels) and
    ``positive_map`` [G, T] binary (tokens each box grounds to, T = the batch's padded text length).
    """

    def __init__(
        self, box_coder, topk: int = 9, alpha: float = 0.25, gamma: float = 2.0, reg_weight: float = 2.0
    ):
        self.box_coder = box_coder
        self.topk = topk
        self.alpha = alpha
        self.gamma = gamma
        self.reg_weight = reg_weight

    def __call__(
        self, head_out, anchors_per_level: list[torch.Tensor], targets: list[dict], text_mask: torch.Tensor
    ):
        logits = torch.cat(head_out.logits, dim=1)  # [B, A, T]
        bbox = torch.cat([r.permute(0, 2, 3, 1).reshape(r.shape[0], -1, 4) for r in head_out.bbox_reg], dim=1)
        ctr = torch.cat([c.permute(0, 2, 3, 1).reshape(c.shape[0], -1) for c in head_out.centerness], dim=1)
        anchors = torch.cat(anchors_per_level, 0)
        B, A, T = logits.shape
        token_targets = logits.new_zeros((B, A, T), dtype=torch.float32)
        pos_b, pos_a, pos_gt = [], [], []
        for b, tgt in enumerate(targets):
            boxes = tgt["boxes"].to(anchors)
            matched, _ = atss_assign(anchors_per_level, boxes, self.topk)
            pos = torch.nonzero(matched >= 0).squeeze(1)
            if len(pos):
                pm = tgt["positive_map"].to(token_targets)
                token_targets[b, pos, : pm.shape[1]] = pm[matched[pos]]
                pos_b.append(torch.full_like(pos, b))
                pos_a.append(pos)
                pos_gt.append(boxes[matched[pos]])
        num_pos_local = int(sum(len(p) for p in pos_a))
        num_pos = max(_world_average(float(num_pos_local)), 1.0)
        token = token_sigmoid_focal_loss(logits, token_targets, text_mask, self.alpha, self.gamma) / num_pos
        if num_pos_local == 0:
            zero = bbox.sum() * 0.0 + ctr.sum() * 0.0
            return LossOutput(token + zero, token.detach(), zero.detach(), zero.detach(), 0)
        ib = torch.cat(pos_b)
        ia = torch.cat(pos_a)
        gt = torch.cat(pos_gt)
        an = anchors[ia]
        ctr_t = centerness_targets(an, gt)
        sum_ctr = max(_world_average(float(ctr_t.sum())), 1e-6)
        reg_t = self.box_coder.encode(gt, an)
        pred_boxes = self.box_coder.decode(bbox[ib, ia].float(), an)
        tgt_boxes = self.box_coder.decode(reg_t, an)
        reg = giou_loss(pred_boxes, tgt_boxes, ctr_t) / sum_ctr
        cent = F.binary_cross_entropy_with_logits(ctr[ib, ia].float(), ctr_t, reduction="sum") / num_pos
        total = token + self.reg_weight * reg + cent
        return LossOutput(total, token.detach(), reg.detach(), cent.detach(), num_pos_local)
