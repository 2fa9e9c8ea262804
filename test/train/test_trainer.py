"""Training: a few steps reduce the loss on a tiny set; resume reproduces the next-step loss; two gloo
processes produce the same gradient as one process with the same global batch; prompt tuning trains only
the language-side offset; the written checkpoint loads back."""

from __future__ import annotations

import os

import pytest
import torch
from train_helpers import micro_config

from glip_ros.model import build_model
from glip_ros.train.datasets import SyntheticGroundingDataset
from glip_ros.train.trainer import TrainConfig, Trainer


def _trainer(tmp_path, **kw) -> Trainer:
    torch.manual_seed(0)
    size = kw.pop("size", None)
    cfg = TrainConfig(
        model=micro_config().to_dict(),
        text_init=False,
        steps=kw.pop("steps", 4),
        batch_size=kw.pop("batch_size", 2),
        lr=kw.pop("lr", 2e-3),
        warmup_steps=1,
        min_size=128,
        max_size=128,
        device="cpu",
        out_dir=str(tmp_path),
        progress=False,
        save_every=0,
        **kw,
    )
    ds = SyntheticGroundingDataset("train", size=size or cfg.batch_size, seed=0)
    return Trainer(cfg, model=build_model(micro_config()), dataset=ds)


def _eval_loss(tr: Trainer) -> float:
    tr.model.eval()
    with torch.no_grad():
        return float(tr.compute_loss(0).total)


def test_few_steps_reduce_the_loss(tmp_path) -> None:
    tr = _trainer(tmp_path, steps=6, lr=3e-3)
    before = _eval_loss(tr)
    for _ in range(6):
        tr.train_step()
    after = _eval_loss(tr)
    assert after < 0.9 * before, (before, after)


def test_resume_gives_the_same_next_step_loss(tmp_path) -> None:
    a = _trainer(tmp_path / "a", steps=4)
    for _ in range(2):
        a.train_step()
    path = a.save_state(str(tmp_path / "state.pt"))
    expected = float(a.train_step().total.detach())
    b = _trainer(tmp_path / "b", steps=4)
    b.load_state(path)
    assert b.step == 2
    got = float(b.train_step().total.detach())
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert b.scheduler.get_last_lr() == a.scheduler.get_last_lr()


def test_prompt_tuning_trains_only_the_offset(tmp_path) -> None:
    tr = _trainer(tmp_path, mode="prompt", lr=0.05)
    frozen = {n: p.detach().clone() for n, p in tr.model.named_parameters() if "tunable_linear" not in n}
    tr.train_step()
    tr.train_step()
    tl = tr.model.rpn.tunable_linear.weight
    assert tl.abs().sum() > 0
    for n, p in tr.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_prompt_tuning_offset_gets_gradient_at_every_prompt_position(tmp_path) -> None:
    """The offset rows of the prompt's token positions all get gradient, the rest of the model none (the
    official language_prompt_v2 freezes everything else)."""
    tr = _trainer(tmp_path, mode="prompt", lr=0.05)
    tr.model.train()
    items = tr.load_items(0)
    _, ids, mask, _ = tr.collate(items)
    loss = tr.compute_loss(0, items)
    loss.total.backward()
    g = tr.model.rpn.tunable_linear.weight.grad
    rows = g.abs().sum(1)
    n = ids.shape[1]
    assert bool((rows[:n] > 0).all()), rows[:n]
    assert float(rows[n:].abs().sum()) == 0.0
    assert [n for n, p in tr.model.named_parameters() if p.requires_grad] == ["rpn.tunable_linear.weight"]
    decay = [g["weight_decay"] for g in tr.optimizer.param_groups if g["params"]]
    assert decay == [tr.cfg.weight_decay]  # the 2-d offset is decayed as the official optimizer does


def test_fit_writes_a_loadable_checkpoint(tmp_path) -> None:
    from glip_ros.eval.evaluate import load_model

    tr = _trainer(tmp_path, steps=1)
    path = tr.fit()
    assert os.path.isfile(path) and os.path.isfile(tmp_path / "last.pt")
    m = load_model(path)
    assert m.config.name == "glip_micro_test"
    from glip_ros.detector import GLIPDetector

    det = GLIPDetector.from_checkpoint(path)
    assert det.model.config.name == "glip_micro_test"


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        torch.set_num_threads(1)
        tr = _trainer(out_dir, batch_size=4, size=4)
        tr.model.eval()  # no dropout: gradients are deterministic
        loss = tr.compute_loss(0)
        loss.total.backward()
        for _, p in tr.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world)
        if rank == 0:
            torch.save({n: p.grad for n, p in tr.params}, os.path.join(out_dir, "ddp_grads.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path) -> None:
    """Same global batch of 4: 2 processes x 2 images with all-reduced gradients == 1 process x 4 images."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp_grads.pt")
    tr = _trainer(tmp_path, batch_size=4, size=4)
    tr.model.eval()
    tr.compute_loss(0).total.backward()
    worst = 0.0
    for n, p in tr.params:
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        scale = g.abs().max().item() + 1e-6  # some gradients are exactly 0 in theory (attention key bias)
        worst = max(worst, (g - ddp[n]).abs().max().item() / scale)
    assert worst < 1e-4, worst


def test_training_targets_use_the_box_convention_the_evaluation_inverts(tmp_path) -> None:
    """Targets are the official inclusive boxes (x2 = x + w - 1, as maskrcnn_benchmark's BoxList), which the
    COCO export's +1 width turns back into the dataset's [x, y, w, h]: a perfect model scores IoU 1."""
    from glip_ros.eval.evaluate import _xywh_plus1

    tr = _trainer(tmp_path)
    items = tr.load_items(0)
    _, _, _, targets = tr.collate(items)
    _, _, scales = tr.model.preprocess([it["image"] for it in items], 128, 128)
    for it, t, (sx, sy) in zip(items, targets, scales, strict=True):
        got = t["boxes"] * torch.tensor([sx, sy, sx, sy])  # back to the image's pixels, as the evaluation
        want = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in it["boxes"]]  # the dataset's xywh
        assert len(got) == len(want) > 0
        for g, w in zip(got.tolist(), want, strict=True):
            assert _xywh_plus1(g) == pytest.approx(w, abs=1e-4)
