"""glip-bench: per-stage timings of the cached engine path vs the official-style path, in one process.

Official-style = what GLIP's demo/eval loop does per frame: tokenise and encode the text, run the whole model
(backbone included) once per prompt chunk (LVIS-style: 40 phrases per chunk) and per camera, fp32, eager.
Cached = GroundingEngine: text encoded once per query, backbone once per frame batch, chunks batched, cameras
batched, the chosen precision. Weights are random (speed does not depend on them). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from .cpu_memory import keep_freed_memory


def lvis_sized_phrases(n: int = 1203) -> list[str]:
    """``n`` distinct 1–3-word names from the BERT vocabulary: an LVIS-sized prompt (LVIS's own names are not
    shipped offline). Deterministic."""
    from .prompt import get_tokenizer

    vocab = get_tokenizer().get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and len(w) >= 4 and not w.startswith("##"))
    rng = np.random.default_rng(1203)
    rng.shuffle(words)
    names, i = [], 0
    while len(names) < n:
        k = 1 + (len(names) % 3 == 0) + (len(names) % 7 == 0)
        names.append(" ".join(words[i : i + k]))
        i += k
    return names


# The engine's own per-call timings (GroundingEngine.timings); "decode" (--decode) is timed here.
ENGINE_STAGES = ("preprocess", "backbone", "head", "postprocess")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
    return {"median_ms": 1000 * statistics.median(xs), "p95_ms": 1000 * p95}


def _timed(fn: Callable[[], None], device: torch.device, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def _flops(fn: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


# Operators that only make views, read metadata or (as innermost operators) return their input: no kernel.
_NO_KERNEL = frozenset(
    "aten::" + n
    for n in (
        "view as_strided reshape _reshape_alias _unsafe_view permute transpose t expand expand_as unsqueeze "
        "squeeze slice select narrow split split_with_sizes unbind chunk flatten unflatten alias detach "
        "empty empty_strided empty_like lift_fresh resolve_conj resolve_neg view_as size stride dim "
        "result_type is_nonzero to contiguous resize_ as_strided_ _nnpack_available"
    ).split()
)


def _count_ops(fn: Callable[[], None]) -> int:
    """Innermost ATen operators of one call that do work (views and metadata left out): on a GPU, about
    the number of kernels, which bounds a CUDA-graph replay from below (a few microseconds each)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(
        1
        for e in prof.events()
        if e.name.startswith("aten::")
        and e.name not in _NO_KERNEL
        and not any(c.name.startswith("aten::") for c in e.cpu_children)
    )


def _camera_payloads(
    frames: list[np.ndarray], decode: str
) -> tuple[list[bytes], Callable[[bytes], np.ndarray]]:
    """The frames as a camera driver publishes them, and the node's conversion back to the RGB array the
    engine takes: ``bgr8`` (a raw sensor_msgs/Image buffer, the usual driver encoding) or ``jpeg``
    (sensor_msgs/CompressedImage at quality 90). Both paths of the benchmark pay the same decode."""
    from .ros.convert import compressed_to_rgb, image_to_rgb  # message-free helpers: no rclpy import

    if decode == "bgr8":
        h, w = frames[0].shape[:2]

        def from_bgr8(p: bytes) -> np.ndarray:
            return image_to_rgb(p, h, w, "bgr8", w * 3)  # a view, as the node passes it on

        return [np.ascontiguousarray(f[:, :, ::-1]).tobytes() for f in frames], from_bgr8
    if decode == "jpeg":
        import io

        from PIL import Image

        def to_jpeg(f: np.ndarray) -> bytes:
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="JPEG", quality=90)
            return buf.getvalue()

        return [to_jpeg(f) for f in frames], lambda p: compressed_to_rgb(p, "jpeg")
    raise ValueError(f"decode must be none, bgr8 or jpeg, got {decode!r}")


def _copy(c):
    from .postprocess import Candidates

    return Candidates(c.boxes.clone(), c.scores.clone(), c.labels.clone())


def _as_candidates(x):
    from .postprocess import Candidates

    if isinstance(x, Candidates):
        return x
    return Candidates(  # a list of Detection: boxes in original pixels, labels = phrase indices
        torch.tensor([d.box_xyxy for d in x], dtype=torch.float32).reshape(-1, 4),
        torch.tensor([d.score for d in x], dtype=torch.float32),
        torch.tensor([d.phrase_index for d in x], dtype=torch.long),
    )


def compare_top(ref, other, k: int = 20) -> dict[str, float]:
    """How many of ``ref``'s top-k candidates ``other`` reproduces (same phrase, IoU >= 0.9, |score diff|
    <= 0.05: the issue's fp32-vs-bf16 criterion), and the largest score difference among the matched.
    Takes ``Candidates`` or lists of ``Detection``."""
    from torchvision.ops import box_iou

    ref, other = _as_candidates(ref), _as_candidates(other)

    order = torch.argsort(ref.scores, descending=True)[:k]
    matched, worst = 0, 0.0
    for i in order.tolist():
        same = (other.labels == ref.labels[i]).nonzero().flatten()
        if same.numel() == 0:
            continue
        ious = box_iou(ref.boxes[i : i + 1].float().cpu(), other.boxes[same].float().cpu())[0]
        ds = (other.scores[same].float().cpu() - float(ref.scores[i])).abs()
        ok = (ious >= 0.9) & (ds <= 0.05)
        if bool(ok.any()):
            matched += 1
            worst = max(worst, float(ds[ok].min()))
    return {"top": int(order.numel()), "matched": matched, "max_score_diff": worst}


@contextlib.contextmanager
def _without_graphs(eng) -> Iterator[None]:
    """The engine run without CUDA graphs inside the block (eager references, operator counts)."""
    graphs, eng.graphs = eng.graphs, None
    try:
        yield
    finally:
        eng.graphs = graphs


def _write_json(path: str | None, res: dict[str, object], complete: bool) -> None:
    """The results so far: a run cut short by a time limit (a lent GPU's) still leaves what it measured."""
    if path:
        with open(path, "w") as f:
            json.dump({**res, "complete": complete}, f, indent=1)


@contextlib.contextmanager
def _dcn_settings(args: argparse.Namespace) -> Iterator[None]:
    """--sample-group-channels and --deform-impl (the cached path's DCN; the official path's is torchvision's)
    are dyhead's module settings: set for the run, restored after it."""
    from .model import dyhead

    saved = dyhead.SAMPLE_GROUP_CHANNELS, dyhead.DEFAULT_DEFORM_IMPL
    if getattr(args, "sample_group_channels", None) is not None:
        dyhead.SAMPLE_GROUP_CHANNELS = args.sample_group_channels
    if getattr(args, "deform_impl", None):
        dyhead.DEFAULT_DEFORM_IMPL = args.deform_impl
    try:
        yield
    finally:
        dyhead.SAMPLE_GROUP_CHANNELS, dyhead.DEFAULT_DEFORM_IMPL = saved


def run(args: argparse.Namespace) -> dict[str, object]:
    with _dcn_settings(args):
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, object]:
    from .engine import GroundingEngine
    from .model import build_model, dyhead
    from .postprocess import Candidates, Row, head_candidates, select_candidates
    from .prompt import build_prompts

    torch.manual_seed(0)
    device = torch.device(args.device)
    json_path = getattr(args, "json", None)  # partial results land there after each phase
    h, w = (int(x) for x in args.size.lower().split("x"))
    # --resize: frames of --size are resized to the checkpoint's test size as the node does (PIL, on the
    # CPU); without it they go in as they are (-1 = the config's size, None = no resize).
    rs = -1 if getattr(args, "resize", False) else None
    if args.checkpoint:  # trained weights: realistic score sparsity in post-processing
        from .model import load_checkpoint, read_checkpoint_config

        model = build_model(read_checkpoint_config(args.checkpoint) or args.preset)
        load_checkpoint(model, args.checkpoint)
    else:
        model = build_model(args.preset)
    eng = GroundingEngine(
        model,
        device=args.device,
        precision=args.precision,
        min_size=rs,
        max_size=rs,
        max_chunk_batch=args.chunk_batch,
        head_precision=args.head_precision,
        text_padding=args.text_padding,
        cuda_graphs=not args.no_cuda_graphs,
        compile=args.compile,
    )
    eng.sync_stages = True  # per-stage timings on CUDA (one sync after the backbone)
    phrases = (
        ["red circle", "blue square", "green triangle"]
        if args.phrases == 3
        else lvis_sized_phrases(args.phrases)
    )
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(args.cameras)]
    if args.scenes:
        from .data.scenes import SceneSpec, render_scene

        frames = [
            render_scene(np.random.default_rng(i), SceneSpec(width=w, height=h)).image
            for i in range(args.cameras)
        ]
    decode = getattr(args, "decode", "none")
    payloads: list[bytes] = []
    if decode != "none":
        payloads, decoder = _camera_payloads(frames, decode)
        frames = [decoder(p) for p in payloads]  # what both paths see (JPEG is lossy)

    def camera_frames() -> list[np.ndarray]:
        return [decoder(p) for p in payloads] if payloads else frames

    cfg = model.config.head
    res: dict[str, object] = {
        "preset": model.config.name,
        "size": f"{h}x{w}",
        "device": args.device,
        "precision": args.precision,
        "phrases": len(phrases),
        "cameras": args.cameras,
        "head_precision": args.head_precision,
        "text_padding": args.text_padding,
        "cuda_graphs": eng.graphs is not None,
        "compile": args.compile,
        "sample_group_channels": dyhead.SAMPLE_GROUP_CHANNELS,
        "deform_impl": dyhead.DEFAULT_DEFORM_IMPL,
        "decode": decode,
        "resize": rs is not None,
        "malloc": getattr(args, "malloc", "default"),
    }
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
    else:
        res["cpu"] = platform.processor() or platform.machine()
        res["threads"] = torch.get_num_threads()

    # ---- cached path: per-stage timings --------------------------------------------------------------------
    t0 = time.perf_counter()
    q = eng.prepare_query(phrases)  # a list: the official caption "a . b . c . ", as the official path
    _sync(device)
    res["text_encode_once_ms"] = 1000 * (time.perf_counter() - t0)
    res["chunks"] = q.num_chunks

    stage_times: dict[str, list[float]] = {k: [] for k in ENGINE_STAGES}
    if payloads:
        stage_times["decode"] = []

    def cached_once() -> None:
        t = time.perf_counter()
        imgs = camera_frames()
        decode_s = time.perf_counter() - t
        eng.detect(imgs, q, score_threshold=0.3, min_size=rs, max_size=rs)
        for k in ENGINE_STAGES:
            stage_times[k].append(eng.timings[k])
        if payloads:
            stage_times["decode"].append(decode_s)

    # The first calls of a new shape pay the one-off work (compilation, CUDA graph capture on the second).
    first = _timed(cached_once, device, 0, min(2, args.warmup))
    before = dict(eng.counters)
    e2e = _timed(cached_once, device, max(0, args.warmup - len(first)), args.runs)
    n_calls = args.warmup - len(first) + args.runs
    res["cached"] = {
        "end_to_end": _stats(e2e),
        "first_calls_ms": [1000 * t for t in first],
        **{k: _stats(v[args.warmup :]) for k, v in stage_times.items()},
        "text_encodes_per_frame": (eng.counters["text_encodes"] - before["text_encodes"]) / n_calls,
        "backbone_calls_per_frame_batch": (eng.counters["image_forwards"] - before["image_forwards"])
        / n_calls,
    }
    res["cached"]["frames_per_s"] = args.cameras / (res["cached"]["end_to_end"]["median_ms"] / 1000)
    _write_json(json_path, res, complete=False)
    if args.cameras > 1:
        # The same frames one camera at a time (still cached text), to show what batching buys.
        seq = _timed(
            lambda: [
                eng.detect([f], q, score_threshold=0.3, min_size=rs, max_size=rs) for f in camera_frames()
            ],
            device,
            1,
            args.runs,
        )
        res["cached_sequential"] = {"end_to_end": _stats(seq)}

    _write_json(json_path, res, complete=False)

    # ---- official-style path -------------------------------------------------------------------------------
    chunk = 40
    official_prompts = [
        p for i in range(0, len(phrases), chunk) for p in build_prompts(phrases[i : i + chunk])
    ]
    for i, p in enumerate(official_prompts):
        p.phrase_offset = i * chunk

    official_result: list[Candidates] = []

    def official_once() -> None:
        model.use_reference_ops(True)  # the official operation order and torchvision's DCN
        official_result.clear()
        with torch.inference_mode(), eng.compiled.suspended():
            for frame in camera_frames():  # one camera at a time
                batch, sizes, _ = model.preprocess([frame], rs, rs, device=device)
                cands = []
                for p in official_prompts:  # the whole model per chunk, text re-encoded every frame
                    text = model.encode_text(p.input_ids.to(device), p.attention_mask.to(device))
                    feats = model.encode_image(batch)
                    out = model.forward_head(feats, text)
                    cands += head_candidates(
                        out,
                        model.anchors(feats),
                        [Row(p.phrase_index(), sizes[0], p.phrase_offset)],
                        model.box_coder,
                        cfg.pre_nms_thresh,
                        cfg.pre_nms_top_n,
                    )
                official_result.append(
                    select_candidates(Candidates.cat(cands), cfg.nms_thresh, cfg.detections_per_img)
                )
        model.use_reference_ops(False)

    if not args.skip_official:
        off_runs = max(1, args.runs if len(official_prompts) == 1 else min(args.runs, 3))
        off = _timed(official_once, device, 1, off_runs)
        res["official"] = {"end_to_end": _stats(off), "prompts_per_frame": len(official_prompts)}
        res["official"]["frames_per_s"] = args.cameras / (res["official"]["end_to_end"]["median_ms"] / 1000)
        res["speedup"] = res["official"]["end_to_end"]["median_ms"] / res["cached"]["end_to_end"]["median_ms"]
    _write_json(json_path, res, complete=False)
    if args.count_ops:
        with _without_graphs(eng):  # a graph replay hides its kernels from the profiler
            res["cached"]["ops_per_call"] = _count_ops(cached_once)
    if args.profile:  # where one cached call spends its time, by kernel/operator (self time)
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with _without_graphs(eng), profile(activities=acts) as prof:  # operators, not one graph replay
            cached_once()
            _sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile), flush=True)

    # ---- numerics: one frame through the official-style path, the engine, the engine without graphs ----
    # Candidates of every score (random weights put few above the usual 0.05), top-20 compared, on the first
    # camera's frame (run in the measured batch: another batch size would mean new graphs or a compilation).
    saved_thresh, cfg.pre_nms_thresh = cfg.pre_nms_thresh, 0.0
    try:
        ours = [_copy(c) for c in eng.candidates(frames, q, rs, rs)[0]]
        if not args.skip_official and len(official_prompts) == len(q.prompts):
            official_once()  # same chunks: the two paths must give the same boxes
            res["cached_vs_official_top20"] = compare_top(official_result[0], ours[0])
        if eng.graphs is not None:
            with _without_graphs(eng):
                eager, _ = eng.candidates(frames, q, rs, rs)
            res["graphs_vs_eager_top20"] = compare_top(eager[0], ours[0])
            res["graph_counters"] = dict(eng.graphs.counters)
        if eng.compiled.active:
            with _without_graphs(eng):
                with eng.compiled.suspended():
                    plain, _ = eng.candidates(frames, q, rs, rs)
                compiled, _ = eng.candidates(frames, q, rs, rs)
            res["compiled_vs_eager_top20"] = compare_top(plain[0], compiled[0])
        res["compile_fallbacks"] = eng.counters["compile_fallbacks"]
    finally:
        cfg.pre_nms_thresh = saved_thresh

    # ---- FLOPs per stage (one frame, one chunk) ------------------------------------------------------------
    if args.flops:
        with torch.inference_mode(), eng.compiled.suspended():
            p = q.prompts[0]
            batch, _, _ = model.preprocess(frames[:1], rs, rs, device=device)
            flops = {
                "text": _flops(lambda: model.encode_text(p.input_ids.to(device), p.attention_mask.to(device)))
            }
            feats = model.encode_image(batch)
            flops["backbone"] = _flops(lambda: model.encode_image(batch))
            text = eng.encode_prompt(p)
            flops["head_per_chunk"] = _flops(lambda: model.forward_head(feats, text))
        res["gflops"] = {k: v / 1e9 for k, v in flops.items()}
    return res


def table(res: dict[str, object]) -> str:
    c = res["cached"]
    rows = ["| stage | cached median ms | cached p95 ms |", "|---|---|---|"]
    for k in ("decode", *ENGINE_STAGES, "end_to_end"):
        if k not in c:
            continue
        rows.append(f"| {k} | {c[k]['median_ms']:.1f} | {c[k]['p95_ms']:.1f} |")
    lines = [
        "`"
        + " ".join(
            f"{k}={res[k]}"
            for k in (
                "preset",
                "size",
                "device",
                "precision",
                "head_precision",
                "text_padding",
                "phrases",
                "cameras",
                "compile",
                "sample_group_channels",
                "deform_impl",
                "decode",
                "resize",
                "malloc",
            )
        )
        + f" chunks={res['chunks']}` on {res.get('gpu') or res.get('cpu')}",
        "",
        *rows,
        "",
        f"text encoded once per query: {res['text_encode_once_ms']:.1f} ms; per frame: "
        f"{c['text_encodes_per_frame']:.0f} text encodes, "
        f"{c['backbone_calls_per_frame_batch']:.0f} backbone call(s) "
        f"per batch of {res['cameras']} frame(s); {c['frames_per_s']:.2f} frames/s",
    ]
    if "cached_sequential" in res:
        sq = res["cached_sequential"]["end_to_end"]["median_ms"]
        lines.append(
            f"cached, the {res['cameras']} frames one at a time: {sq:.1f} ms median "
            f"(batched is {sq / c['end_to_end']['median_ms']:.2f}x faster)"
        )
    if "official" in res:
        o = res["official"]
        lines.append(
            f"official-style: {o['end_to_end']['median_ms']:.1f} ms median "
            f"(p95 {o['end_to_end']['p95_ms']:.1f}), {o['prompts_per_frame']} whole-model forward(s) "
            f"per camera frame, {o['frames_per_s']:.2f} frames/s;"
            f" cached is {res['speedup']:.2f}x faster"
        )
    for key in ("cached_vs_official_top20", "graphs_vs_eager_top20", "compiled_vs_eager_top20"):
        if key in res:
            m = res[key]
            lines.append(
                f"{key}: {m['matched']}/{m['top']} matched, max score diff {m['max_score_diff']:.2g}"
            )
    if "ops_per_call" in c:
        lines.append(
            f"operators per cached call (views left out; about the GPU kernel count): {c['ops_per_call']}"
        )
    if res.get("compile", "off") != "off":
        first = ", ".join(f"{t:.0f}" for t in c["first_calls_ms"])
        lines.append(
            f"first calls (compilation, capture): {first} ms; compile fallbacks: {res['compile_fallbacks']}"
        )
    if "gflops" in res:
        g = res["gflops"]
        tot = sum(g.values())
        lines.append(
            "GFLOPs (1 frame, 1 chunk): "
            + ", ".join(f"{k} {v:.1f} ({100 * v / tot:.0f}%)" for k, v in g.items())
        )
    return "\n".join(lines)


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    return parse


def _frame_size(text: str) -> str:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW in pixels, e.g. 480x640")
    return text


def build_parser() -> argparse.ArgumentParser:
    """glip-bench's options (scripts/gpu_bench.sh's runs are checked against them by a test)."""
    ap = argparse.ArgumentParser(prog="glip-bench", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="glip_tiny_test")
    ap.add_argument(
        "--size",
        type=_frame_size,
        default="480x640",
        help="HxW of the input frames (resized only with --resize)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--phrases", type=_count(1), default=3, help="3 or an LVIS-sized count such as 1203")
    ap.add_argument("--cameras", type=_count(1), default=1)
    ap.add_argument("--runs", type=_count(1), default=10)
    ap.add_argument("--warmup", type=_count(0), default=2)
    ap.add_argument("--chunk-batch", type=_count(1), default=8)
    ap.add_argument(
        "--head-precision",
        default="fp32",
        choices=["fp32", "tf32", "auto"],
        help="fp32: only the backbone follows --precision; tf32: fp32 head with TF32 matrix products (GPU); "
        "auto: the head follows --precision too",
    )
    ap.add_argument("--no-cuda-graphs", action="store_true", help="run the engine eagerly on CUDA")
    ap.add_argument(
        "--compile",
        default="off",
        choices=["off", "head", "all"],
        help="torch.compile the fusion + DyHead tower (head) and also the backbone (all)",
    )
    ap.add_argument("--text-padding", default="tight", choices=["tight", "max"])
    ap.add_argument(
        "--resize",
        action="store_true",
        help="resize the --size frames to the checkpoint's test size (GLIP-T: shorter side 800) as the node "
        "does; default: the frames go in as they are",
    )
    ap.add_argument(
        "--decode",
        default="none",
        choices=["none", "bgr8", "jpeg"],
        help="start each frame from a camera message: a raw bgr8 sensor_msgs/Image buffer or a JPEG "
        "CompressedImage, converted as the node does (timed as the decode stage, in both paths)",
    )
    ap.add_argument(
        "--sample-group-channels",
        type=_count(0),
        default=None,
        metavar="N",
        help="channels per grid_sample batch entry in the sampled DCN (default: the model's, 16; 0: no "
        "split), to measure what the split buys",
    )
    ap.add_argument(
        "--deform-impl",
        default=None,
        choices=["auto", "sample", "gather", "index"],  # dyhead.DEFORM_IMPLS but the official path's own
        help="the cached path's deformable convolution: sample (grid_sample + modulation + product), gather "
        "(one weighted gather of the modulated columns, embedding_bag, + product; "
        "dyhead.deform_conv2d_gathered), index (the same gather as indexing + weighted sum, which a compiled "
        "graph fuses into one kernel; eagerly slow) or auto (default: sample eagerly; index in a graph "
        "compiled for a GPU; gather in one compiled for a CPU or eagerly under a CPU's autocast)",
    )
    ap.add_argument("--checkpoint", help="benchmark these weights (default: random weights of --preset)")
    ap.add_argument(
        "--scenes", action="store_true", help="frames from the synthetic scene generator, not noise"
    )
    ap.add_argument("--threads", type=_count(0), default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument(
        "--malloc",
        default="keep",
        choices=["keep", "default"],
        help="keep: glibc keeps freed memory for reuse as the node and CLIs do (glip_ros.cpu_memory); "
        "default: glibc's own policy (large blocks unmapped at every free)",
    )
    ap.add_argument("--skip-official", action="store_true")
    ap.add_argument("--flops", action="store_true")
    ap.add_argument(
        "--count-ops", action="store_true", help="count the operators (about: kernels) of one cached call"
    )
    ap.add_argument(
        "--profile", type=_count(0), default=0, metavar="N", help="print the N most costly operators"
    )
    ap.add_argument("--json", help="also write the raw results to this file")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.malloc == "keep":
        print(keep_freed_memory()[1], flush=True)
    from .model import CheckpointError
    from .prompt import QueryError

    try:
        res = run(args)
    except (FileNotFoundError, CheckpointError, QueryError, ValueError) as e:
        # what the user asked for cannot run (a preset, device or checkpoint): the reason, not a traceback
        print(f"glip-bench: {e}", file=sys.stderr)
        return 2
    print(table(res), flush=True)
    _write_json(args.json, res, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
