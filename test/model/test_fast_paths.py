"""The engine's faster formulations compute the official function: factored fusion attention, the sampled
deformable convolution, the Swin shift mask. Compared on random inputs against the
official operation order (the parity tests compare the default path against the official fixture)."""

from __future__ import annotations

import functools

import pytest
import torch
from torchvision.ops import deform_conv2d

from glip_ros.model import build_model
from glip_ros.model.dyhead import deform_conv2d_gathered, deform_conv2d_sampled
from glip_ros.model.fusion import BiMultiHeadAttention


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


@pytest.mark.parametrize("t", [5, 16, 40])
def test_factored_fusion_equals_reference(t):
    torch.manual_seed(t)
    m = BiMultiHeadAttention(32, 48, 64, 4)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    v, lang = torch.randn(2, 300, 32), torch.randn(2, t, 48)
    mask = torch.ones(2, t)
    mask[1, t // 2 :] = 0
    with torch.no_grad():
        ref_v, ref_l = m.forward_reference(v, lang, mask)
        out_v, out_l = m.forward_factored(v, lang, mask)
    assert _rel(out_v, ref_v) < 1e-5
    assert _rel(out_l, ref_l) < 1e-5


def test_factored_fusion_gradients_match_reference():
    """Training runs the factored form too: its gradients are the official ones."""
    torch.manual_seed(1)
    m = BiMultiHeadAttention(16, 24, 32, 2)
    v, lang, mask = torch.randn(1, 50, 16), torch.randn(1, 7, 24), torch.ones(1, 7)
    grads = []
    for fn in (m.forward_reference, m.forward_factored):
        m.zero_grad()
        a, b = fn(v, lang, mask)
        (a.square().sum() + b.square().sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert _rel(grads[1], grads[0]) < 1e-4


_FUSED = functools.partial(deform_conv2d_gathered, fused=True)


@pytest.mark.parametrize(
    "form", [deform_conv2d_sampled, deform_conv2d_gathered, _FUSED], ids=["sampled", "gathered", "fused"]
)
@pytest.mark.parametrize(
    "stride,h,w,b",
    [
        (1, 23, 31, 2),
        (2, 23, 31, 2),
        (2, 24, 32, 1),
        (1, 1, 1, 2),
        (1, 3, 5, 3),
        (2, 7, 11, 2),
        (1, 9, 13, 1),
    ],
)
def test_deform_conv_forms_equal_torchvision(form, stride, h, w, b):
    """The sampled (grid_sample) and gathered (embedding_bag, or indexing + sum) DCNs compute torchvision's
    function, including samples exactly one pixel out, on the row past the last, far out, between pixels;
    batched, one image at a time, and under inference mode (CPU inference takes one image at a time there)."""
    torch.manual_seed(h * w + stride + b)
    x = torch.randn(b, 8, h, w)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    offset = torch.randn(b, 18, ho, wo) * 3
    offset[0, 0, 0, 0] = -1.0  # tap 0 of the first location: exactly one pixel out (row and column)
    offset[0, 1, 0, 0] = -1.0
    offset[0, 16, -1, -1] = 1.0  # tap 8 of the last location: exactly on the row past the last
    offset[-1, 4:6] = 1e4  # far outside the image
    offset[-1, 6:8] = 0.5  # between pixels
    mask = torch.rand(b, 9, ho, wo)
    weight, bias = torch.randn(6, 8, 3, 3), torch.randn(6)
    ref = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    out = form(x, offset, mask, weight, bias, stride)
    assert out.shape == ref.shape
    assert _rel(out, ref) < 1e-5
    for i in range(b):  # image i reads only image i
        assert (
            _rel(form(x[i : i + 1], offset[i : i + 1], mask[i : i + 1], weight, bias, stride), ref[i : i + 1])
            < 1e-5
        )
    with torch.inference_mode():
        assert _rel(form(x, offset, mask, weight, bias, stride), ref) < 1e-5


def test_gathered_deform_conv_gradients_match_torchvision():
    """Training can run the gathered form: gradients to input, offsets, mask, weight and bias."""
    torch.manual_seed(3)
    x = torch.randn(2, 8, 9, 11)
    offset = torch.randn(2, 18, 9, 11) * 2 + 0.3  # off the integer grid (floor has no gradient there)
    mask, weight, bias = torch.rand(2, 9, 9, 11), torch.randn(5, 8, 3, 3), torch.randn(5)
    up = torch.randn(2, 5, 9, 11)
    grads = []
    for fn in ("torchvision", "gather"):
        leaves = [t.clone().requires_grad_(True) for t in (x, offset, mask, weight, bias)]
        xi, oi, mi, wi, bi = leaves
        if fn == "torchvision":
            out = deform_conv2d(xi, oi, wi, bi, padding=1, mask=mi)
        else:
            out = deform_conv2d_gathered(xi, oi, mi, wi, bi, 1)
        grads.append(torch.autograd.grad(out, leaves, up))
    for g_ref, g in zip(*grads, strict=True):
        assert _rel(g, g_ref) < 1e-4


def test_fused_gather_compiled_equals_eager_and_reads_a_realised_table():
    """The "index" impl is meant for compiled graphs: compiled (on this CPU) it computes what it computes
    eagerly, its gradients included (the bordered table's custom operator has its own backward), and the
    table reaches the gather through that operator (inductor would otherwise read channels-first input)."""
    from glip_ros.model import dyhead

    if dyhead._TABLE_OP is None:
        pytest.skip("torch < 2.4 has no torch.library.custom_op: the table is inlined, as any other op")
    torch.manual_seed(5)
    x, offset = torch.randn(2, 16, 9, 11), torch.randn(2, 18, 5, 6) * 2 + 0.3
    mask, weight, bias = torch.rand(2, 9, 5, 6), torch.randn(8, 16, 3, 3), torch.randn(8)
    calls = []
    real = dyhead._TABLE_OP

    def counted(*args):
        calls.append(1)
        return real(*args)

    dyhead._TABLE_OP = counted
    try:
        compiled = torch.compile(_FUSED, dynamic=False, fullgraph=True)
        leaves = [t.clone().requires_grad_(True) for t in (x, offset, mask, weight, bias)]
        out = compiled(*leaves, 2)
    finally:
        dyhead._TABLE_OP = real
    assert calls, "the compiled gather did not take its table from the custom operator"
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, offset, mask, weight, bias)]
    ref = deform_conv2d(
        *ref_leaves[:2], ref_leaves[3], ref_leaves[4], stride=2, padding=1, mask=ref_leaves[2]
    )
    assert _rel(out.detach(), ref.detach()) < 1e-5
    up = torch.randn_like(ref)
    for g, g_ref in zip(
        torch.autograd.grad(out, leaves, up), torch.autograd.grad(ref, ref_leaves, up), strict=True
    ):
        assert _rel(g, g_ref) < 1e-4


def test_gathered_deform_conv_under_bf16_autocast_and_as_the_module_impl():
    """Under autocast the gather and the product run in bf16 (close to fp32, not equal); set_deform_impl
    selects it for every DCN of a model, whose head then matches the default impl."""
    from glip_ros.model.dyhead import set_deform_impl

    torch.manual_seed(4)
    x, offset, mask = torch.randn(1, 16, 12, 10), torch.randn(1, 18, 12, 10) * 2, torch.rand(1, 9, 12, 10)
    weight, bias = torch.randn(8, 16, 3, 3) * 0.1, torch.randn(8)
    ref = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = deform_conv2d_gathered(x, offset, mask, weight, bias, 1)
    assert low.dtype == torch.bfloat16
    assert 0 < _rel(low.float(), ref) < 3e-2

    model = build_model("glip_tiny_test").eval()
    head, lang = model.rpn.head, model.config.language
    sizes = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]  # as the FPN's levels (P6, P7: stride-2 convs)
    feats = [torch.randn(1, model.config.fpn_channels, h, w) for h, w in sizes]
    from glip_ros.model.language import TextFeatures

    hidden = torch.randn(1, 6, lang.hidden_size)
    text = TextFeatures(hidden=hidden, embedded=hidden, masks=torch.ones(1, 6, dtype=torch.long))
    with torch.no_grad():
        default = head.run_tower(feats, text)[0]
        set_deform_impl(model, "gather")
        gathered = head.run_tower(feats, text)[0]
        set_deform_impl(model, "index")
        indexed = head.run_tower(feats, text)[0]
        set_deform_impl(model, "auto")
    for a, b, d in zip(gathered, indexed, default, strict=True):
        assert _rel(a, d) < 1e-4
        assert _rel(b, d) < 1e-4


@pytest.mark.parametrize("b,c", [(1, 32), (2, 48), (1, 20), (3, 16)])
def test_channel_groups_sample_exactly_as_one_grid_sample(b, c):
    """The sampled DCN splits the channels into batch entries of 16 (more parallel work per kernel): every
    value bitwise as one grid_sample, gradients to the input likewise, to the grid up to summation order."""
    import torch.nn.functional as F

    from glip_ros.model.dyhead import SAMPLE_GROUP_CHANNELS, _sample_channel_groups

    assert SAMPLE_GROUP_CHANNELS == 16
    torch.manual_seed(b * c)
    x = torch.randn(b, c, 7, 9, requires_grad=True)
    grid = (torch.rand(b, 9 * 5, 6, 2) * 2.4 - 1.2).requires_grad_(True)  # some taps outside the image
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = _sample_channel_groups(x, grid)
    assert torch.equal(out, ref)
    up = torch.randn_like(ref)
    gx_ref, gg_ref = torch.autograd.grad(ref, (x, grid), up)
    gx, gg = torch.autograd.grad(out, (x, grid), up)
    assert torch.equal(gx, gx_ref)
    assert _rel(gg, gg_ref) < 1e-5
    # and through the whole sampled DCN, against torchvision's op
    xs, grid_shape = x.detach(), (b, 18, 7, 9)
    offset, mask = torch.randn(grid_shape) * 3, torch.rand(b, 9, 7, 9)
    weight, bias = torch.randn(6, c, 3, 3), torch.randn(6)
    dcn_ref = deform_conv2d(xs, offset, weight, bias, padding=1, mask=mask)
    assert _rel(deform_conv2d_sampled(xs, offset, mask, weight, bias, 1), dcn_ref) < 1e-5


def test_sampled_deform_conv_reuses_its_grid_per_shape():
    from glip_ros.model import constants

    constants.clear_shape_constants()
    x, offset, mask = torch.randn(1, 4, 6, 7), torch.randn(1, 18, 6, 7), torch.rand(1, 9, 6, 7)
    weight, bias = torch.randn(5, 4, 3, 3), torch.randn(5)
    first = deform_conv2d_sampled(x, offset, mask, weight, bias, 1)
    assert len(constants._CACHE) == 1
    ((base, _),) = constants._CACHE.values()
    again = deform_conv2d_sampled(x, offset * 0.5, mask, weight, bias, 1)  # same shapes, other offsets
    assert len(constants._CACHE) == 1 and next(iter(constants._CACHE.values()))[0] is base
    ref = deform_conv2d(x, offset * 0.5, weight, bias, padding=1, mask=mask)
    assert _rel(again, ref) < 1e-5 and not torch.equal(first, again)


def test_grid_kept_from_inference_serves_a_training_step():
    """The engine (inference mode) fills the grid cache; a training step with the same shapes must still
    be able to save what it needs for backward."""
    from glip_ros.model import constants

    constants.clear_shape_constants()
    weight, bias = torch.randn(5, 4, 3, 3, requires_grad=True), torch.randn(5)
    x, mask = torch.randn(1, 4, 6, 7), torch.rand(1, 9, 6, 7)
    offset = torch.randn(1, 18, 6, 7)
    with torch.inference_mode():
        deform_conv2d_sampled(x, offset, mask, weight, bias, 1)
    assert len(constants._CACHE) == 1
    off = offset.clone().requires_grad_(True)
    deform_conv2d_sampled(x, off, mask, weight, bias, 1).square().sum().backward()
    assert off.grad is not None and weight.grad is not None


@pytest.mark.parametrize("dyfuse,dyrelu", [(True, True), (False, True), (True, False)])
def test_dyconv_fewer_passes_equals_official_order(dyfuse, dyrelu):
    """DyHead's weighted mean without the stacked copy and DyReLU's coefficients as one affine map: the
    official values and gradients (training runs this form too)."""
    from glip_ros.model.dyhead import DyConv

    torch.manual_seed(3)
    m = DyConv(32, 8, use_deform=True, use_dyrelu=dyrelu, use_dyfuse=dyfuse)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    feats = [torch.randn(2, 32, 12 >> i, 16 >> i, requires_grad=True) for i in range(3)]
    outs, grads = [], []
    for reference in (True, False):
        for sub in m.modules():
            if hasattr(sub, "reference"):
                sub.reference = reference
        m.zero_grad()
        y = m(feats)
        sum(t.square().sum() for t in y).backward()
        outs.append(torch.cat([t.flatten() for t in y]).detach())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert _rel(outs[1], outs[0]) < 1e-5
    assert _rel(grads[1], grads[0]) < 1e-4


def test_reference_ops_switch_gives_the_same_head_outputs():
    torch.manual_seed(0)
    model = build_model("glip_tiny_test")
    x = torch.randn(1, 3, 96, 128)
    from glip_ros.prompt import build_prompt

    p = build_prompt("red circle. blue square")
    with torch.no_grad():
        text = model.encode_text(p.input_ids, p.attention_mask)
        feats = model.encode_image(x)
        fast = model.forward_head(feats, text)
        model.use_reference_ops(True)
        try:
            ref = model.forward_head(feats, text)
        finally:
            model.use_reference_ops(False)
    for a, b in zip(fast.logits + fast.bbox_reg, ref.logits + ref.bbox_reg, strict=True):
        assert _rel(a, b) < 1e-4


def test_swin_shift_mask_matches_the_slice_construction():
    from glip_ros.model.swin import window_partition

    layer = build_model("glip_tiny_test").backbone.body.layers[0]
    ws, s = layer.window_size, layer.shift_size
    for h, w in [(ws, ws), (2 * ws + 3, 3 * ws), (5, 9)]:
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        img = torch.zeros((1, hp, wp, 1))
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                img[:, hs, wsl, :] = cnt
                cnt += 1
        mw = window_partition(img, ws).view(-1, ws * ws)
        ref = mw.unsqueeze(1) - mw.unsqueeze(2)
        ref = ref.masked_fill(ref != 0, -100.0).masked_fill(ref == 0, 0.0)
        assert torch.equal(layer.shift_mask(h, w, torch.device("cpu")), ref)


def test_batched_preprocess_equals_official_per_image_transform():
    """Normalised in place into the padded batch: each image equals the official transform
    (BGR, /255, ×255, −mean, ÷std) and the padding is zeros, for images of assorted sizes."""
    import numpy as np

    model = build_model("glip_tiny_test")
    sizes = [(100, 130), (120, 96), (128, 128)]
    images = [
        np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8) for i, (h, w) in enumerate(sizes)
    ]
    batch, got_sizes, _ = model.preprocess(images, None, None)
    assert got_sizes == sizes and batch.shape == (3, 3, 128, 160)  # padded to multiples of 32
    for i, (im, (h, w)) in enumerate(zip(images, sizes, strict=True)):
        x = torch.from_numpy(im).permute(2, 0, 1)[[2, 1, 0]].float() / 255.0 * 255.0
        want = (x - model.pixel_mean[0]) / model.pixel_std[0]
        assert torch.equal(batch[i, :, :h, :w], want)
        padded = batch[i].clone()
        padded[:, :h, :w] = 0
        assert not padded.any()


@pytest.mark.parametrize("resize", [False, True])
def test_bgr_buffers_seen_as_rgb_preprocess_like_rgb_copies(resize):
    """A bgr8 camera image reaches the engine as an RGB view of its BGR buffer (reversed channel stride; also
    from bgra8 and from rows with step padding). Preprocessing reads the buffer itself instead of copying the
    view: bitwise the same batch as from a contiguous RGB copy, resized (PIL) or not, and the buffer is not
    modified."""
    import numpy as np

    model = build_model("glip_tiny_test")
    rng = np.random.default_rng(7)
    bgr = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    bgra = np.concatenate([bgr, rng.integers(0, 256, (90, 120, 1), dtype=np.uint8)], axis=2)
    padded_rows = np.zeros((90, 120 * 3 + 5), np.uint8)
    padded_rows[:, : 120 * 3] = bgr.reshape(90, -1)
    views = [
        bgr[:, :, ::-1],  # bgr8
        bgra[:, :, 2::-1],  # bgra8
        padded_rows[:, : 120 * 3].reshape(90, 120, 3)[:, :, ::-1],  # bgr8 with step > width * 3
    ]
    before = [bgr.copy(), bgra.copy(), padded_rows.copy()]
    size = (200, 333) if resize else (None, None)
    want, want_sizes, _ = model.preprocess([np.ascontiguousarray(bgr[:, :, ::-1])] * 3, *size)
    got, got_sizes, _ = model.preprocess(views, *size)
    assert got_sizes == want_sizes and torch.equal(got, want)
    for buf, copy in zip((bgr, bgra, padded_rows), before, strict=True):
        assert np.array_equal(buf, copy)


def test_swin_shift_masks_are_kept_per_shape_and_serve_training():
    """The shifted-window masks are built once per frame size (not per frame) and, kept from an
    inference-mode call, still serve a training step of the same shape."""
    from glip_ros.model import constants

    constants.clear_shape_constants()
    model = build_model("glip_tiny_test")
    x = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        first = model.encode_image(x)
        n = len(constants._CACHE)
        again = model.encode_image(x)
    assert n > 0 and len(constants._CACHE) == n
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    constants.clear_shape_constants()
    with torch.inference_mode():
        fresh = model.encode_image(x)
    assert all(torch.equal(a, b) for a, b in zip(first, fresh, strict=True))
    sum(f.square().sum() for f in model.encode_image(x)).backward()  # cache filled under inference mode
    assert model.backbone.body.layers[0].blocks[0].attn.qkv.weight.grad is not None


def test_auto_deform_impl_gathers_only_in_a_graph_compiled_for_a_cpu(monkeypatch):
    """ "auto" (the default) runs the sampled form eagerly and the gathered one while traced for a CPU or
    under the CPU's autocast (where the gather measured faster; eagerly in fp32 it is the slower); both give
    the same values."""
    from glip_ros.model import dyhead

    conv = dyhead.ModulatedDeformConv(4, 5, 1)
    assert conv.impl == "auto"
    calls: list[str] = []
    for name in ("deform_conv2d_sampled", "deform_conv2d_gathered"):
        real = getattr(dyhead, name)
        monkeypatch.setattr(
            dyhead, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    x, offset, mask = torch.randn(1, 4, 6, 7), torch.randn(1, 18, 6, 7), torch.rand(1, 9, 6, 7)
    with torch.no_grad():
        eager = conv(x, offset, mask)
        monkeypatch.setattr(dyhead, "_is_compiling", lambda: True)
        traced = conv(x, offset, mask)
        monkeypatch.setattr(dyhead, "_is_compiling", lambda: False)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 head on a CPU: gathered, eagerly too
            low = conv(x, offset, mask)
    assert calls == ["deform_conv2d_sampled", "deform_conv2d_gathered", "deform_conv2d_gathered"]
    assert _rel(traced, eager) < 1e-5
    assert 0 < _rel(low.float(), eager) < 3e-2
    with pytest.raises(ValueError, match="deform impl"):
        dyhead.set_deform_impl(conv, "fast")


def test_auto_deform_impl_picks_the_indexed_gather_only_in_a_graph_compiled_for_a_gpu():
    """The GPU choices cannot run here; the rule that makes them can (a CUDA device never reaches a forward
    on this machine)."""
    from glip_ros.model.dyhead import auto_deform_impl

    assert auto_deform_impl("cuda", compiling=True, autocast=True) == "index"
    assert auto_deform_impl("cuda", compiling=True, autocast=False) == "index"
    assert auto_deform_impl("cuda", compiling=False, autocast=True) == "sample"
    assert auto_deform_impl("cpu", compiling=True, autocast=False) == "gather"
    assert auto_deform_impl("cpu", compiling=False, autocast=True) == "gather"
    assert auto_deform_impl("cpu", compiling=False, autocast=False) == "sample"


@pytest.mark.parametrize("b", [1, 2])
def test_channels_first_copies_exactly(b):
    """The fusion's output back to channels-first levels: the CPU's per-image 2-D transposed copy is the
    same tensor as the generic one, with and without gradients."""
    from glip_ros.model.fusion import channels_first

    x = torch.randn(b, 37, 24)
    want = x.transpose(1, 2).contiguous()
    with torch.no_grad():
        got = channels_first(x)
    assert got.is_contiguous() and torch.equal(got, want)
    xg = x.clone().requires_grad_(True)
    channels_first(xg).sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))


def test_kept_anchors_follow_the_cell_anchors_a_checkpoint_loads():
    """Anchors are kept per frame size, per model: a second model whose (loaded) cell anchors differ gets
    its own, and loading new cell anchors in place drops the kept ones."""
    from glip_ros.model.head import AnchorGenerator

    feats = [torch.zeros(1, 4, 6, 8), torch.zeros(1, 4, 3, 4)]
    a, b = AnchorGenerator((32, 64), (8, 16)), AnchorGenerator((32, 64), (8, 16))
    first = a(feats)
    assert all(x is y for x, y in zip(first, a(feats), strict=True))  # kept
    shifted = {k: v + 1.0 for k, v in b.state_dict().items()}
    b.load_state_dict(shifted)  # in place, as a checkpoint load
    for x, y in zip(first, b(feats), strict=True):
        assert torch.equal(y, x + 1.0)
    a.load_state_dict(shifted)
    for x, y in zip(first, a(feats), strict=True):
        assert torch.equal(y, x + 1.0)


@pytest.mark.parametrize("autocast", [False, True])
def test_gathered_dcn_keeps_its_reordered_weight_for_inference_only_and_follows_the_weight(autocast):
    """The gathered form's (tap, channel)-ordered weight is kept between inference calls, gives what the
    unkept one gives, is made again when the weight is loaded in place (as a checkpoint, or the engine's
    kept bf16 copy refreshed), and is not used where gradients are needed (training gets the gradient)."""
    from glip_ros.model import dyhead

    torch.manual_seed(6)
    conv = dyhead.ModulatedDeformConv(8, 6, 1)
    dyhead.set_deform_impl(conv, "gather")
    x, offset, mask = torch.randn(1, 8, 7, 9), torch.randn(1, 18, 7, 9), torch.rand(1, 9, 7, 9)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        first = conv(x, offset, mask)
        kept = conv._kept_gathered_weight
        assert kept is not None and torch.equal(kept[1], conv.weight.permute(0, 2, 3, 1).reshape(6, -1))
        again = conv(x, offset, mask)
        assert conv._kept_gathered_weight is kept and torch.equal(first, again)
        conv.load_state_dict(
            {"weight": torch.randn_like(conv.weight), "bias": conv.bias.detach()}
        )  # in place
        fresh = dyhead.ModulatedDeformConv(8, 6, 1)
        dyhead.set_deform_impl(fresh, "gather")
        fresh.load_state_dict(conv.state_dict())
        assert torch.equal(conv(x, offset, mask), fresh(x, offset, mask))
    conv.zero_grad()
    conv(x, offset, mask).square().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_head_runs_under_half_precision_autocast(dtype):
    """The fusion's -9e15 text mask overflowed fp16 (masked_fill raised on every frame with fp16 + head
    auto); it stays fp32 there. Autocast on the CPU takes the same branch as on a GPU."""
    from glip_ros.model.language import TextFeatures

    torch.manual_seed(6)
    model = build_model("glip_tiny_test").eval()
    head, lang = model.rpn.head, model.config.language
    sizes = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]
    feats = [torch.randn(1, model.config.fpn_channels, h, w) for h, w in sizes]
    hidden = torch.randn(1, 6, lang.hidden_size)
    masks = torch.tensor([[1, 1, 1, 1, 0, 0]])
    text = TextFeatures(hidden=hidden, embedded=hidden, masks=masks)
    with torch.no_grad():
        ref = head.run_tower(feats, text)[0]
        with torch.autocast("cpu", dtype=dtype):
            low = head.run_tower(feats, text)[0]
    for a, b in zip(low, ref, strict=True):
        assert torch.isfinite(a).all()
        assert _rel(a.float(), b) < 5e-2


def test_sampled_deform_conv_trains_under_autocast():
    """With gradients on, the sampled form's cast-while-modulating product (an out= product, which autograd
    refuses) is not taken: a training step under autocast differentiates through it."""
    torch.manual_seed(7)
    x = torch.randn(2, 16, 12, 10, requires_grad=True)
    offset, mask = torch.randn(2, 18, 12, 10), torch.rand(2, 9, 12, 10)
    weight, bias = (torch.randn(8, 16, 3, 3) * 0.1).requires_grad_(), torch.randn(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_conv2d_sampled(x, offset, mask, weight, bias, 1)
    out.float().sum().backward()
    assert x.grad is not None and weight.grad is not None and torch.isfinite(x.grad).all()


def test_dropping_the_shape_constants_is_announced():
    """CUDA graphs read kept constants by address: cuda_graphs.GraphCache drops its graphs when the
    process-wide cache drops them (a new generation), here checked without a GPU."""
    from glip_ros.model import constants

    gen = constants.generation()
    constants.clear_shape_constants()
    assert constants.generation() == gen + 1
    cpu = torch.device("cpu")
    for i in range(constants._MAX + 1):  # the cache clears itself when full
        constants.shape_constant(("test_generation", i), cpu, lambda: torch.zeros(1))
    assert constants.generation() == gen + 2
