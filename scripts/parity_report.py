#!/usr/bin/env python3
"""Print the parity figures of docs/MODELS.md: our model vs the official GLIP code on the shared reduced
GLIP-T fixture (fp32, CPU). Usage: .venv/bin/python scripts/parity_report.py [SHARED_DIR]"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> int:
    from PIL import Image
    from safetensors.torch import load_file

    from glip_ros.engine import GroundingEngine
    from glip_ros.model import build_model, load_checkpoint

    shared = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("GLIP_SHARED_DIR", "../shared")
    fx = os.path.join(shared, "fixtures", "glip")
    red = os.path.join(fx, "glip_t_reduced")
    torch.set_num_threads(2)
    model = build_model(
        os.path.join(red, "config_merged.yaml"), bert_config=os.path.join(red, "bert_config.json")
    )
    load_checkpoint(model, load_file(os.path.join(red, "weights_fp16.safetensors")))
    t = dict(np.load(os.path.join(red, "tensors_fp32.npz")))
    rows = []

    def diff(name, ours, keys):
        d = max(
            float(np.abs(o.detach().float().numpy() - t[k]).max()) for o, k in zip(ours, keys, strict=True)
        )
        ref = max(float(np.abs(t[k]).max()) for k in keys)
        rows.append((name, d, ref))

    with torch.inference_mode():
        text = model.encode_text(
            torch.from_numpy(t["input__input_ids"]), torch.from_numpy(t["input__attention_mask"])
        )
        fpn, body = model.backbone(torch.from_numpy(t["input__image_tensor"]), return_body=True)
        out = model.forward_head(fpn, text)
        anchors = model.anchors(fpn)
    diff(
        "language features (hidden, embedded)",
        [text.hidden, text.embedded],
        ["lang__hidden", "lang__embedded"],
    )
    diff("Swin stage outputs (4)", body, [f"backbone__body_{i}" for i in range(4)])
    diff("FPN P3-P7", fpn, [f"backbone__fpn_{i}" for i in range(5)])
    diff("token alignment logits, 5 levels", out.logits, [f"head__dot_product_logits_{i}" for i in range(5)])
    diff("box regression, 5 levels", out.bbox_reg, [f"head__bbox_reg_{i}" for i in range(5)])
    diff("centerness, 5 levels", out.centerness, [f"head__centerness_{i}" for i in range(5)])
    diff("anchors", anchors, [f"anchors__level_{i}" for i in range(5)])
    img = np.asarray(Image.open(os.path.join(fx, "image_320x480.png")).convert("RGB"))
    for padding in ("max", "tight"):
        eng = GroundingEngine(model, min_size=None, text_padding=padding)
        dets = eng.detect(
            [img], eng.prepare_query("red circle. blue square. green triangle."), score_threshold=0.0
        )[0]
        ref_b, ref_s, ref_l = t["output__boxes_xyxy"], t["output__scores"], t["output__labels"]
        ob = np.array([d.box_xyxy for d in dets])
        os_ = np.array([d.score for d in dets])
        ol = np.array([d.phrase_index + 1 for d in dets])
        worst = 0.0
        for b, s, lab in zip(ref_b, ref_s, ref_l, strict=True):
            cost = np.abs(ob - b).max(1) + 1e9 * (ol != lab) + 1e9 * (np.abs(os_ - s) > 1e-4)
            worst = max(worst, float(cost.min()))
        ds = (
            float(np.abs(np.sort(os_)[::-1] - np.sort(ref_s)[::-1]).max())
            if len(os_) == len(ref_s)
            else float("nan")
        )
        rows.append(
            (f"final detections ({len(dets)} vs {len(ref_s)}), text padding {padding}: scores", ds, 1.0)
        )
        rows.append((f"final detections, text padding {padding}: boxes (px, matched as sets)", worst, 480.0))
    print("| quantity | max abs diff | max abs ref |\n|---|---|---|")
    for name, d, ref in rows:
        print(f"| {name} | {d:.2e} | {ref:.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
