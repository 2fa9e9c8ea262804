"""Run a GLIP model over a COCO-format set: box mAP (category prompt) or phrase-grounding Recall@k.

The decoding follows the official ATSS post-processor (§1.4 of the reference): per phrase the mean of its
tokens' sigmoids, candidates above 0.05, score = sqrt(prob x sigmoid(centerness)), class-aware NMS 0.6, 100
detections per image, boxes back to original pixels, COCO xywh with the +1 width. It is kept here (not in
the engine) so evaluation needs nothing but the model, and works on machines without ROS.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import torch

from glip_ros.train.datasets import (
    CocoGroundingDataset,
    clean_name,
    get_train_tokenizer,
    positive_map_from_spans,
)

from .coco import coco_map
from .grounding import grounding_recall

__all__ = ["predict", "evaluate_coco", "evaluate_grounding", "category_prompt"]

log = logging.getLogger(__name__)


def category_prompt(names: list[str]) -> tuple[str, list[tuple[int, int]]]:
    caption, spans = "", []
    for n in names:
        if caption:
            caption += ". "
        spans.append((len(caption), len(caption) + len(n)))
        caption += n
    return caption, spans


@torch.no_grad()
def predict(
    model,
    images: list[np.ndarray],
    caption: str,
    phrase_spans: list[list[tuple[int, int]]],
    tokenizer=None,
    min_size: int | None = None,
    max_size: int | None = None,
    pre_nms_thresh: float = 0.05,
    nms_thresh: float = 0.6,
    max_dets: int = 100,
    pre_nms_top_n: int = 1000,
) -> list[dict[str, np.ndarray]]:
    """Per image: ``boxes`` [N,4] xyxy original pixels, ``scores`` [N], ``labels`` [N] (phrase index)."""
    import torchvision

    tokenizer = tokenizer or get_train_tokenizer()
    cfg = model.config
    device = next(model.parameters()).device
    enc = tokenizer([caption], truncation=True, max_length=256, return_tensors="pt")
    pm = positive_map_from_spans(enc[0], phrase_spans, enc["input_ids"].shape[1]).to(device)  # [P, T]
    valid = pm.sum(1) > 0
    pm_norm = pm / pm.sum(1, keepdim=True).clamp(min=1)
    text = model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device))
    batch, sizes, scales = model.preprocess(
        images, min_size or cfg.min_size, max_size or cfg.max_size, device=device
    )
    feats = model.encode_image(batch)
    out = model.forward_head(feats, text.repeat(len(images)) if len(images) > 1 else text)
    anchors = model.anchors(feats)
    results = []
    for b in range(len(images)):
        all_boxes, all_scores, all_labels = [], [], []
        for lvl, an in enumerate(anchors):
            prob = torch.sigmoid(out.logits[lvl][b].float()) @ pm_norm.T  # [HW, P] mean token sigmoid
            prob[:, ~valid] = 0
            ctr = torch.sigmoid(out.centerness[lvl][b].float().reshape(-1))
            reg = out.bbox_reg[lvl][b].float().permute(1, 2, 0).reshape(-1, 4)
            cand = prob > pre_nms_thresh
            if not cand.any():
                continue
            sc = (prob * ctr[:, None])[cand]
            loc, lab = torch.nonzero(cand, as_tuple=True)
            if len(sc) > pre_nms_top_n:
                sc, top = sc.topk(pre_nms_top_n)
                loc, lab = loc[top], lab[top]
            boxes = model.box_coder.decode(reg[loc], an[loc])
            h, w = sizes[b]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
            all_boxes.append(boxes)
            all_scores.append(torch.sqrt(sc))
            all_labels.append(lab)
        if not all_boxes:
            results.append(
                {
                    "boxes": np.zeros((0, 4), np.float32),
                    "scores": np.zeros(0, np.float32),
                    "labels": np.zeros(0, np.int64),
                }
            )
            continue
        boxes, scores, labels = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        keep = torchvision.ops.batched_nms(boxes, scores, labels, nms_thresh)[:max_dets]
        sx, sy = scales[b]
        boxes = boxes[keep] * torch.tensor([sx, sy, sx, sy], device=device)
        results.append(
            {
                "boxes": boxes.cpu().numpy(),
                "scores": scores[keep].cpu().numpy(),
                "labels": labels[keep].cpu().numpy(),
            }
        )
    return results


def _xywh_plus1(b: np.ndarray) -> list[float]:
    return [float(b[0]), float(b[1]), float(b[2] - b[0] + 1), float(b[3] - b[1] + 1)]


def evaluate_coco(
    model,
    json_path: str,
    image_root: str | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    names: list[str] | None = None,
    backend: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Box AP/AP50/AP75 with a prompt of all category names (in id order, as the official COCO evaluation).

    ``names`` replaces the category names in the prompt (e.g. to ask "triangle" for "purple triangle": a
    baseline that ignores colour)."""
    # images without boxes stay: false positives on them count, as in COCOeval
    ds = CocoGroundingDataset(
        json_path, image_root, mode="detection", max_negatives=0, keep_images_without_boxes=True
    )
    _no_missing_images(ds)
    with open(json_path, encoding="utf-8") as f:
        gt = json.load(f)
    gt["categories"] = [{**c, "id": int(c["id"])} for c in gt["categories"]]
    gt["images"] = [{**im, "id": int(im["id"])} for im in gt["images"]]
    gt["annotations"] = [
        {**a, "image_id": int(a["image_id"]), "category_id": int(a["category_id"])}
        for a in gt.get("annotations", [])
    ]
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    if names is not None and len(names) != len(cats):
        raise ValueError(f"{len(names)} prompt names for {len(cats)} categories: give one name per category")
    prompt_names = names or [clean_name(c["name"]) for c in cats]
    caption, spans = category_prompt(prompt_names)
    tok = get_train_tokenizer()
    gt_ids = {int(im["id"]) for im in gt["images"]}
    idx = list(range(len(ds)))[: limit or None]
    dets = []
    it = range(0, len(idx), batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="eval", dynamic_ncols=True)
    model.eval()
    for s in it:
        chunk = idx[s : s + batch_size]
        imgs = [ds.load_image(i) for i in chunk]
        res = predict(model, imgs, caption, [[sp] for sp in spans], tok)
        for i, r in zip(chunk, res, strict=True):
            for box, score, lab in zip(r["boxes"], r["scores"], r["labels"], strict=True):
                dets.append(
                    {
                        "image_id": ds.items[i]["id"],
                        "category_id": int(cats[int(lab)]["id"]),
                        "bbox": _xywh_plus1(box),
                        "score": float(score),
                    }
                )
    used = {ds.items[i]["id"] for i in idx}
    gt_eval = {
        "images": [im for im in gt["images"] if int(im["id"]) in used and int(im["id"]) in gt_ids],
        "annotations": [a for a in gt.get("annotations", []) if int(a["image_id"]) in used],
        "categories": gt["categories"],
    }
    res = coco_map(gt_eval, dets, backend)
    names_by_id = {c["id"]: c["name"] for c in cats}
    res["per_category"] = {names_by_id.get(k, k): v for k, v in res["per_category"].items()}
    res["num_images"] = len(used)
    res["prompt"] = caption
    return res


def evaluate_grounding(
    model,
    json_path: str,
    image_root: str | None = None,
    limit: int | None = None,
    kinds: tuple[str, ...] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Recall@1/5/10 of the file's grounding phrases (each image with its own caption)."""
    ds = CocoGroundingDataset(json_path, image_root, mode="grounding")
    _no_missing_images(ds)
    if kinds is not None:
        known = {p.get("kind") for it in ds.items for p in it["grounding"]["phrases"] if p.get("boxes")}
        if not set(kinds) & known:
            raise ValueError(
                f"no phrase of kind {sorted(kinds)} in {json_path} (kinds there: {sorted(map(str, known))})"
            )
    tok = get_train_tokenizer()
    items = []
    idx = list(range(len(ds)))[: limit or None]
    if progress:
        from tqdm import tqdm

        idx = tqdm(idx, desc="grounding", dynamic_ncols=True)
    model.eval()
    for i in idx:
        g = ds.items[i]["grounding"]
        phrases = [p for p in g["phrases"] if p["boxes"] and (kinds is None or p.get("kind") in kinds)]
        if not phrases:
            continue
        r = predict(model, [ds.load_image(i)], g["caption"], [[tuple(p["span"])] for p in phrases], tok)[0]
        for k, p in enumerate(phrases):
            sel = r["labels"] == k
            items.append(
                {
                    "gt_boxes": p["boxes"],
                    "pred_boxes": [_xywh_plus1(b) for b in r["boxes"][sel]],
                    "pred_scores": r["scores"][sel],
                    "kind": p.get("kind"),
                }
            )
    return grounding_recall(items)


def _no_missing_images(ds: CocoGroundingDataset) -> None:
    """A metric over a silently smaller set is a wrong metric: every listed image must be readable."""
    if ds.missing_files:
        raise FileNotFoundError(
            f"{ds.json_path}: {len(ds.missing_files)} image file(s) not found, e.g. {ds.missing_files[0]} "
            "(wrong --image-root?)"
        )


def load_model(path: str, device: str = "cpu"):
    """A model from our safetensors checkpoint (config in metadata) or a preset + weights."""
    from glip_ros.model import build_model, load_checkpoint, read_checkpoint_config

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    cfg = read_checkpoint_config(path)
    if cfg is None:
        raise ValueError(f"{path} carries no model config (not written by glip_ros save_checkpoint)")
    model = build_model(cfg)
    load_checkpoint(model, path, strict=True)
    return model.to(device).eval().float()


def save_json(obj: Any, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=float)
