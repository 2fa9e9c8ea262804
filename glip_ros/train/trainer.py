"""The GLIP trainer: full fine-tuning, prompt tuning and k-shot runs, resumable, data-parallel under torchrun.

Design choices (and why):
* The batch order is a pure function of (seed, epoch, step): a seeded permutation per epoch, cut into global
  batches, each process taking its slice. Resume therefore continues with exactly the batches it would have
  seen, and N processes see the same global batch one process would see with the same global batch size.
* Data parallelism averages gradients with an explicit all-reduce instead of wrapping the model in DDP: the
  head has parameters the loss never touches (the official unused ``cls_logits``), which DDP rejects unless it
  searches for unused parameters every step. The loss normalisers (#positives, sum of centerness targets)
  are averaged over processes as the official code does, so the summed gradient equals one big batch's.
* Mixed precision is bf16 autocast on CUDA (no loss scaler needed); CPU runs in fp32.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .datasets import CocoGroundingDataset, DatasetError, SyntheticGroundingDataset, get_train_tokenizer
from .losses import GLIPLoss, LossOutput

__all__ = ["TrainConfig", "Trainer", "build_dataset", "load_train_config"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every knob of a run; YAML files in configs/train/ set these keys, ``key=value`` overrides them."""

    model: Any = "glip_synth_tiny"  # preset name, GLIPConfig dict, or path to a checkpoint to start from
    init_checkpoint: str | None = None  # weights to start from (ours or an official .pth); None = scratch
    text_init: bool = True  # MiniLM-derived word embeddings for a from-scratch language tower
    data: dict[str, Any] = field(
        default_factory=lambda: {"type": "synthetic", "split": "train", "size": 4000}
    )
    mode: str = "full"  # "full" | "prompt" (only the language-side offset rpn.tunable_linear trains)
    kshot: int = 0  # >0: keep k images per category (of category ``kshot_category`` or all categories)
    kshot_category: str | None = None
    steps: int = 1000
    batch_size: int = 8  # global batch (split over processes)
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.02
    grad_clip: float = 1.0
    min_size: int = 256
    max_size: int = 448
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA only
    num_workers: int = 0
    threads: int = 2
    out_dir: str = "out/train/run"
    save_every: int = 200
    log_every: int = 20
    resume: bool = True  # continue from out_dir/last.pt when it exists
    progress: bool = True
    # >0: a wall-clock budget. The schedule then follows max(step/steps, elapsed/budget) and training stops at
    # the budget: for fixed-time runs on borrowed machines (not bit-reproducible, unlike step-based runs).
    time_budget_s: float = 0.0


def load_train_config(path: str | None, overrides: list[str] | None = None) -> TrainConfig:
    import yaml

    raw: dict[str, Any] = {}
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"training config not found: {path}")
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    for ov in overrides or []:
        if "=" not in ov:
            raise ValueError(f"override {ov!r} is not key=value")
        key, val = ov.split("=", 1)
        cur = raw
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise ValueError(f"override {ov!r}: {p!r} is not a mapping")
        cur[parts[-1]] = yaml.safe_load(val)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f"unknown training config keys: {sorted(unknown)} (known: {sorted(names)})")
    cfg = TrainConfig(**raw)
    for f in dataclasses.fields(TrainConfig):  # scalar keys keep their default's type
        d, v = f.default, getattr(cfg, f.name)
        if isinstance(d, bool):
            ok = isinstance(v, bool)
        elif isinstance(d, (int, float)):
            ok = (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and (isinstance(d, float) or isinstance(v, int))
            )
        else:
            continue
        if not ok:
            raise ValueError(f"training config key {f.name!r} must be a {type(d).__name__}, got {v!r}")
    if cfg.mode not in ("full", "prompt"):
        raise ValueError(f"mode must be 'full' or 'prompt', got {cfg.mode!r}")
    if cfg.batch_size <= 0 or cfg.steps < 0:
        raise ValueError(f"batch_size must be > 0 and steps >= 0, got {cfg.batch_size} and {cfg.steps}")
    if not isinstance(cfg.data, dict):
        raise ValueError(f"data must be a mapping, got {cfg.data!r}")
    return cfg


_DATA_KEYS = {
    "synthetic": {"type", "split", "size", "seed", "od_prob"},
    "coco": {"type", "json", "image_root", "mode", "max_negatives", "shuffle"},
}


def build_dataset(spec: dict[str, Any], tokenizer=None, seed: int = 0):
    kind = spec.get("type", "coco" if "json" in spec else "synthetic")  # TrainConfig's default is synthetic
    if kind in _DATA_KEYS and set(spec) - _DATA_KEYS[kind]:
        raise ValueError(
            f"unknown {kind} dataset keys: {sorted(set(spec) - _DATA_KEYS[kind])} "
            f"(known: {sorted(_DATA_KEYS[kind])})"
        )
    if kind == "synthetic":
        from glip_ros.data.scenes import SPLIT_SPECS

        if spec.get("split", "train") not in SPLIT_SPECS:
            raise ValueError(f"unknown synthetic split {spec['split']!r} (one of {sorted(SPLIT_SPECS)})")
        return SyntheticGroundingDataset(
            spec.get("split", "train"),
            int(spec.get("size", 4000)),
            int(spec.get("seed", seed)),
            od_prob=float(spec.get("od_prob", 0.3)),
        )
    if kind == "coco":
        if "json" not in spec:
            raise ValueError("a coco dataset needs 'json' (and optionally 'image_root', 'mode')")
        return CocoGroundingDataset(
            spec["json"],
            spec.get("image_root"),
            spec.get("mode", "detection"),
            max_negatives=int(spec.get("max_negatives", 85)),
            shuffle_labels=bool(spec.get("shuffle", True)),
            tokenizer=tokenizer,
            seed=seed,
        )
    raise ValueError(f"unknown dataset type {kind!r} (synthetic or coco)")


def kshot_subset(ds: CocoGroundingDataset, k: int, category: str | None, seed: int) -> CocoGroundingDataset:
    """Keep k images containing ``category`` (or k per category), chosen by a seeded shuffle."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds.items))
    if category is not None:
        cids = [c for c, n in ds.names.items() if n == category]
        if not cids:
            raise DatasetError(
                f"k-shot category {category!r} is not in the dataset ({sorted(ds.names.values())})"
            )
        cats = cids
    else:
        cats = list(ds.names)
    keep, count = [], dict.fromkeys(cats, 0)
    for i in order:
        labels = ds.items[int(i)].get("labels", [])
        need = [c for c in cats if c in labels and count[c] < k]
        if need:
            keep.append(int(i))
            for c in need:
                count[c] += 1
        if all(v >= k for v in count.values()):
            break
    ds.items = [ds.items[i] for i in sorted(keep)]
    if not ds.items:
        raise DatasetError("k-shot selection left no image")
    short = sorted((ds.names[c], n) for c, n in count.items() if n < k)
    if short:
        # A "10-shot" run that saw 3 images of a class is a different experiment: say so where it is set up.
        listed = ", ".join(f"{name}: {n}" for name, n in short[:20]) + (" ..." if len(short) > 20 else "")
        log.warning(
            "k-shot: %d of %d categories have fewer than %d images in the dataset (%s)",
            len(short),
            len(cats),
            k,
            listed,
        )
    return ds


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _lr_lambda(cfg: TrainConfig, clock: dict[str, float] | None = None):
    """Linear warm-up, then cosine decay to ``min_lr_ratio``; with a time budget the decay follows time."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(cfg.warmup_steps, 1)
        t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        if clock is not None and cfg.time_budget_s > 0:
            t = max(t, clock.get("fraction", 0.0))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def build_train_model(cfg: TrainConfig):
    from glip_ros.model import build_model, load_checkpoint, read_checkpoint_config

    from .configs import resolve_train_model

    spec = cfg.model
    init = cfg.init_checkpoint
    if isinstance(spec, str) and spec.endswith((".safetensors", ".pth", ".pt")) and not os.path.isfile(spec):
        raise FileNotFoundError(f"model checkpoint not found: {spec}")
    if isinstance(spec, str) and os.path.isfile(spec) and spec.endswith((".safetensors", ".pth", ".pt")):
        init = init or spec
        spec = read_checkpoint_config(spec) or spec
    model = build_model(resolve_train_model(spec))
    if init:
        report = load_checkpoint(model, init, strict=False)
        log.info("initialised from %s: %s", init, getattr(report, "summary", lambda: report)())
    elif cfg.text_init:
        from .text_init import apply_text_init

        if apply_text_init(model):
            log.info("language embeddings initialised from MiniLM-L6 (PCA)")
    return model


class Trainer:
    def __init__(self, cfg: TrainConfig, model=None, dataset=None):
        self.cfg = cfg
        self.rank, self.world = _dist()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {self.world} processes")
        if cfg.device == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            dev = cfg.device
        if dev.startswith("cuda") and self.world > 1:
            dev = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        try:
            self.device = torch.device(dev)
        except RuntimeError:
            raise ValueError(f"device {dev!r} is not a torch device (cpu, cuda, cuda:1 ...)") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {dev!r} asked for, but CUDA is not available here (use device=cpu)")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, cfg.threads))
        self.tokenizer = get_train_tokenizer()
        _seed_all(cfg.seed)
        self.model = (model if model is not None else build_train_model(cfg)).to(self.device)
        self.dataset = dataset if dataset is not None else build_dataset(cfg.data, self.tokenizer, cfg.seed)
        if cfg.kshot > 0:
            if not isinstance(self.dataset, CocoGroundingDataset):
                raise DatasetError("k-shot sampling needs a COCO-format dataset")
            self.dataset = kshot_subset(self.dataset, cfg.kshot, cfg.kshot_category, cfg.seed)
        if len(self.dataset) == 0:
            raise DatasetError("the training dataset is empty: refusing to train on nothing")
        self.params = self._select_params()
        decay = [p for n, p in self.params if p.ndim > 1 and "embeddings" not in n]
        no_decay = [p for n, p in self.params if not (p.ndim > 1 and "embeddings" not in n)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
        )
        self.clock: dict[str, float] = {"fraction": 0.0}
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg, self.clock))
        self.loss_fn = GLIPLoss(self.model.box_coder)
        self.step = 0
        self.history: list[dict[str, float]] = []

    def _select_params(self) -> list[tuple[str, torch.nn.Parameter]]:
        if self.cfg.mode == "prompt":
            # Official 'language_prompt_v2': everything frozen except the per-position text offset.
            self.model.enable_prompt_tuning()
            for p in self.model.parameters():
                p.requires_grad_(False)
            tl = self.model.rpn.tunable_linear
            tl.weight.requires_grad_(True)
            return [("rpn.tunable_linear.weight", tl.weight)]
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    # -- data ------------------------------------------------------------------------------------------------
    def batch_indices(self, step: int) -> list[int]:
        """This process's dataset indices for global ``step`` (see module docstring)."""
        n, bs = len(self.dataset), self.cfg.batch_size
        per_epoch = max(n // bs, 1)
        epoch, offset = divmod(step, per_epoch)
        perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
        if n < bs:  # tiny (k-shot) sets: repeat the permutation to fill a batch
            perm = np.resize(perm, bs)
        glob = perm[offset * bs : (offset + 1) * bs]
        local = bs // self.world
        return [int(i) for i in glob[self.rank * local : (self.rank + 1) * local]]

    def collate(self, items: list[dict[str, Any]]):
        m = self.model
        images, sizes, scales = m.preprocess(
            [it["image"] for it in items], self.cfg.min_size, self.cfg.max_size, device=self.device
        )
        enc = self.tokenizer(
            [it["caption"] for it in items],
            padding="longest",
            truncation=True,
            max_length=256,
            return_tensors="pt",
        )
        from .datasets import positive_map_from_spans

        T = enc["input_ids"].shape[1]
        targets = []
        for b, it in enumerate(items):
            sx, sy = scales[b]
            boxes = torch.as_tensor(it["boxes"], dtype=torch.float32).reshape(-1, 4).clone()
            # datasets give x2 = x + w; the box coder, ATSS and the evaluation (+1 width) use the legacy
            # inclusive convention, so convert as maskrcnn_benchmark's BoxList.convert("xyxy") (TO_REMOVE = 1)
            boxes[:, 2:] -= 1
            boxes = boxes / torch.tensor([sx, sy, sx, sy])
            pm = positive_map_from_spans(enc[b], it["box_spans"], T)
            keep = pm.sum(1) > 0  # boxes whose phrase was truncated away are dropped, as the official code
            targets.append({"boxes": boxes[keep].to(self.device), "positive_map": pm[keep].to(self.device)})
        return images, enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device), targets

    def epoch_of(self, step: int) -> int:
        return step // max(len(self.dataset) // self.cfg.batch_size, 1)

    def load_items(self, step: int) -> list[dict[str, Any]]:
        return [_get_item(self.dataset, i, self.epoch_of(step)) for i in self.batch_indices(step)]

    def batches(self, start: int):
        """Item lists for steps start, start+1, ... (worker processes prefetch when num_workers > 0)."""
        if self.cfg.num_workers <= 0:
            step = start
            while True:
                yield self.load_items(step)
                step += 1
        sampler = _StepSampler(self, start)
        loader = torch.utils.data.DataLoader(
            _EpochDataset(self.dataset),
            batch_sampler=sampler,
            num_workers=self.cfg.num_workers,
            collate_fn=_identity,
            prefetch_factor=4,
            persistent_workers=False,
        )
        yield from loader

    # -- one step --------------------------------------------------------------------------------------------
    def compute_loss(self, step: int, items: list[dict[str, Any]] | None = None) -> LossOutput:
        if items is None:
            items = self.load_items(step)
        images, ids, mask, targets = self.collate(items)
        use_amp = self.cfg.amp and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            out = self.model(images, ids, mask)
            anchors = self.model.anchors(self.model_feats_shapes(out))
        return self.loss_fn(out, anchors, targets, mask)

    def model_feats_shapes(self, out) -> list[torch.Tensor]:
        # anchors only need each level's spatial size: the centerness maps have it.
        return out.centerness

    def train_step(self, items: list[dict[str, Any]] | None = None) -> LossOutput:
        self.model.train()
        loss = self.compute_loss(self.step, items)
        self.optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        if self.world > 1:
            for _, p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(self.world)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.params], self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "model_config": self.model.config.to_dict(),
            "prompt_tuning": self.model.rpn.tunable_linear is not None,
        }

    def save_state(self, path: str | None = None) -> str:
        path = path or os.path.join(self.cfg.out_dir, "last.pt")
        if self.rank == 0:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = path + ".tmp"
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, path)
        return path

    def load_state(self, path: str) -> None:
        hint = "delete it, or set resume=false or another out_dir"
        try:
            st = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means an unreadable file
            raise ValueError(
                f"cannot resume from {path}: not a readable training state ({e}); {hint}"
            ) from None
        need = {"model", "optimizer", "scheduler", "step", "rng"}
        if not isinstance(st, dict) or not need <= set(st):
            raise ValueError(
                f"cannot resume from {path}: not a glip-train state (needs {sorted(need)}); {hint}"
            )
        try:
            if st.get("prompt_tuning"):
                self.model.enable_prompt_tuning()
            self.model.load_state_dict(st["model"])
            self.optimizer.load_state_dict(st["optimizer"])
            self.scheduler.load_state_dict(st["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ValueError(
                f"cannot resume from {path}: it was written by a run with another model or mode "
                f"({str(e).strip().splitlines()[0]}); {hint}"
            ) from None
        self.step = int(st["step"])
        rng = st["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in rng["cuda"]])

    # -- loop ------------------------------------------------------------------------------------------------
    def fit(self) -> str:
        """Train to ``cfg.steps``; returns the final model file (safetensors, config in its metadata)."""
        from glip_ros.model import save_checkpoint

        cfg = self.cfg
        last = os.path.join(cfg.out_dir, "last.pt")
        if cfg.resume and os.path.isfile(last):
            self.load_state(last)
            log.info("resumed from %s at step %d", last, self.step)
        bar = None
        if cfg.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True)
        t0 = time.time()
        batches = self.batches(self.step)
        while self.step < cfg.steps:
            if cfg.time_budget_s > 0:
                self.clock["fraction"] = (time.time() - t0) / cfg.time_budget_s
                if self.clock["fraction"] >= 1.0:
                    log.info("time budget of %.0fs reached at step %d", cfg.time_budget_s, self.step)
                    break
            loss = self.train_step(next(batches))
            rec = {
                "step": self.step,
                "loss": float(loss.total.detach()),
                "token": float(loss.token),
                "reg": float(loss.reg),
                "ctr": float(loss.centerness),
                "lr": self.scheduler.get_last_lr()[0],
            }
            self.history.append(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", tok=f"{rec['token']:.3f}", reg=f"{rec['reg']:.3f}")
            elif self.rank == 0 and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                log.info(
                    "step %d/%d loss %.4f (token %.4f reg %.4f ctr %.4f) lr %.2e %.1fs",
                    self.step,
                    cfg.steps,
                    rec["loss"],
                    rec["token"],
                    rec["reg"],
                    rec["ctr"],
                    rec["lr"],
                    time.time() - t0,
                )
            if cfg.save_every > 0 and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save_state(last)
        if bar is not None:
            bar.close()
        self.save_state(last)
        out = os.path.join(cfg.out_dir, "model.safetensors")
        if self.rank == 0:
            save_checkpoint(self.model, out)
        return out


def _get_item(ds, i: int, epoch: int) -> dict[str, Any]:
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
    return ds[i]


class _EpochDataset(torch.utils.data.Dataset):
    """Indexable by (index, epoch): the epoch travels with the index into worker processes."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        return _get_item(self.ds, key[0], key[1])


class _StepSampler:
    def __init__(self, trainer: Trainer, start: int):
        self.trainer, self.start = trainer, start

    def __iter__(self):
        step = self.start
        while True:
            ep = self.trainer.epoch_of(step)
            yield [(i, ep) for i in self.trainer.batch_indices(step)]
            step += 1


def _identity(x):
    return x


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
