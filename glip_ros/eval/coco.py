"""COCO box mAP: pycocotools when installed, else a small numpy re-implementation of its bbox protocol.

Why two: pycocotools is the reference (and what a user evaluating on real COCO/LVIS/ODinW should use), but
it is an optional dependency and is missing on some training machines (e.g. the lent GPU boxes). The numpy
version reproduces COCOeval's "bbox" numbers for the area range "all" (iscrowd=0 data such as ours); a test
checks it against pycocotools on a fixture.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

__all__ = ["coco_map", "coco_map_numpy", "coco_map_pycocotools", "box_iou_xywh"]

_IOU_THRS = np.linspace(0.5, 0.95, 10)
_REC_THRS = np.linspace(0.0, 1.00, 101)


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes [N,4] x [M,4], no +1 (COCO's maskUtils.iou for boxes)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def coco_map(gt: dict[str, Any], dets: list[dict[str, Any]], backend: str = "auto") -> dict[str, Any]:
    """AP, AP50, AP75 (and per-category AP) of ``dets`` (COCO result dicts) against the COCO dict ``gt``.

    ``backend``: "pycocotools", "numpy" or "auto" (pycocotools if importable).
    """
    if backend == "auto":
        try:
            import pycocotools  # noqa: F401

            backend = "pycocotools"
        except ImportError:
            backend = "numpy"
    if backend == "pycocotools":
        return coco_map_pycocotools(gt, dets)
    if backend == "numpy":
        return coco_map_numpy(gt, dets)
    raise ValueError(f"unknown backend {backend!r}")


def coco_map_pycocotools(gt: dict[str, Any], dets: list[dict[str, Any]]) -> dict[str, Any]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt = COCO()
    coco_gt.dataset = {k: gt[k] for k in ("images", "annotations", "categories") if k in gt}
    # COCOeval reads 'area' and 'iscrowd' of every GT box: fill them as the numpy path assumes them
    coco_gt.dataset["annotations"] = [
        {"iscrowd": 0, "area": float(a["bbox"][2]) * float(a["bbox"][3]), **a}
        for a in gt.get("annotations", [])
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        if not dets:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "per_category": {}, "backend": "pycocotools"}
        coco_dt = coco_gt.loadRes([dict(d) for d in dets])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]  # [T, R, K, A, M]
    per_cat = {}
    for k, cid in enumerate(ev.params.catIds):
        p = prec[:, :, k, 0, -1]
        per_cat[cid] = float(np.mean(p[p > -1])) if np.any(p > -1) else float("nan")
    return {
        "AP": max(float(ev.stats[0]), 0.0),
        "AP50": max(float(ev.stats[1]), 0.0),
        "AP75": max(float(ev.stats[2]), 0.0),
        "per_category": per_cat,
        "backend": "pycocotools",
    }


def coco_map_numpy(gt: dict[str, Any], dets: list[dict[str, Any]], max_dets: int = 100) -> dict[str, Any]:
    """COCOeval('bbox') for area 'all', maxDets 100, without crowd regions (those raise)."""
    img_ids = sorted(im["id"] for im in gt["images"])
    cat_ids = sorted(c["id"] for c in gt["categories"])
    gts: dict[tuple[int, int], list[list[float]]] = {}
    for a in gt.get("annotations", []):
        if a.get("iscrowd", 0):
            raise ValueError("crowd annotations need pycocotools (pip install pycocotools)")
        gts.setdefault((a["image_id"], a["category_id"]), []).append(a["bbox"])
    dts: dict[tuple[int, int], list[tuple[float, list[float]]]] = {}
    for d in dets:
        dts.setdefault((d["image_id"], d["category_id"]), []).append((float(d["score"]), d["bbox"]))
    T, R = len(_IOU_THRS), len(_REC_THRS)
    precision = -np.ones((T, R, len(cat_ids)))
    for k, cid in enumerate(cat_ids):
        scores_all, matched_all, npig = [], [], 0
        for iid in img_ids:
            g = np.asarray(gts.get((iid, cid), []), dtype=np.float64).reshape(-1, 4)
            d = dts.get((iid, cid), [])
            npig += len(g)
            if not d:
                continue
            order = np.argsort([-s for s, _ in d], kind="mergesort")[:max_dets]
            ds = np.asarray([d[i][0] for i in order])
            db = np.asarray([d[i][1] for i in order], dtype=np.float64).reshape(-1, 4)
            ious = box_iou_xywh(db, g) if len(g) else np.zeros((len(db), 0))
            m = np.zeros((T, len(db)), dtype=bool)
            for t, thr in enumerate(_IOU_THRS):
                taken = np.zeros(len(g), dtype=bool)
                for i in range(len(db)):
                    best, best_j = min(thr, 1 - 1e-10), -1
                    for j in range(len(g)):
                        if taken[j] or ious[i, j] < best:
                            continue
                        best, best_j = ious[i, j], j
                    if best_j >= 0:
                        taken[best_j] = True
                        m[t, i] = True
            scores_all.append(ds)
            matched_all.append(m)
        if npig == 0:
            continue
        if not scores_all:
            precision[:, :, k] = 0.0
            continue
        scores = np.concatenate(scores_all)
        order = np.argsort(-scores, kind="mergesort")
        matched = np.concatenate(matched_all, axis=1)[:, order]
        tps = np.cumsum(matched, axis=1).astype(np.float64)
        fps = np.cumsum(~matched, axis=1).astype(np.float64)
        for t in range(T):
            tp, fp = tps[t], fps[t]
            rc = tp / npig
            pr = tp / (fp + tp + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope, as COCOeval
            inds = np.searchsorted(rc, _REC_THRS, side="left")
            q = np.zeros(R)
            valid = inds < len(pr)
            q[valid] = pr[inds[valid]]
            precision[t, :, k] = q

    def mean_valid(p: np.ndarray) -> float:
        return float(np.mean(p[p > -1])) if np.any(p > -1) else 0.0

    per_cat = {
        cid: (mean_valid(precision[:, :, k]) if np.any(precision[:, :, k] > -1) else float("nan"))
        for k, cid in enumerate(cat_ids)
    }
    return {
        "AP": mean_valid(precision),
        "AP50": mean_valid(precision[0]),
        "AP75": mean_valid(precision[5]),
        "per_category": per_cat,
        "backend": "numpy",
    }
