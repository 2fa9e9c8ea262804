"""GroundingEngine: the one place that knows devices, precision, caching and batching.

Per query the language backbone runs once per prompt chunk and the result is cached (LRU). Per frame the
Swin + FPN features are computed once and shared by every chunk; with deep fusion the fused head runs per
chunk (chunks batched together), without it (GLIP-T A) the visual head runs once and only the token
alignment runs per chunk. Frames of several cameras are batched into one forward when their padded sizes
agree (padding depends on the batch in GLIP, so frames of different sizes are never mixed).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import numbers
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .compiling import CompiledModules
from .cuda_graphs import GraphCache
from .kept_casts import KeptCasts
from .model import GLIPModel, build_model, load_checkpoint, read_checkpoint_config
from .model.head import HeadOutputs
from .model.language import TextFeatures
from .postprocess import (
    Candidates,
    Detection,
    Row,
    finalize,
    finalize_sentence,
    head_candidates,
    select_candidates,
    stack_index,
    token_span,
)
from .prompt import Prompt, QueryError, build_prompts, get_tokenizer

__all__ = [
    "GroundingEngine",
    "PreparedQuery",
    "QueryError",
    "ImageError",
    "Detection",
    "validate_image",
    "DEFAULT_CHECKPOINT",
]

_query_ids = itertools.count(1)


def _default_checkpoint() -> str:
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "glip_synth_tiny.safetensors")


DEFAULT_CHECKPOINT = _default_checkpoint()


class ImageError(ValueError):
    """An image the model cannot take (wrong dtype or shape); the message names the problem."""


def validate_image(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB. Documented conversions: HxW / HxWx1 grayscale is replicated to 3 channels and the
    alpha channel of HxWx4 is dropped. Anything else raises :class:`ImageError`."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"image must be uint8 (0..255), got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ImageError(f"image must be HxWx3, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"image has no pixels: shape {image.shape}")
    c = image.shape[2]
    if c == 1:
        image = np.repeat(image, 3, axis=2)
    elif c == 4:
        image = image[:, :, :3]
    elif c != 3:
        raise ImageError(f"image must have 1, 3 or 4 channels, got {c}")
    return image


_MAX_PIXELS = 1 << 26  # resized frame size limit (64 Mpx, ~50x GLIP's 800x1333 test size)


def _check_detect_args(score_threshold, min_size, max_size) -> None:
    """Clear errors for arguments that otherwise fail deep in PIL/torch or silently return nothing."""
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, numbers.Real):
        raise ValueError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}")
    if not 0.0 <= float(score_threshold) <= 1.0:  # also rejects NaN
        raise ValueError(
            f"score_threshold must be in [0, 1] (scores are probabilities), got {score_threshold}"
        )
    for name, v in (("min_size", min_size), ("max_size", max_size)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive integer, -1 (model default) or None, got {v!r}")


@dataclass
class PreparedQuery:
    query_id: int
    text: str
    phrases: list[str]
    spans: list[list[tuple[int, int]]]
    prompts: list[Prompt] = field(repr=False)
    # What the engine derives from the prompts alone (stacked text and phrase indices, token matrices):
    # built on the first frame of the query, reused by every later one. Keyed by what it depends on.
    plans: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def caption(self) -> str:
        return self.prompts[0].caption if len(self.prompts) == 1 else self.text

    @property
    def num_chunks(self) -> int:
        return len(self.prompts)


def _stack_texts(texts: Sequence[TextFeatures], n_img: int) -> TextFeatures:
    """Chunk-major batch of text features, zero-padded (and masked) to the longest chunk."""
    t_max = max(t.hidden.shape[1] for t in texts)

    def pad(x: torch.Tensor) -> torch.Tensor:
        extra = t_max - x.shape[1]
        if extra == 0:
            return x
        return torch.cat([x, x.new_zeros((x.shape[0], extra, *x.shape[2:]))], dim=1)

    return TextFeatures(
        torch.cat([pad(t.hidden).expand(n_img, -1, -1) for t in texts]),
        torch.cat([pad(t.embedded).expand(n_img, -1, -1) for t in texts]),
        torch.cat([pad(t.masks).expand(n_img, -1) for t in texts]),
    )


class GroundingEngine:
    """Grounds cached queries in frames. Options, each measured in docs/BENCHMARKS.md:

    * ``precision`` (fp32, fp16 on CUDA, bf16) applies to Swin + FPN; ``head_precision`` (fp32, tf32, auto)
      to the fusion + DyHead head, kept fp32 by default because reduced precision there reorders detections.
      Under autocast the Linear, Conv2d and DCN layers use kept copies of their weights in that type
      (kept_casts.py: the values autocast would make, not cast every frame; memory: half their fp32 size).
    * ``max_chunk_batch``: prompt chunks per head call (memory vs. launches).
    * ``backbone_batch``: frames per Swin + FPN call; None means all on a GPU and one on a CPU (where Swin
      over several frames at once measured slower); the head always takes every frame of a size at once.
    * ``cuda_graphs`` (CUDA only) and ``compile`` ("off", "head", "all"): replayed and compiled stages, with
      eager fallbacks that are counted in ``counters``.
    * ``text_padding``: "tight" (next multiple of 8 tokens, default) or "max" (256, the official shapes).
    """

    def __init__(
        self,
        model: GLIPModel,
        device: str = "cpu",
        precision: str = "fp32",
        text_cache_size: int = 16,
        min_size: int | None = -1,
        max_size: int | None = -1,
        max_chunk_batch: int = 8,
        backbone_batch: int | None = None,
        max_query_chars: int = 50000,
        head_precision: str = "fp32",
        text_padding: str = "tight",
        cuda_graphs: bool = True,
        compile: str = "off",
    ):
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N' ({e})") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        self.model = model.to(self.device).eval()
        self.precision = precision
        if text_padding not in ("tight", "max"):
            raise ValueError(f"text_padding must be 'tight' or 'max', got {text_padding!r}")
        # "max" pads every prompt to 256 tokens exactly as the official code; "tight" to the next multiple
        # of 8.
        self.text_padding = text_padding
        # "fp32" (default): the head runs in fp32 whatever ``precision`` is; "tf32": fp32 with TF32 matrix
        # products on GPUs that have them (same as fp32 elsewhere); "auto": same as the backbone.
        if head_precision not in ("fp32", "tf32", "auto"):
            raise ValueError(f"head_precision must be fp32, tf32 or auto, got {head_precision!r}")
        self.head_precision = head_precision
        # CUDA graphs replay the backbone and the head per input shape (see cuda_graphs.py); CUDA only.
        self.graphs = GraphCache() if cuda_graphs and self.device.type == "cuda" else None
        self._run_lock = threading.Lock()  # graph replays reuse static buffers: one forward at a time
        # torch.compile of the tower layers ("head") and the backbone ("all"); see compiling.py.
        self.compiled = CompiledModules(self.model, compile)
        # The layers that run under autocast get kept low-precision copies of their weights (kept_casts.py):
        # Swin + FPN with a reduced ``precision``, the head too with head_precision "auto".
        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self._kept_casts = {
            "backbone": KeptCasts([self.model.backbone], low) if low else None,
            "head": KeptCasts([self.model.rpn.head], low) if low and head_precision == "auto" else None,
        }
        # Wait for the GPU at each stage boundary so ``timings`` are per stage (benchmarks); off by default,
        # since a CUDA stage otherwise returns as soon as its kernels are queued.
        self.sync_stages = False
        # Without early fusion: find the locations that can reach the score threshold with a bf16 product
        # and a proven error margin, then compute exact fp32 logits there only (see _AlignmentBound).
        self.bf16_prune = True
        self.min_size = model.config.min_size if min_size == -1 else min_size
        self.max_size = model.config.max_size if max_size == -1 else max_size
        self.max_chunk_batch = max(1, int(max_chunk_batch))
        # Frames per Swin + FPN call. None: all of them on a GPU, one at a time on a CPU, where Swin over
        # several frames at once was slower than frame by frame (its window tensors leave the caches:
        # docs/BENCHMARKS.md); the head batches every frame either way.
        if backbone_batch is None:
            backbone_batch = 0 if self.device.type == "cuda" else 1
        self.backbone_batch = max(0, int(backbone_batch))
        self.max_query_chars = int(max_query_chars)
        self.tokenizer = get_tokenizer()
        self._cache: OrderedDict[str, TextFeatures] = OrderedDict()
        self._cache_size = max(1, int(text_cache_size))
        self._lock = threading.RLock()
        self.counters: dict[str, int] = {
            k: 0
            for k in (
                "text_encodes",
                "text_cache_hits",
                "image_forwards",
                "head_forwards",
                "frames",
                "queries",
                "graph_captures",
                "graph_replays",
                "graph_fallbacks",
                "graph_evictions",
                "compile_fallbacks",
                "alignment_locations",
                "alignment_locations_exact",
            )
        }
        self.timings: dict[str, float] = {}

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | None = None,
        preset: str | None = None,
        config: str | None = None,
        bert_config: str | None = None,
        strict: bool = True,
        **kwargs,
    ) -> GroundingEngine:
        """``checkpoint`` None/"" means the embedded default model. The architecture comes from ``preset`` or
        ``config`` (an official YAML), else from the checkpoint's own metadata (files saved by glip_ros)."""
        import os

        path = checkpoint or DEFAULT_CHECKPOINT
        if not os.path.isfile(path):
            if not checkpoint:
                raise FileNotFoundError(
                    f"the embedded default model is missing ({path}); pass a checkpoint path"
                )
            raise FileNotFoundError(f"checkpoint not found: {path}")
        spec = config or preset
        if spec is None:
            spec = read_checkpoint_config(path)
            if spec is None:
                raise ValueError(
                    f"{path} carries no model config: say which architecture it is with a preset "
                    "(glip_t_a, glip_t, glip_l, …) or an official config YAML"
                )
        model = build_model(spec, bert_config=bert_config)
        load_checkpoint(model, path, strict=strict)
        return cls(model, **kwargs)

    # -- queries ---------------------------------------------------------------------------------------------
    def prepare_query(self, text, phrases=None) -> PreparedQuery:
        """Parse and encode a query (text features cached). Raises QueryError with the reason."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise QueryError(f"query is not valid UTF-8: {e}") from None
        if isinstance(text, str) and len(text) > self.max_query_chars:
            raise QueryError(
                f"query has {len(text)} characters, more than max_query_chars={self.max_query_chars}"
            )
        if isinstance(text, (list, tuple)):
            n = sum(len(p) + 3 for p in text if isinstance(p, str))  # its caption "p1 . p2 . "
            if n > self.max_query_chars:
                raise QueryError(
                    f"phrase list has {n} caption characters, "
                    f"more than max_query_chars={self.max_query_chars}"
                )
        prompts = build_prompts(
            text, self.tokenizer, phrases=phrases, max_len=self.model.config.language.max_query_len
        )
        for p in prompts:
            self.encode_prompt(p)
        names = [n for p in prompts for n in p.phrases]
        spans = [s for p in prompts for s in p.spans] if len(prompts) == 1 else [[] for _ in names]
        self.counters["queries"] += 1
        return PreparedQuery(
            next(_query_ids), text if isinstance(text, str) else " . ".join(text), names, spans, prompts
        )

    def encode_prompt(self, prompt: Prompt) -> TextFeatures:
        key = prompt.caption
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.counters["text_cache_hits"] += 1
                return hit
        ids, mask = prompt.input_ids, prompt.attention_mask
        if self.text_padding == "tight":
            # Padding tokens are masked everywhere (BERT keys, fusion text softmax, the score's token
            # mean), so cutting them changes nothing for the real tokens but the cost of every fusion layer.
            n = min(ids.shape[1], -(-prompt.num_tokens // 8) * 8)
            ids, mask = ids[:, :n], mask[:, :n]
        with torch.inference_mode():
            text = self.model.encode_text(ids.to(self.device), mask.to(self.device))
        self.counters["text_encodes"] += 1
        with self._lock:
            self._cache[key] = text
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return text

    # -- frames ----------------------------------------------------------------------------------------------
    def _head_precision(self):
        if self.head_precision == "auto":
            return self._autocast()
        if self.head_precision == "tf32" and self.device.type == "cuda":
            return _tf32()
        return contextlib.nullcontext()

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        # No weight-cast cache: a CUDA graph capture must not keep pointers into a cache freed afterwards.
        return torch.autocast(device_type=self.device.type, dtype=dtype, cache_enabled=False)

    def _graphed(self, name: str, fn, inputs: Sequence[torch.Tensor]):
        """Runs a per-frame stage: replayed as a CUDA graph when on, compiled when asked; a failure of the
        compiled code puts the model back to eager (counted) and runs the stage again."""
        try:
            return self._run_stage(name, fn, inputs)
        except Exception as exc:
            if not self.compiled.active:
                raise
            self.compiled.revert(exc)
            self.counters["compile_fallbacks"] += 1
            if self.graphs is not None:
                self.graphs.clear()  # captures and capture failures of the compiled code are void
            return self._run_stage(name, fn, inputs)

    def _run_stage(self, name: str, fn, inputs: Sequence[torch.Tensor]):
        if self.graphs is None:
            return fn(*inputs)
        out = self.graphs(name, fn, inputs)
        for k in ("captures", "replays", "fallbacks", "evictions"):
            self.counters[f"graph_{k}"] = self.graphs.counters[k]
        return out

    def _kept(self, stage: str):
        kept = self._kept_casts[stage]
        return contextlib.nullcontext() if kept is None else kept.applied()

    def _refresh_kept_casts(self) -> None:
        """Before a frame, outside any graph: weights changed in place reach the kept copies (in place, so
        captured graphs see them); copies made anew void the graphs, which hold the old ones."""
        for kept in self._kept_casts.values():
            if kept is not None and kept.refresh() and self.graphs is not None:
                self.graphs.clear()

    def _backbone(self, batch: torch.Tensor) -> list[torch.Tensor]:
        with self._autocast(), self._kept("backbone"):
            feats = self.model.encode_image(batch)
        # Reduced precision stops at the backbone unless head_precision says otherwise: the fusion softmaxes,
        # the BERT layers and the token logits decide rankings (measured: bf16 there reorders the top
        # detections).
        return [f.float() for f in feats]

    def _image_features(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Swin + FPN over the frame batch, at most ``backbone_batch`` frames per call (the head still takes
        the whole batch)."""
        n = batch.shape[0]
        step = self.backbone_batch or n
        if n <= step:
            self.counters["image_forwards"] += 1
            return self._graphed("backbone", self._backbone, (batch,))
        parts = []
        for i in range(0, n, step):
            out = self._graphed("backbone", self._backbone, (batch[i : i + step],))
            self.counters["image_forwards"] += 1
            # A graph replay overwrites the previous outputs of the same signature: keep a copy.
            parts.append([f.clone() for f in out] if self.graphs is not None else out)
        return [torch.cat(level) for level in zip(*parts, strict=True)]

    def _fused_head(self, *args: torch.Tensor) -> HeadOutputs:
        """(5 feature levels of n images, text hidden/embedded/masks of k chunks x n images) -> outputs."""
        feats, (hidden, embedded, masks) = list(args[:-3]), args[-3:]
        k = hidden.shape[0] // feats[0].shape[0]
        if k > 1:  # chunk-major batch: index = chunk * n_img + image
            feats = [f.repeat(k, 1, 1, 1) for f in feats]
        with self._head_precision(), self._kept("head"):
            return self.model.rpn.head(feats, TextFeatures(hidden, embedded, masks))

    def _visual_tower(self, *feats: torch.Tensor):
        """No early fusion: the tower (DyConv layers only) and the box outputs depend on the image only."""
        head = self.model.rpn.head
        with self._head_precision(), self._kept("head"):
            visual = list(feats)
            for layer in head.dyhead_tower:
                visual = layer(visual)
            bbox_reg, centerness = head.box_outputs(visual)
        return visual, bbox_reg, centerness

    def detect(
        self,
        images: Sequence[np.ndarray],
        query: PreparedQuery,
        score_threshold: float = 0.5,
        min_size: int | None = -1,
        max_size: int | None = -1,
    ) -> list[list[Detection]]:
        """Ground ``query`` in each image (RGB uint8 HxWx3). Boxes are in each image's original pixels."""
        images = [validate_image(im) for im in images]
        min_size = self.min_size if min_size == -1 else min_size
        max_size = self.max_size if max_size == -1 else max_size
        _check_detect_args(score_threshold, min_size, max_size)
        results: list[list[Detection] | None] = [None] * len(images)
        for group in self._groups(images, min_size, max_size):
            cands, scales = self.candidates([images[i] for i in group], query, min_size, max_size)
            for i, c, s in zip(group, cands, scales, strict=False):
                if query.prompts[0].sentence:
                    nms = self.model.config.head.nms_thresh
                    results[i] = finalize_sentence(c, s, query.prompts[0], score_threshold, nms)
                else:
                    results[i] = finalize(c, s, query.phrases, score_threshold)
        self.counters["frames"] += len(images)
        return results  # type: ignore[return-value]

    def frame_size_error(
        self, height: int, width: int, min_size: int | None = -1, max_size: int | None = -1
    ) -> str | None:
        """Why a ``height`` x ``width`` frame cannot be run at these sizes (None if it can).

        A caller that batches frames (the node) checks each one first: one unusable frame would otherwise
        fail the whole batched call and every other camera's frame in it.
        """
        from .model import resize_shape

        min_size = self.min_size if min_size == -1 else min_size
        max_size = self.max_size if max_size == -1 else max_size
        h, w = resize_shape(height, width, min_size, max_size)
        if h < 1 or w < 1:
            return (
                f"image {height}x{width} would be resized to {h}x{w} with min_size={min_size}, "
                f"max_size={max_size} (aspect ratio too extreme): crop it or pass min_size=None"
            )
        if h * w > _MAX_PIXELS:
            return (
                f"image {height}x{width} would be resized to {h}x{w} ({h * w} pixels, more than "
                f"{_MAX_PIXELS}): lower min_size or set max_size"
            )
        return None

    def _groups(self, images, min_size, max_size) -> list[list[int]]:
        from .model import resize_shape

        div = self.model.config.size_divisibility
        groups: OrderedDict[tuple[int, int], list[int]] = OrderedDict()
        for i, im in enumerate(images):
            error = self.frame_size_error(im.shape[0], im.shape[1], min_size, max_size)
            if error:
                raise ImageError(error)
            h, w = resize_shape(im.shape[0], im.shape[1], min_size, max_size)
            key = (-(-h // div) * div, -(-w // div) * div) if div > 0 else (h, w)
            groups.setdefault(key, []).append(i)
        return list(groups.values())

    def candidates(
        self, images: Sequence[np.ndarray], query: PreparedQuery, min_size, max_size
    ) -> tuple[list[Candidates], list[tuple[float, float]]]:
        """Final (post-NMS, top-k) candidates per image in resized-image pixels, and the scale back."""
        with self._run_lock:
            return self._candidates(images, query, min_size, max_size)

    def _candidates(self, images, query, min_size, max_size):
        cfg = self.model.config.head
        t0 = time.perf_counter()
        with torch.inference_mode():
            self._refresh_kept_casts()
            batch, sizes, scales = self.model.preprocess(images, min_size, max_size, device=self.device)
            self._stage_sync()
            t1 = time.perf_counter()
            feats = self._image_features(batch)
            anchors = self.model.anchors(feats)
            self._stage_sync()
            t2 = time.perf_counter()
            per_image: list[list[Candidates]] = [[] for _ in images]
            sentence = query.prompts[0].sentence
            for out, rows, index in self._head_outputs(feats, query):
                sel = head_candidates(
                    out,
                    anchors,
                    [Row(p.phrase_index(), sizes[i], p.phrase_offset) for p, i in rows],
                    self.model.box_coder,
                    cfg.pre_nms_thresh,
                    cfg.pre_nms_top_n,
                    keep_token_probs=sentence,
                    index=index,
                )
                for (_, i), c in zip(rows, sel, strict=True):
                    per_image[i].append(c)
            self._stage_sync()
            t3 = time.perf_counter()
            final = [
                select_candidates(Candidates.cat(c), cfg.nms_thresh, cfg.detections_per_img)
                for c in per_image
            ]
            self._stage_sync()
            t4 = time.perf_counter()
        self.timings = {"preprocess": t1 - t0, "backbone": t2 - t1, "head": t3 - t2, "postprocess": t4 - t3}
        return final, scales

    def _stage_sync(self) -> None:
        if self.sync_stages and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _head_outputs(
        self, feats: list[torch.Tensor], query: PreparedQuery
    ) -> Iterator[tuple[HeadOutputs, list[tuple[Prompt, int]], tuple]]:
        """Yields head outputs whose batch rows are (prompt chunk, image index) pairs, and the rows' stacked
        phrase index (post-processing)."""
        head = self.model.rpn.head
        n_img = feats[0].shape[0]
        groups = range(0, len(query.prompts), self.max_chunk_batch)
        if not head.early_fusion:
            # No deep fusion: the visual tower does not depend on the text; run it once per frame and only the
            # token alignment per chunk, for a group of chunks at once (rows = chunks, one image at a time).
            visual, bbox_reg, centerness = self._graphed("tower", self._visual_tower, feats)
            self.counters["head_forwards"] += 1
            # Once for every chunk: [n, H*W, C+1], a column of ones (carries the token bias in the product).
            queries = [F.pad(v.flatten(2).transpose(1, 2), (0, 1), value=1.0) for v in visual]
            bound = (
                _AlignmentBound(queries, self.model.config.head.pre_nms_thresh) if self.bf16_prune else None
            )
            for start in groups:
                grp = self._alignment_group(query, start)
                g = len(grp.prompts)
                for i in range(n_img):
                    if bound is not None:
                        locations = bound.locations(i, grp)
                        logits = [
                            torch.mm(q[i].index_select(0, loc), grp.matrix).view(-1, g, grp.t).transpose(0, 1)
                            for q, loc in zip(queries, locations, strict=True)
                        ]
                        self.counters["alignment_locations"] += sum(q.shape[1] for q in queries)
                        self.counters["alignment_locations_exact"] += sum(int(x.numel()) for x in locations)
                    else:
                        locations = None
                        logits = [
                            torch.mm(q[i], grp.matrix).view(-1, g, grp.t).transpose(0, 1) for q in queries
                        ]
                    reg = [r[i : i + 1].expand(g, -1, -1, -1) for r in bbox_reg]
                    ctr = [c[i : i + 1].expand(g, -1, -1, -1) for c in centerness]
                    out = HeadOutputs(logits, reg, ctr, head.cls_logits.out_channels, locations=locations)
                    yield out, [(p, i) for p in grp.prompts], grp.index
            return
        for start in groups:
            prompts = query.prompts[start : start + self.max_chunk_batch]
            text, index = self._fused_inputs(query, start, n_img)
            out = self._graphed("head", self._fused_head, (*feats, text.hidden, text.embedded, text.masks))
            self.counters["head_forwards"] += 1
            yield out, [(p, i) for p in prompts for i in range(n_img)], index

    def _fused_inputs(self, query: PreparedQuery, start: int, n_img: int) -> tuple[TextFeatures, tuple]:
        """A chunk group's text for the fused head (chunk-major rows: chunk * n_img + image) and its rows'
        stacked phrase index; built on the query's first frame and kept with the query."""
        key = ("fused", start, self.max_chunk_batch, n_img)
        if key in query.plans:
            return query.plans[key]
        prompts = query.prompts[start : start + self.max_chunk_batch]
        texts = [self.encode_prompt(p) for p in prompts]
        if len(texts) == 1:
            text = texts[0].repeat(n_img) if n_img > 1 else texts[0]
        else:
            text = _stack_texts(texts, n_img)
        index = stack_index([p.phrase_index() for p in prompts for _ in range(n_img)], self.device)
        query.plans[key] = text, index
        return text, index

    def _alignment_group(self, query: PreparedQuery, start: int) -> _AlignmentGroup:
        """The text side of a chunk group's alignment without early fusion (see _AlignmentGroup); built on the
        query's first frame and kept with the query."""
        key = ("align", start, self.max_chunk_batch)
        if key in query.plans:
            return query.plans[key]
        head = self.model.rpn.head
        prompts = query.prompts[start : start + self.max_chunk_batch]
        with self._head_precision():
            tokens = [head.token_projection(self.encode_prompt(p).embedded.to(self.device)) for p in prompts]
            t = max(proj.shape[1] for proj, _ in tokens)
            # Shorter chunks are padded with zero tokens of bias -1e4: probability 0, so they neither keep a
            # location alive in the pruning nor are read by any phrase.
            proj = torch.cat([F.pad(pr, (0, 0, 0, t - pr.shape[1])) for pr, _ in tokens])
            bias = torch.cat([F.pad(b, (0, t - b.shape[1]), value=-1e4) for _, b in tokens])
            matrix = head.chunk_token_matrix(proj, bias)  # [C+1, G*T]
        # Largest column norm of each chunk over its real (unpadded) tokens, for the bf16 bound's margin.
        norms = matrix.t().reshape(len(prompts), t, -1).norm(dim=-1)
        real = torch.tensor([pr.shape[1] for pr, _ in tokens], device=norms.device)
        norms = torch.where(torch.arange(t, device=norms.device)[None, :] < real[:, None], norms, 0.0)
        indices = [p.phrase_index() for p in prompts]
        query.plans[key] = _AlignmentGroup(
            prompts,
            t,
            matrix,
            matrix.neg().bfloat16(),
            norms.amax(dim=1),
            token_span(indices),
            stack_index(indices, self.device),
        )
        return query.plans[key]

    # -- misc ------------------------------------------------------------------------------------------------
    def warmup(self, size: tuple[int, int] = (480, 640)) -> None:
        q = self.prepare_query("object")
        self.detect([np.zeros((size[0], size[1], 3), dtype=np.uint8)], q)

    def device_memory_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return 0

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
        if self.graphs is not None:
            with self._run_lock:
                self.graphs.clear()


@dataclass
class _AlignmentGroup:
    """The text side of a group of prompt chunks without early fusion, built once per query."""

    prompts: list[Prompt]
    t: int  # token columns per chunk (the group's longest chunk)
    matrix: torch.Tensor  # [C+1, G*T] fp32: visual queries (with a column of ones) @ matrix = logits
    neg_matrix_bf16: torch.Tensor  # its negation in bf16, for the location bound (see bound_peaks)
    col_norm: torch.Tensor  # [G] largest column norm of each chunk's real tokens
    span: tuple[int, int]  # token columns any phrase uses
    index: tuple  # postprocess.stack_index of the chunks' phrase indices


class _AlignmentBound:
    """Which locations can hold a candidate, from a bf16 product with a proven margin (no early fusion).

    The exact pruning in post-processing needs every location's largest token logit, i.e. the whole
    [H*W, G*T] fp32 product, which is most of a many-chunk query's per-frame cost (on CPU, a K = C+1
    product runs far below peak in fp32; bf16 runs on the matrix units). In bf16 (unit roundoff u = 2^-8) each
    input is off by at most u relative and the product's output by u relative, so
    |bf16(q.p) - q.p| <= (3u + u^2) |q| |p| <= |q| |p| / 64 (Cauchy-Schwarz; fp32 accumulation over C+1
    terms adds far less). A location is kept when its bf16 peak plus that margin reaches the threshold's
    logit: a superset of the locations the exact rule keeps, whose fp32 logits are then computed exactly.
    """

    def __init__(self, queries: list[torch.Tensor], pre_nms_thresh: float):
        self.queries = [q.bfloat16() for q in queries]
        self.norms = [q.norm(dim=-1) for q in queries]  # [n, H*W], fp32
        p = pre_nms_thresh * (1 - 1e-6)  # as the exact rule in post-processing
        self.logit_min = math.log(p / (1 - p)) if 0 < p < 1 else (-math.inf if p <= 0 else math.inf)

    def locations(self, image: int, group: _AlignmentGroup) -> list[torch.Tensor]:
        """Per level, indices of the locations of ``image`` that may reach the threshold in any chunk."""
        g, t = len(group.prompts), group.t
        lo, hi = group.span[0], min(group.span[1], t)
        dev = group.matrix.device
        if hi <= lo or self.logit_min == math.inf:
            return [torch.zeros(0, dtype=torch.long, device=dev) for _ in self.queries]
        if self.logit_min == -math.inf:
            return [torch.arange(q.shape[1], device=dev) for q in self.queries]
        out = []
        with _fp32_reductions(dev):
            for q, n in zip(self.queries, self.norms, strict=True):
                neg = torch.mm(q[image], group.neg_matrix_bf16).view(-1, g, t)[:, :, lo:hi]
                peak = bound_peaks(neg)
                keep = (peak + n[image][:, None] * group.col_norm[None, :] / 64 >= self.logit_min).any(dim=1)
                out.append(torch.nonzero(keep).squeeze(1))
        return out


def bound_peaks(neg_logits: torch.Tensor) -> torch.Tensor:
    """From bf16 negated logits, per row (last dim) an fp32 upper bound of the largest logit: on a CPU the
    largest logit itself where every logit is negative (where candidates are rare), +inf where one is >= 0;
    elsewhere the largest logit.

    Why negated, and int16: the CPU's bf16 amax widens every element to fp32 on its way, and was most of the
    location bound's cost (4.2 ms for the 38k x 252 peaks of a 1,203-phrase query's finest level on this
    2-core machine); one int16 reduction takes 0.9 ms. As int16, a negative logit's negation (a positive bf16)
    orders as its magnitude does, and a non-negative logit's negation has the sign bit set, so it lies below
    all of those: a row's smallest int16 is its largest logit's negation when every logit is negative, and
    is negative otherwise. The bound keeps a location whenever +inf is returned, so it stays a superset.
    """
    if neg_logits.device.type != "cpu":
        return -neg_logits.amin(dim=-1).float()
    bits = neg_logits.view(torch.int16).amin(dim=-1)
    return torch.where(bits < 0, math.inf, -bits.view(torch.bfloat16).float())


@contextlib.contextmanager
def _fp32_reductions(device: torch.device):
    """bf16 matrix products whose partial sums are reduced in fp32 (the bound's margin assumes it): cuBLAS
    may otherwise split K and reduce in bf16 (torch's default allows it). Process-wide flag, restored."""
    if device.type != "cuda":
        yield
        return
    mm = torch.backends.cuda.matmul
    prev = mm.allow_bf16_reduced_precision_reduction
    mm.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        mm.allow_bf16_reduced_precision_reduction = prev


@contextlib.contextmanager
def _tf32():
    """TF32 matrix products and convolutions for the duration (process-wide flags, restored after)."""
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
