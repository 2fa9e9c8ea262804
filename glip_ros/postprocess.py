"""Head outputs -> detections, as GLIP's ``ATSSPostProcessor`` (``modeling/rpn/inference.py``) does it.

Per level: sigmoid of the token logits, per-phrase score = MEAN of its tokens' probabilities, threshold
on that probability (0.05) BEFORE centerness, ``pre_nms_top_n`` candidates by prob × sigmoid(centerness),
decode (+1 convention), clip to the resized image, score = sqrt(prob × centerness). Over levels (and prompt
chunks): one class-aware NMS with +1 IoU (the GPU ``ml_nms``), then the best ``detections_per_img`` by
``kthvalue``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import nms

from .model.head import BoxCoder, HeadOutputs
from .prompt import TOKEN_PAD

__all__ = ["Candidates", "phrase_scores", "level_candidates", "select_candidates", "finalize", "Detection"]


@dataclass
class Detection:
    """One grounded box in ORIGINAL image pixels (x1, y1, x2, y2)."""

    box_xyxy: tuple[float, float, float, float]
    score: float
    phrase: str
    phrase_index: int


@dataclass
class Candidates:
    boxes: torch.Tensor  # [N, 4] xyxy in the resized image
    scores: torch.Tensor  # [N] sqrt(prob × centerness)
    labels: torch.Tensor  # [N] phrase index in the whole query (0-based)
    token_probs: torch.Tensor | None = None  # [N, T] per-token probabilities at each box (sentence mode only)

    @staticmethod
    def cat(items: Sequence[Candidates]) -> Candidates:
        probs = None
        if items and all(c.token_probs is not None for c in items):
            probs = torch.cat([c.token_probs for c in items])
        return Candidates(
            torch.cat([c.boxes for c in items]),
            torch.cat([c.scores for c in items]),
            torch.cat([c.labels for c in items]),
            probs,
        )

    @staticmethod
    def empty(like: torch.Tensor) -> Candidates:
        return Candidates(like.new_zeros((0, 4)), like.new_zeros(0), like.new_zeros(0, dtype=torch.long))

    def index(self, keep: torch.Tensor) -> Candidates:
        probs = self.token_probs[keep] if self.token_probs is not None else None
        return Candidates(self.boxes[keep], self.scores[keep], self.labels[keep], probs)

    def __len__(self) -> int:
        return int(self.scores.numel())


def token_span(indices: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[int, int]:
    """[lo, hi): the token columns any of these phrase indices (``Prompt.phrase_index()``) use."""
    real = [i[i < TOKEN_PAD] for i, _ in indices]
    real = [r for r in real if r.numel()]
    if not real:
        return (0, 0)
    return min(int(r.min()) for r in real), max(int(r.max()) for r in real) + 1


def stack_index(items: Sequence[tuple[torch.Tensor, torch.Tensor]], device) -> tuple:
    """Row-wise phrase indices padded to a common [N, P, kmax]; padded phrases have count 0 (score 0); and
    the span of token columns they use. Depends on the prompts only: the engine keeps it with the query."""
    p_max = max(i.shape[0] for i, _ in items)
    k_max = max(i.shape[1] for i, _ in items)
    idx = torch.full((len(items), p_max, k_max), TOKEN_PAD, dtype=torch.long)
    counts = torch.zeros((len(items), p_max), dtype=torch.float32)
    valid = torch.zeros((len(items), p_max), dtype=torch.bool)
    for n, (i, c) in enumerate(items):
        idx[n, : i.shape[0], : i.shape[1]] = i
        counts[n, : c.shape[0]] = c
        valid[n, : c.shape[0]] = True
    # The token columns any phrase uses lie in [lo, hi): known here, on the host, without a device sync.
    return idx.to(device), counts.to(device), valid.to(device), token_span(items)


def phrase_scores(logits: torch.Tensor, index: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[N, HW, T] token logits -> [N, HW, P] mean of each phrase's token probabilities (SCORE_AGG MEAN).

    Only the columns a phrase uses go through the sigmoid. ``index`` [N, P, kmax] entries ≥ T are padding:
    they read column 0 and are multiplied by exactly 0, so the sum is the official sum over the
    phrase's tokens.
    Phrases with no token (cut off or unmappable) score 0 instead of the official NaN.
    """
    n, hw, t = logits.shape
    p, k = index.shape[1], index.shape[2]
    real = index < t
    idx = torch.where(real, index, torch.zeros_like(index)).view(n, 1, p * k).expand(n, hw, p * k)
    g = torch.gather(logits, 2, idx).sigmoid().view(n, hw, p, k) * real.view(n, 1, p, k).to(logits.dtype)
    return g.sum(-1) / counts.clamp(min=1)[:, None, :]


@dataclass
class Row:
    """One (prompt chunk, image) pair of a head output batch."""

    index: tuple[torch.Tensor, torch.Tensor]  # Prompt.phrase_index(): built once per prompt, not per frame
    image_size: tuple[int, int]  # resized (h, w), before padding
    label_offset: int = 0


def level_candidates(
    logits: torch.Tensor,
    bbox_reg: torch.Tensor,
    centerness: torch.Tensor,
    anchors: torch.Tensor,
    index: tuple,
    rows: Sequence[Row],
    box_coder: BoxCoder,
    pre_nms_thresh: float,
    pre_nms_top_n: int,
    keep_token_probs: bool = False,
    locations: torch.Tensor | None = None,
) -> list[Candidates]:
    """One pyramid level for every row at once (``forward_for_single_feature_map``).

    Per row: candidates are (location, phrase) pairs whose phrase probability exceeds ``pre_nms_thresh``; the
    best ``pre_nms_top_n`` of them by probability × centerness are kept (official: ``topk`` over the
    candidates). Non-candidates are set to -1 so a top-k over all pairs takes every candidate first.
    ``locations``: ``logits`` hold only these locations (already pruned by the caller, a superset of those
    that can hold a candidate); None: every location of the level.
    """
    idx, counts, valid_phrase, (lo, hi) = index
    logits = logits.float()
    if locations is not None:
        alive, logits_a = locations, logits
    else:
        hw, t = logits.shape[1:]
        # Exact pruning: a phrase score is a mean of token probabilities, so a location none of whose used
        # tokens reaches the threshold cannot hold a candidate. Only the other locations are scored (a small
        # fraction with trained weights; the margin keeps float rounding of the mean on the safe side). The
        # max runs over the span of used columns (a superset: separators included), a view, one pass: 13x
        # cheaper on CPU than gathering the used columns, and it prunes no location the exact set would keep.
        hi = min(hi, t)
        if hi <= lo:
            return [Candidates.empty(logits) for _ in rows]
        peak = logits[:, :, lo:hi].amax(dim=2).sigmoid()  # [N, HW]
        alive = torch.nonzero((peak > pre_nms_thresh * (1 - 1e-6)).any(0)).squeeze(1)  # [A]
        logits_a = logits.index_select(1, alive) if alive.numel() < hw else logits
    n = logits_a.shape[0]
    if alive.numel() == 0:
        return [Candidates.empty(logits_a) for _ in rows]
    scores = phrase_scores(logits_a, idx, counts)  # [N, A, P]
    reg = bbox_reg.float().flatten(2).transpose(1, 2).index_select(1, alive)  # [N, A, 4]
    ctr = centerness.float().flatten(1).sigmoid().index_select(1, alive)  # [N, A]
    anchors = anchors.index_select(0, alive)
    p = scores.shape[2]
    cand = (scores > pre_nms_thresh) & valid_phrase[:, None, :]
    weighted = torch.where(cand, scores * ctr[:, :, None], torch.full_like(scores, -1.0)).view(n, -1)
    k = min(pre_nms_top_n, weighted.shape[1])
    if k == 0:
        return [Candidates.empty(logits_a) for _ in rows]
    vals, top = weighted.topk(k, dim=1, sorted=False)
    is_cand = cand.view(n, -1).gather(1, top)
    loc, cls = top // p, top % p
    boxes = box_coder.decode(
        reg.gather(1, loc[:, :, None].expand(n, k, 4)).reshape(-1, 4), anchors[loc.reshape(-1)]
    ).view(n, k, 4)
    lim = torch.tensor(
        [[r.image_size[1] - 1, r.image_size[0] - 1] * 2 for r in rows], dtype=boxes.dtype, device=boxes.device
    )
    # BoxList.clip_to_image(remove_empty=False), TO_REMOVE = 1
    boxes = torch.minimum(boxes.clamp(min=0), lim[:, None, :])
    keep = is_cand & ((boxes[..., 2] - boxes[..., 0] + 1) >= 0) & ((boxes[..., 3] - boxes[..., 1] + 1) >= 0)
    out = []
    for i, r in enumerate(rows):
        m = keep[i]
        tok = logits_a[i][loc[i][m]].sigmoid() if keep_token_probs else None
        out.append(Candidates(boxes[i][m], torch.sqrt(vals[i][m]), cls[i][m] + r.label_offset, tok))
    return out


def head_candidates(
    out: HeadOutputs,
    anchors: Sequence[torch.Tensor],
    rows: Sequence[Row],
    box_coder: BoxCoder,
    pre_nms_thresh: float,
    pre_nms_top_n: int,
    keep_token_probs: bool = False,
    index: tuple | None = None,
) -> list[Candidates]:
    """All levels of a head output whose batch rows are ``rows``; per row, levels concatenated in order.
    ``index``: :func:`stack_index` of the rows' phrase indices, when the caller keeps it (else built here)."""
    if index is None:
        index = stack_index([r.index for r in rows], out.logits[0].device)
    per_level = [
        level_candidates(
            out.logits[lv],
            out.bbox_reg[lv],
            out.centerness[lv],
            anchors[lv],
            index,
            rows,
            box_coder,
            pre_nms_thresh,
            pre_nms_top_n,
            keep_token_probs,
            None if out.locations is None else out.locations[lv],
        )
        for lv in range(len(out.logits))
    ]
    return [Candidates.cat([lvl[i] for lvl in per_level]) for i in range(len(rows))]


def class_aware_nms(c: Candidates, thresh: float, vanilla_max_classes: int = 64) -> torch.Tensor:
    """Kept indices, ascending (as ``ml_nms``). IoU uses +1 widths: boxes are shifted by +1 at x2/y2."""
    if len(c) == 0:
        return torch.zeros(0, dtype=torch.long, device=c.scores.device)
    boxes = c.boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], device=c.boxes.device)
    labels = c.labels
    uniq = labels.unique()
    if uniq.numel() <= vanilla_max_classes:
        # Per class: bit-exact IoU (no coordinate offset trick).
        keep = [
            torch.nonzero(labels == u).squeeze(1)[nms(boxes[labels == u], c.scores[labels == u], thresh)]
            for u in uniq
        ]
        keep_t = torch.cat(keep)
    else:
        offsets = labels.to(boxes.dtype) * (boxes.max() + 2)
        keep_t = nms(boxes + offsets[:, None], c.scores, thresh)
    return keep_t.sort().values


def select_candidates(c: Candidates, nms_thresh: float, detections_per_img: int) -> Candidates:
    """``select_over_all_levels``: class-aware NMS then keep the top ``detections_per_img`` (ties kept)."""
    keep = class_aware_nms(c, nms_thresh)
    c = c.index(keep)
    n = len(c)
    if n > detections_per_img > 0:
        thresh, _ = torch.kthvalue(c.scores.cpu().float(), n - detections_per_img + 1)
        keep = torch.nonzero(c.scores >= thresh.item()).squeeze(1)
        c = c.index(keep)
    return c


def finalize(
    c: Candidates, scale: tuple[float, float], phrases: Sequence[str], score_threshold: float
) -> list[Detection]:
    """Boxes back to original pixels (``BoxList.resize``), threshold (score > thr), sorted by score."""
    sx, sy = scale
    keep = c.scores > score_threshold
    boxes = c.boxes[keep].cpu().float()
    # BoxList.resize: float32 coordinates times python-float ratios, x and y separately.
    boxes = torch.stack([boxes[:, 0] * sx, boxes[:, 1] * sy, boxes[:, 2] * sx, boxes[:, 3] * sy], dim=1)
    scores = c.scores[keep].cpu().float()
    labels = c.labels[keep].cpu()
    order = torch.argsort(scores, descending=True, stable=True)
    dets = []
    for i in order.tolist():
        lab = int(labels[i])
        dets.append(Detection(tuple(float(v) for v in boxes[i]), float(scores[i]), phrases[lab], lab))
    return dets


def sentence_phrase(token_probs: torch.Tensor, prompt, word_index: int, rel: float = 0.5) -> str:
    """The phrase a box grounds to in a free-form sentence: the run of tokens around the box's best word whose
    probability is at least ``rel`` × that word's, trimmed of stop words (no NLTK needed, nothing
    downloaded)."""
    from .prompt import STOPWORDS

    spans = prompt.token_spans
    n = prompt.num_tokens
    toks = prompt.token_lists[word_index] or [1]
    best = max(toks, key=lambda t: float(token_probs[t]))
    thr = rel * float(token_probs[best])

    def usable(t: int) -> bool:
        b, e = spans[t]
        return 0 < t < n - 1 and e > b and any(ch.isalnum() for ch in prompt.caption[b:e])

    lo = hi = best
    while usable(lo - 1) and float(token_probs[lo - 1]) >= thr:
        lo -= 1
    while usable(hi + 1) and float(token_probs[hi + 1]) >= thr:
        hi += 1
    words = prompt.caption[spans[lo][0] : spans[hi][1]].split()
    while len(words) > 1 and words[0].lower() in STOPWORDS:
        words.pop(0)
    while len(words) > 1 and words[-1].lower() in STOPWORDS:
        words.pop()
    return " ".join(words) or prompt.phrases[word_index]


def finalize_sentence(
    c: Candidates, scale: tuple[float, float], prompt, score_threshold: float, nms_thresh: float
) -> list[Detection]:
    """Sentence mode: name each box by the tokens it grounds to, then drop duplicates of the same phrase."""
    dets = finalize(c, scale, prompt.phrases, score_threshold)
    if not dets or c.token_probs is None:
        return dets
    keep = c.scores > score_threshold
    probs = c.token_probs[keep].cpu()
    scores = c.scores[keep].cpu().float()
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    named = []
    for det, i in zip(dets, order, strict=True):
        det.phrase = sentence_phrase(probs[i], prompt, det.phrase_index)
        named.append(det)
    out: list[Detection] = []
    for d in named:  # already sorted by score: keep a box unless a kept one has its phrase and overlaps it
        box = torch.tensor([d.box_xyxy])
        if any(
            o.phrase == d.phrase and float(_iou1(box, torch.tensor([o.box_xyxy]))) > nms_thresh for o in out
        ):
            continue
        out.append(d)
    return out


def _iou1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou

    return box_iou(a + torch.tensor([0.0, 0.0, 1.0, 1.0]), b + torch.tensor([0.0, 0.0, 1.0, 1.0]))[0, 0]
