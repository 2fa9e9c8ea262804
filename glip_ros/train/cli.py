"""``glip-train`` (generate data, train) and ``glip-eval`` (COCO mAP, grounding recall).

glip-train generate --out out/synth --train 4000 --val 300 --seed 0
glip-train --config configs/train/embedded_gpu.yaml steps=2000 device=cuda
torchrun --nproc_per_node 2 -m glip_ros.train.cli --config ... (data-parallel: gloo on CPU, NCCL on GPU)
glip-eval --checkpoint model.safetensors --data out/synth/val.json --task coco
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from glip_ros.cpu_memory import keep_freed_memory

__all__ = ["train_main", "eval_main", "generate_main"]

log = logging.getLogger("glip_ros.train")


def generate_main(argv: list[str] | None = None) -> int:
    from glip_ros.data import scenes as S

    ap = argparse.ArgumentParser(
        prog="glip-train generate",
        description="Write synthetic grounded scenes "
        "(PNG + COCO json with grounding captions) for training and evaluation.",
    )
    ap.add_argument("--out", required=True, help="output folder (never commit it)")
    ap.add_argument("--seed", type=int, default=0)
    for split, n in (
        ("train", 4000),
        ("val", 300),
        ("heldout", 200),
        ("fewshot_train", 40),
        ("fewshot_val", 150),
    ):
        ap.add_argument(
            f"--{split.replace('_', '-')}",
            type=int,
            default=n,
            dest=split,
            help=f"number of {split} scenes (default {n}; 0 skips the split)",
        )
    args = ap.parse_args(argv)
    for split in S.SPLIT_SPECS:
        n = getattr(args, split)
        if n <= 0:
            continue
        path = S.write_split(args.out, split, n, args.seed)
        if split == "heldout":
            with open(path, encoding="utf-8") as f:
                coco = json.load(f)
            combos = S.combo_eval_coco(coco)
            with open(os.path.join(args.out, "heldout_combos.json"), "w", encoding="utf-8") as f:
                json.dump(combos, f)
        print(f"{split}: {n} scenes -> {path}")
    return 0


def _init_distributed() -> bool:
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    backend = (
        "nccl" if torch.cuda.is_available() and os.environ.get("GLIP_DIST_BACKEND") != "gloo" else "gloo"
    )
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend)
    return True


def train_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "generate":
        return generate_main(argv[1:])
    ap = argparse.ArgumentParser(
        prog="glip-train",
        description="Train or fine-tune GLIP (full, prompt tuning, "
        "k-shot). 'glip-train generate ...' writes synthetic data.",
    )
    ap.add_argument("--config", help="YAML file of TrainConfig keys (configs/train/*.yaml)")
    ap.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    ap.add_argument("--out-dir", help="where last.pt (resumable state) and model.safetensors go")
    ap.add_argument("--export", help="also write the final model here (fp16 safetensors)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=500 data.size=100")
    args = ap.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from glip_ros.model.checkpoint import CheckpointError

    from .datasets import DatasetError
    from .trainer import Trainer, load_train_config

    log.info("malloc: %s", keep_freed_memory()[1])
    ov = list(args.overrides)
    if args.device:
        ov.append(f"device={args.device}")
    if args.out_dir:
        ov.append(f"out_dir={args.out_dir}")
    try:
        cfg = load_train_config(args.config, ov)
        dist = _init_distributed()
        trainer = Trainer(cfg)
        path = trainer.fit()
    except (DatasetError, FileNotFoundError, ValueError, CheckpointError) as e:
        print(f"glip-train: error: {e}", file=sys.stderr)
        return 2
    if trainer.rank == 0:
        print(f"model written to {path}")
        if args.export:
            import torch

            from glip_ros.model import save_checkpoint

            save_checkpoint(
                trainer.model,
                args.export,
                dtype=torch.float16,
                extra_metadata={"trained_by": "glip-train", "steps": str(trainer.step)},
            )
            print(f"fp16 export written to {args.export} ({os.path.getsize(args.export) / 1e6:.1f} MB)")
    if dist:
        import torch

        torch.distributed.destroy_process_group()
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="glip-eval",
        description="COCO box mAP (all category names as the prompt) "
        "or phrase-grounding Recall@1/5/10 on a COCO-format file.",
    )
    ap.add_argument("--checkpoint", required=True, help="a glip_ros safetensors checkpoint")
    ap.add_argument("--data", required=True, help="COCO-format json (images relative to its folder)")
    ap.add_argument("--image-root", help="image folder (default: the json's folder)")
    ap.add_argument("--task", choices=("coco", "grounding"), default="coco")
    ap.add_argument("--kinds", help="grounding: only these phrase kinds, comma separated (e.g. referring)")
    ap.add_argument("--names", help="coco: prompt names replacing the category names, comma separated")
    ap.add_argument("--limit", type=int, help="evaluate the first N images only")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto", choices=("auto", "pycocotools", "numpy"))
    ap.add_argument("--out", help="write the metrics as json here")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit <= 0:
        ap.error("--limit must be > 0")
    logging.basicConfig(level=logging.WARNING)
    import torch

    from glip_ros.eval.evaluate import evaluate_coco, evaluate_grounding, load_model, save_json
    from glip_ros.model.checkpoint import CheckpointError
    from glip_ros.train.datasets import DatasetError

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # many frames of similar sizes: reuse their buffers (glip_ros.cpu_memory)
    try:
        res = _evaluate(args, load_model, evaluate_coco, evaluate_grounding)
    except (DatasetError, FileNotFoundError, ValueError, CheckpointError) as e:
        print(f"glip-eval: error: {e}", file=sys.stderr)
        return 2
    if args.out:
        save_json(res, args.out)
    return 0


def _evaluate(args, load_model, evaluate_coco, evaluate_grounding):
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here (use --device cpu)")
    model = load_model(args.checkpoint, args.device)
    if args.task == "coco":
        names = [n.strip() for n in args.names.split(",")] if args.names else None
        res = evaluate_coco(
            model, args.data, args.image_root, limit=args.limit, names=names, backend=args.backend
        )
        print(
            f"AP {res['AP']:.4f}  AP50 {res['AP50']:.4f}  AP75 {res['AP75']:.4f}  "
            f"({res['num_images']} images, "
            f"{res['backend']})"
        )
        for k, v in res["per_category"].items():
            print(f"  {k}: AP {v:.4f}")
    else:
        kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else None
        res = evaluate_grounding(model, args.data, args.image_root, limit=args.limit, kinds=kinds)
        print(f"R@1 {res['R@1']:.4f}  R@5 {res['R@5']:.4f}  R@10 {res['R@10']:.4f}  ({res['n']} phrases)")
        for k, v in res["by_kind"].items():
            print(f"  {k}: R@1 {v['R@1']:.4f}  R@5 {v['R@5']:.4f}  R@10 {v['R@10']:.4f}  ({v['n']})")
    return res


if __name__ == "__main__":
    sys.exit(train_main())
