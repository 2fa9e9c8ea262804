"""Command-line faces of the library: ``glip-detect`` (one image) and ``glip-convert`` (one-time .pth ->
safetensors)."""

from __future__ import annotations

import argparse
import json
import sys


def detect_main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="glip-detect", description="Ground a text query in one image with GLIP."
    )
    ap.add_argument("image", help="image file (PNG, JPEG, …)")
    ap.add_argument("--query", required=True, help='"red mug. laptop" (phrases), or a sentence with --phrase')
    ap.add_argument("--phrase", action="append", help="phrase to ground in a sentence query (repeatable)")
    ap.add_argument(
        "--checkpoint", default=None, help="weights (.pth/.safetensors); default: the embedded model"
    )
    ap.add_argument(
        "--preset", default=None, help="glip_t_a, glip_t, glip_l, … (official .pth files need one)"
    )
    ap.add_argument("--config", default=None, help="official GLIP config YAML instead of a preset")
    ap.add_argument(
        "--bert-config", default=None, help="BERT config.json overriding bert-base-uncased's sizes"
    )
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument(
        "--min-size",
        type=int,
        default=-1,
        help="shorter side after resize; -1 = the model's own (800 for official presets); 0 = no resize",
    )
    ap.add_argument("--max-size", type=int, default=-1, help="longer-side cap; -1 = the model's own (1333)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--json", action="store_true", help="print detections as JSON")
    ap.add_argument("--out", default=None, help="write an annotated image here")
    args = ap.parse_args(argv)

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from .detector import GLIPDetector
    from .model import CheckpointError
    from .prompt import QueryError

    try:
        pil = Image.open(args.image)
        if pil.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            # PIL's convert("RGB") clips these to 255: a silently white image
            print(
                f"glip-detect: {args.image} is a {pil.mode} (16-bit or float) image; "
                "convert it to 8-bit first",
                file=sys.stderr,
            )
            return 2
        image = np.asarray(pil.convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        print(f"glip-detect: cannot read image {args.image}: {e}", file=sys.stderr)
        return 2
    if args.out:
        import os

        out_dir = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(out_dir):
            print(f"glip-detect: --out folder does not exist: {out_dir}", file=sys.stderr)
            return 2
    try:
        det = GLIPDetector.from_checkpoint(
            args.checkpoint,
            preset=args.preset,
            config=args.config,
            bert_config=args.bert_config,
            device=args.device,
            precision=args.precision,
        )
        dets = det.predict(
            image,
            args.query,
            score_threshold=args.threshold,
            min_size=args.min_size or None,
            max_size=args.max_size,
            phrases=args.phrase,
        )
    except (FileNotFoundError, CheckpointError, QueryError, ValueError) as e:
        print(f"glip-detect: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "box_xyxy": [round(v, 2) for v in d.box_xyxy],
                        "score": round(d.score, 4),
                        "phrase": d.phrase,
                        "phrase_index": d.phrase_index,
                    }
                    for d in dets
                ],
                indent=1,
            )
        )
    else:
        for d in dets:
            x1, y1, x2, y2 = d.box_xyxy
            print(f"{d.score:.3f}  {d.phrase:30s}  [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
        if not dets:
            print(f"no detection above {args.threshold}")
    if args.out:
        from .ros.draw import draw_detections  # plain numpy/PIL, no ROS import

        Image.fromarray(draw_detections(image, dets)).save(args.out)
    return 0


def convert_main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="glip-convert",
        description="Convert an official GLIP .pth that plain-tensor loading refuses into safetensors. This "
        "unpickles the file with torch.load(weights_only=False): run it only on files you trust.",
    )
    ap.add_argument("src")
    ap.add_argument("dst")
    args = ap.parse_args(argv)
    from .model import CheckpointError, convert_to_safetensors

    try:
        info = convert_to_safetensors(args.src, args.dst)
    except (FileNotFoundError, CheckpointError) as e:
        print(f"glip-convert: {e}", file=sys.stderr)
        return 2
    print(f"wrote {info['tensors']} tensors to {info['dst']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(detect_main())
