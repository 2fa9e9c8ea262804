"""Seeded procedural grounded scenes: coloured shapes with attributes, backgrounds and distractors.

Why this exists: the official GLIP weights cannot be downloaded on the project's machines, so the embedded
default model is trained on data the project generates itself. Everything here is numpy + PIL, no downloads,
and fully determined by a seed, so a dataset can be regenerated bit-for-bit (or produced on the fly on a
machine without the files, e.g. a lent GPU).

A scene holds 2-6 objects. Each object has a shape, a colour, a size (small/large) and a texture
(plain/striped). Annotations come in two forms:

* COCO detection (``bbox`` = ``[x, y, w, h]`` in pixels, category = the shape name), and
* grounding: a caption made of ``". "``-joined phrases with character spans and the boxes of every object
  each phrase describes ("red circle", "small blue square", "the striped star"), including negative phrases
  that describe nothing in the image, and *referring* phrases that single out one object ("the small red
  circle", "the square left of the triangle").

Splits: some colour+shape combinations (:data:`HELDOUT_COMBOS`) never occur in the ``train``/``val`` splits
and are only used by the ``heldout`` split (compositional zero-shot), and :data:`NOVEL_SHAPES` never occur
outside the ``fewshot_*`` splits (few-shot / prompt-tuning experiments on a shape never seen in training).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "BASE_SHAPES",
    "NOVEL_SHAPES",
    "COLORS",
    "HELDOUT_COMBOS",
    "SceneObject",
    "Phrase",
    "Scene",
    "SceneSpec",
    "render_scene",
    "generate_split",
    "write_split",
    "SPLIT_SPECS",
]

BASE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond")
NOVEL_SHAPES: tuple[str, ...] = ("heart",)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 50),
    "blue": (35, 70, 215),
    "yellow": (240, 215, 35),
    "purple": (140, 45, 185),
    "orange": (250, 135, 25),
}
SIZES = ("small", "large")
TEXTURES = ("plain", "striped")
# Colour+shape pairs that never appear in training scenes (compositional zero-shot split).
HELDOUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("purple", "triangle"),
    ("orange", "circle"),
    ("green", "star"),
)
RELATIONS = ("left of", "right of", "above", "below")


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str
    texture: str
    box: list[float]  # xyxy, pixels, inclusive-exclusive (x2 = x1 + w)

    @property
    def xywh(self) -> list[float]:
        x1, y1, x2, y2 = self.box
        return [x1, y1, x2 - x1, y2 - y1]

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2


@dataclass
class Phrase:
    text: str
    span: tuple[int, int]  # char span in the caption
    objects: list[int]  # indices into Scene.objects (empty for negatives)
    kind: str  # "attr" | "referring" | "relation" | "negative"


@dataclass
class Scene:
    image: np.ndarray  # HxWx3 uint8 RGB
    objects: list[SceneObject]
    caption: str = ""
    phrases: list[Phrase] = field(default_factory=list)


@dataclass
class SceneSpec:
    """What a split may contain."""

    shapes: tuple[str, ...] = BASE_SHAPES
    forbid: tuple[tuple[str, str], ...] = HELDOUT_COMBOS  # (colour, shape) never drawn
    require: tuple[tuple[str, str], ...] = ()  # at least one object is one of these (if non-empty)
    require_shape: str | None = None  # at least one object of this shape
    min_objects: int = 2
    max_objects: int = 6
    width: int = 256
    height: int = 256


SPLIT_SPECS: dict[str, SceneSpec] = {
    "train": SceneSpec(),
    "val": SceneSpec(),
    "heldout": SceneSpec(forbid=(), require=HELDOUT_COMBOS),
    "fewshot_train": SceneSpec(shapes=BASE_SHAPES + NOVEL_SHAPES, require_shape=NOVEL_SHAPES[0]),
    "fewshot_val": SceneSpec(shapes=BASE_SHAPES + NOVEL_SHAPES, require_shape=NOVEL_SHAPES[0]),
}
# Different seed streams per split so that "val" never repeats a "train" scene for the same --seed.
_SPLIT_SALT = {"train": 0, "val": 1, "heldout": 2, "fewshot_train": 3, "fewshot_val": 4}


# ----------------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------------


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
        return [
            (
                cx + radius * math.cos(phase + 2 * math.pi * k / n),
                cy + radius * math.sin(phase + 2 * math.pi * k / n),
            )
            for k in range(n)
        ]

    if shape == "square":
        return ring(4, r * 1.25, rot + math.pi / 4)
    if shape == "diamond":
        pts = ring(4, r, rot * 0.2)  # a diamond stays a diamond: little rotation, elongated vertically
        return [(cx + (x - cx) * 0.75, cy + (y - cy) * 1.2) for x, y in pts]
    if shape == "triangle":
        return ring(3, r * 1.2, rot - math.pi / 2)
    if shape == "hexagon":
        return ring(6, r * 1.05, rot)
    if shape == "star":
        outer = ring(5, r * 1.25, rot - math.pi / 2)
        inner = ring(5, r * 0.5, rot - math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner, strict=False) for p in pair]
    if shape == "heart":
        ts = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        xs = 16 * np.sin(ts) ** 3
        ys = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts))
        s = r / 16.0 * 1.1
        return [(cx + float(x) * s, cy + float(y) * s) for x, y in zip(xs, ys, strict=False)]
    raise ValueError(f"unknown shape {shape!r}")


def _shape_mask(shape: str, w: int, h: int, cx: float, cy: float, r: float, rot: float) -> Image.Image:
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        d.polygon(_polygon(shape, cx, cy, r, rot), fill=255)
    return mask


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Muted two-colour gradient plus noise: colours of objects must come from objects, not the background."""
    base = rng.uniform(70, 190)
    c1 = np.clip(base + rng.normal(0, 18, 3), 0, 255)
    c2 = np.clip(base + rng.normal(0, 18, 3) + rng.uniform(-40, 40), 0, 255)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / max(w, h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    img += rng.normal(0, rng.uniform(2, 10), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _distractors(rng: np.random.Generator, img: Image.Image) -> None:
    """Unannotated clutter: grey lines, specks and faint blobs (no saturated colour, no shape of our set)."""
    d = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(int(rng.integers(0, 5))):
        g = int(rng.uniform(30, 230))
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(2)]
        d.line(pts, fill=(g, g, g), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 12))):
        g = int(rng.uniform(20, 235))
        x, y, s = float(rng.uniform(0, w)), float(rng.uniform(0, h)), float(rng.uniform(1, 4))
        d.ellipse([x - s, y - s, x + s, y + s], fill=(g, g, g))
    for _ in range(int(rng.integers(0, 3))):
        g = int(rng.uniform(60, 200))
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        sx, sy = float(rng.uniform(6, 30)), float(rng.uniform(3, 12))
        d.ellipse([x - sx, y - sy, x + sx, y + sy], outline=(g, g, g), width=1)


def _draw_object(
    rng: np.random.Generator, canvas: Image.Image, obj: SceneObject, rot: float
) -> list[float] | None:
    w, h = canvas.size
    x1, y1, x2, y2 = obj.box
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    mask = _shape_mask(obj.shape, w, h, cx, cy, r, rot)
    color = np.array(COLORS[obj.color], dtype=np.float32)
    color = np.clip(color + rng.normal(0, 10, 3), 0, 255)
    fill = np.empty((h, w, 3), np.float32)
    fill[:] = color
    if obj.texture == "striped":
        period = max(4.0, r / 2.5)
        ang = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        stripes = np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period) > 0
        fill[stripes] = np.clip(color * 0.35 + 160, 0, 255)  # a pale band of the same hue
    m = np.asarray(mask.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)[..., None] / 255.0
    arr = np.asarray(canvas, dtype=np.float32)
    arr = arr * (1 - m) + fill * m
    canvas.paste(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
    bb = mask.getbbox()
    if bb is None:
        return None
    return [float(bb[0]), float(bb[1]), float(bb[2]), float(bb[3])]


def _sample_objects(rng: np.random.Generator, spec: SceneSpec) -> list[tuple[str, str, str, str]]:
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    forbid = set(spec.forbid)
    out: list[tuple[str, str, str, str]] = []
    if spec.require:
        c, s = spec.require[int(rng.integers(len(spec.require)))]
        out.append((s, c, str(rng.choice(SIZES)), str(rng.choice(TEXTURES))))
    if spec.require_shape:
        out.append(
            (
                spec.require_shape,
                str(rng.choice(list(COLORS))),
                str(rng.choice(SIZES)),
                str(rng.choice(TEXTURES)),
            )
        )
    while len(out) < n:
        s, c = str(rng.choice(spec.shapes)), str(rng.choice(list(COLORS)))
        if (c, s) in forbid:
            continue
        out.append((s, c, str(rng.choice(SIZES)), str(rng.choice(TEXTURES))))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def render_scene(rng: np.random.Generator, spec: SceneSpec | None = None) -> Scene:
    """Render one scene (objects placed without overlap) and describe it with a caption and phrases."""
    spec = spec or SceneSpec()
    w, h = spec.width, spec.height
    canvas = Image.fromarray(_background(rng, w, h))
    _distractors(rng, canvas)
    scale = min(w, h) / 256.0
    placed: list[SceneObject] = []
    for shape, color, size, texture in _sample_objects(rng, spec):
        side = (rng.uniform(16, 28) if size == "small" else rng.uniform(44, 72)) * scale
        for _ in range(50):  # rejection sampling for a free spot (with a margin between objects)
            x1 = float(rng.uniform(2, w - side - 2))
            y1 = float(rng.uniform(2, h - side - 2))
            box = [x1, y1, x1 + side, y1 + side]
            if all(_gap_ok(box, o.box, 4 * scale) for o in placed):
                placed.append(SceneObject(shape, color, size, texture, box))
                break
    objects: list[SceneObject] = []
    for obj in placed:
        tight = _draw_object(rng, canvas, obj, float(rng.uniform(-0.5, 0.5)))
        if tight is not None:
            obj.box = tight
            objects.append(obj)
    scene = Scene(image=np.asarray(canvas).copy(), objects=objects)
    scene.caption, scene.phrases = describe(rng, objects, spec.shapes)
    return scene


def _gap_ok(a: list[float], b: list[float], gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


# ----------------------------------------------------------------------------------------------------------
# Language
# ----------------------------------------------------------------------------------------------------------


def _matches(o: SceneObject, attrs: dict[str, str]) -> bool:
    return all(getattr(o, k) == v for k, v in attrs.items())


def phrase_text(attrs: dict[str, str]) -> str:
    """Words in English order: size, texture, colour, shape ("small striped red circle")."""
    words = [attrs[k] for k in ("size", "texture", "color") if k in attrs and attrs[k] != "plain"]
    return " ".join(words + [attrs["shape"]])


def _attr_subsets(o: SceneObject, rng: np.random.Generator) -> dict[str, str]:
    """A random description of ``o`` of random specificity (the shape is always named)."""
    attrs = {"shape": o.shape}
    r = rng.random()
    if r < 0.2:
        return attrs
    attrs["color"] = o.color
    if rng.random() < 0.35:
        attrs["size"] = o.size
    if o.texture == "striped" and rng.random() < 0.3:
        attrs["texture"] = "striped"
    return attrs


def _relation_phrase(rng: np.random.Generator, objects: list[SceneObject]) -> tuple[str, int] | None:
    """ "the <shape> <rel> the <shape>": the anchor's shape is unique, and exactly one target-shaped object
    satisfies the relation while at least two objects share the target's shape (so it needs the relation)."""
    shapes = [o.shape for o in objects]
    anchors = [i for i, o in enumerate(objects) if shapes.count(o.shape) == 1]
    if not anchors:
        return None
    for _ in range(6):
        a = objects[int(rng.choice(anchors))]
        rel = str(rng.choice(RELATIONS))
        cands = [s for s in set(shapes) if s != a.shape and shapes.count(s) >= 2]
        if not cands:
            return None
        tshape = str(rng.choice(sorted(cands)))
        ax, ay = a.center
        sat = []
        for i, o in enumerate(objects):
            if o.shape != tshape:
                continue
            ox, oy = o.center
            ok = {
                "left of": ox < ax - 8,
                "right of": ox > ax + 8,
                "above": oy < ay - 8,
                "below": oy > ay + 8,
            }[rel]
            if ok:
                sat.append(i)
        if len(sat) == 1:
            return f"the {tshape} {rel} the {a.shape}", sat[0]
    return None


def describe(
    rng: np.random.Generator, objects: list[SceneObject], shapes: tuple[str, ...] = BASE_SHAPES
) -> tuple[str, list[Phrase]]:
    """Caption = shuffled positive, referring and negative phrases joined by ". " (GLIP's separator)."""
    items: list[tuple[str, list[int], str]] = []
    seen: set[str] = set()
    # Positive attribute phrases: each object described at a random specificity; boxes = all matches.
    for i in rng.permutation(len(objects)):
        attrs = _attr_subsets(objects[int(i)], rng)
        text = phrase_text(attrs)
        if text in seen:
            continue
        seen.add(text)
        items.append((text, [j for j, o in enumerate(objects) if _matches(o, attrs)], "attr"))
    # Referring phrase: a fully specified description matching exactly one object, with "the".
    uniq = []
    for i, o in enumerate(objects):
        attrs = {"shape": o.shape, "color": o.color, "size": o.size}
        if sum(_matches(p, attrs) for p in objects) == 1:
            uniq.append((i, attrs))
    if uniq and rng.random() < 0.7:
        i, attrs = uniq[int(rng.integers(len(uniq)))]
        text = "the " + phrase_text(attrs)
        if text not in seen:
            seen.add(text)
            items.append((text, [i], "referring"))
    rel = _relation_phrase(rng, objects)
    if rel is not None and rng.random() < 0.7:
        items.append((rel[0], [rel[1]], "relation"))
    # Negatives: descriptions that match nothing (other colour of a present shape, or an absent shape).
    for _ in range(int(rng.integers(1, 4))):
        attrs = {"shape": str(rng.choice(shapes))}
        if rng.random() < 0.7:
            attrs["color"] = str(rng.choice(list(COLORS)))
        text = phrase_text(attrs)
        if text in seen or any(_matches(o, attrs) for o in objects):
            continue
        seen.add(text)
        items.append((text, [], "negative"))
    order = rng.permutation(len(items))
    caption, phrases = "", []
    for k in order:
        text, objs, kind = items[int(k)]
        if caption:
            caption += ". "
        start = len(caption)
        caption += text
        phrases.append(Phrase(text, (start, len(caption)), objs, kind))
    return caption, phrases


# ----------------------------------------------------------------------------------------------------------
# Datasets on disk (COCO json + grounding entries)
# ----------------------------------------------------------------------------------------------------------


def split_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Scene ``index`` of ``split`` depends only on (seed, split, index): any subset regenerates exactly."""
    return np.random.default_rng([seed, _SPLIT_SALT.get(split, 99), index])


def generate_split(split: str, n: int, seed: int = 0, spec: SceneSpec | None = None) -> list[Scene]:
    spec = spec or SPLIT_SPECS[split]
    return [render_scene(split_rng(seed, split, i), spec) for i in range(n)]


def scenes_to_coco(scenes: list[Scene], file_names: list[str], categories: list[str]) -> dict[str, Any]:
    """COCO detection (category = shape) plus a ``grounding`` list (pycocotools ignores extra keys)."""
    cat_id = {c: i + 1 for i, c in enumerate(categories)}
    images, anns, grounding = [], [], []
    ann_id = 1
    for img_id, (sc, fn) in enumerate(zip(scenes, file_names, strict=False), start=1):
        h, w = sc.image.shape[:2]
        images.append({"id": img_id, "file_name": fn, "width": w, "height": h})
        for o in sc.objects:
            x, y, bw, bh = o.xywh
            anns.append(
                {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": cat_id[o.shape],
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                    "attributes": {"shape": o.shape, "color": o.color, "size": o.size, "texture": o.texture},
                }
            )
            ann_id += 1
        grounding.append(
            {
                "image_id": img_id,
                "caption": sc.caption,
                "phrases": [
                    {
                        "text": p.text,
                        "span": list(p.span),
                        "kind": p.kind,
                        "boxes": [sc.objects[j].xywh for j in p.objects],
                    }
                    for p in sc.phrases
                ],
            }
        )
    return {
        "info": {"description": "glip_ros synthetic grounded scenes"},
        "images": images,
        "annotations": anns,
        "categories": [{"id": cat_id[c], "name": c} for c in categories],
        "grounding": grounding,
    }


def write_split(out_dir: str, split: str, n: int, seed: int = 0, spec: SceneSpec | None = None) -> str:
    """Write ``<out_dir>/<split>/*.png`` and ``<out_dir>/<split>.json``; returns the json path."""
    spec = spec or SPLIT_SPECS[split]
    img_dir = os.path.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    scenes, names = [], []
    for i in range(n):
        sc = render_scene(split_rng(seed, split, i), spec)
        fn = f"{split}/{i:06d}.png"
        Image.fromarray(sc.image).save(os.path.join(out_dir, fn), compress_level=1)
        scenes.append(sc)
        names.append(fn)
    coco = scenes_to_coco(scenes, names, list(spec.shapes))
    coco["info"].update({"split": split, "seed": seed, "spec": _spec_dict(spec)})
    path = os.path.join(out_dir, f"{split}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(coco, f)
    return path


def _spec_dict(spec: SceneSpec) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()}


def combo_eval_coco(
    coco: dict[str, Any], combos: tuple[tuple[str, str], ...] = HELDOUT_COMBOS
) -> dict[str, Any]:
    """A COCO file whose categories are colour+shape names ("purple triangle"): GT = matching objects only,
    so every other object in the images (red triangles, purple circles ...) is a hard negative."""
    names = [f"{c} {s}" for c, s in combos]
    anns = []
    for a in coco["annotations"]:
        at = a.get("attributes", {})
        key = (at.get("color"), at.get("shape"))
        if key in combos:
            anns.append({**a, "category_id": combos.index(key) + 1})
    return {
        "info": coco.get("info", {}),
        "images": coco["images"],
        "annotations": anns,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    }
