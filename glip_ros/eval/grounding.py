"""Phrase-grounding Recall@k (Flickr30K Entities protocol, GLIP's ``FLICKR_GT_TYPE separate``).

A phrase is a hit at k when any of its k best-scoring predicted boxes has IoU >= 0.5 with *any* ground-truth
box of that phrase. Phrases without ground-truth boxes (negatives) are not counted; a phrase with no
prediction is a miss at every k (the official evaluator appends a dummy [0,0,0,0] box for the same effect).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .coco import box_iou_xywh

__all__ = ["grounding_recall"]


def grounding_recall(
    items: Iterable[dict[str, Any]], ks: Sequence[int] = (1, 5, 10), iou_thr: float = 0.5
) -> dict[str, Any]:
    """``items``: one dict per phrase with ``gt_boxes`` (xywh list), ``pred_boxes`` (xywh list) and
    ``pred_scores``; an optional ``kind`` groups the result (e.g. "referring", "relation").

    Returns ``{"R@1": .., "R@5": .., "R@10": .., "n": .., "by_kind": {kind: {...}}}``.
    """
    hits: dict[str, list[list[bool]]] = {}
    for it in items:
        gt = np.asarray(it["gt_boxes"], dtype=np.float64).reshape(-1, 4)
        if len(gt) == 0:
            continue
        pb = np.asarray(it.get("pred_boxes", []), dtype=np.float64).reshape(-1, 4)
        ps = np.asarray(it.get("pred_scores", []), dtype=np.float64).reshape(-1)
        if len(pb):
            order = np.argsort(-ps, kind="mergesort")
            ok = (box_iou_xywh(pb[order], gt) >= iou_thr).any(axis=1)
        else:
            ok = np.zeros(0, dtype=bool)
        row = [bool(ok[:k].any()) for k in ks]
        hits.setdefault("all", []).append(row)
        if it.get("kind"):
            hits.setdefault(str(it["kind"]), []).append(row)

    def summary(rows: list[list[bool]]) -> dict[str, Any]:
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, len(ks))
        out: dict[str, Any] = {
            f"R@{k}": (float(arr[:, i].mean()) if len(arr) else 0.0) for i, k in enumerate(ks)
        }
        out["n"] = len(arr)
        return out

    res = summary(hits.get("all", []))
    res["by_kind"] = {k: summary(v) for k, v in sorted(hits.items()) if k != "all"}
    return res
