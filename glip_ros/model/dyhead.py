"""DyHead convolution block (``vldyhead.DyConv``): scale-aware attention over three pyramid levels with
modulated deformable convolutions (torchvision ``deform_conv2d``) and DyReLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from .constants import is_compiling as _is_compiling
from .constants import shape_constant

__all__ = ["DyConv", "DYReLU", "Conv3x3Norm", "auto_deform_impl", "deform_conv2d_sampled", "set_deform_impl"]


def h_sigmoid(x: torch.Tensor, reference: bool = False) -> torch.Tensor:
    """relu6(x + 3) / 6 as the official code writes it (three kernels), or ``F.hardsigmoid`` (x / 6 + 1/2
    clamped to [0, 1]: the same function up to float rounding, one kernel)."""
    return F.relu6(x + 3.0) / 6.0 if reference else F.hardsigmoid(x)


class HSigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.reference = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return h_sigmoid(x, self.reference)


# The fast path's deformable convolution ("auto", "sample", "gather" or "index", see ModulatedDeformConv):
# what new modules and GLIPModel.use_reference_ops(False) select. A process-wide setting for measurements
# (glip-bench).
DEFAULT_DEFORM_IMPL = "auto"
DEFORM_IMPLS = ("auto", "sample", "gather", "index", "torchvision")


class ModulatedDeformConv(nn.Module):
    """DCNv2 with maskrcnn_benchmark's parameter names (``weight``, ``bias``).

    ``impl``: "sample" (:func:`deform_conv2d_sampled`: the same function from stock PyTorch ops, which CUDA
    graphs can capture, whose matrix product can run in reduced precision under autocast, and which measured
    2.3x faster on CPU than torchvision's), "gather" (:func:`deform_conv2d_gathered`: the same function
    again, the modulation folded into one weighted gather), "auto" (default: :func:`auto_deform_impl`,
    "sample" eagerly, "index" in a graph compiled for a GPU, "gather" in one compiled for a CPU or eagerly
    under a CPU's autocast: GLIP-T's head at 480x640 on a 2-core CPU compiled 568-572 vs 835 ms sampled,
    eager in bf16 420-427 vs 455-465 ms; eager in fp32 the two are about even, 607-627 vs 615-625 ms),
    "index" (the gathered form with the gather written as indexing and a weighted sum, for a compiler to
    fuse into one kernel that writes the columns once; eagerly it writes four gathered copies of the
    columns, so it is for compiled graphs only) or "torchvision"
    (``torchvision.ops.deform_conv2d``, fp32 as the official op)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.impl = DEFAULT_DEFORM_IMPL
        self.weight = nn.Parameter(torch.empty(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.normal_(self.weight, 0, 0.01)
        self._kept_gathered_weight: tuple[tuple, torch.Tensor] | None = None  # see _gathered_weight

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ho = (x.shape[2] + 2 - 3) // self.stride + 1
        wo = (x.shape[3] + 2 - 3) // self.stride + 1
        if offset.shape[-2:] != (ho, wo):
            # Official quirk kept on purpose: the CUDA kernel does no shape check and reads the FIRST
            # 18·Ho·Wo offset (9·Ho·Wo mask) values of each image's buffer, computed on the previous (larger)
            # level, as if they had the output's shape. torchvision checks shapes, so reinterpret explicitly.
            offset = _reinterpret(offset, 18, ho, wo)
            mask = _reinterpret(mask, 9, ho, wo)
        dtype = x.dtype
        impl = self.impl
        if impl == "auto":
            device_type = x.device.type
            impl = auto_deform_impl(device_type, _is_compiling(), _autocast_dtype(device_type) is not None)
        if impl == "sample":
            out = deform_conv2d_sampled(
                x.float(), offset.float(), mask.float(), self.weight, self.bias, self.stride
            )
            return out.to(dtype)
        if impl in ("gather", "index"):
            out = deform_conv2d_gathered(
                x,
                offset.float(),
                mask.float(),
                self.weight,
                self.bias,
                self.stride,
                fused=impl == "index",
                product_weight=self._gathered_weight(),
            )
            return out.to(dtype)
        # The official op runs in fp32 (custom_fwd(cast_inputs=float32)).
        out = deform_conv2d(
            x.float(),
            offset.float(),
            self.weight.float(),
            self.bias.float(),
            stride=self.stride,
            padding=1,
            mask=mask.float(),
        )
        return out.to(dtype)

    def _gathered_weight(self) -> torch.Tensor:
        """The weight in the gathered columns' (tap, channel) order, [Cout, taps x Cin]: a copy of the weight
        (2.4 MB for GLIP-T, 78 per frame), so kept between inference calls. Made again when the weight
        changes in place (new version: a checkpoint load, or the engine's kept low-precision copy refreshed,
        kept_casts.py) or is another tensor; not kept in training, compiled graphs or a CUDA graph's
        capture (there it is made in the graph, whose replays then follow the weight)."""
        w = self.weight
        if torch.is_grad_enabled() or _is_compiling() or _capturing(w.device):
            return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)
        key = (w.device, w.dtype, w.data_ptr(), w._version)
        kept = self._kept_gathered_weight
        if kept is None or kept[0] != key:
            self._kept_gathered_weight = kept = (key, w.permute(0, 2, 3, 1).reshape(w.shape[0], -1))
        return kept[1]


def auto_deform_impl(device_type: str, compiling: bool, autocast: bool) -> str:
    """The form "auto" runs, by what measured fastest where (docs/BENCHMARKS.md).

    In a compiled graph: "index" on a GPU (inductor fuses its gather into one kernel per convolution; GLIP-T's
    compiled bf16 head at 800x1344 on an H100, 11.5 ms against 16.5 gathered and 16.7 sampled a few commits
    earlier) and "gather"
    elsewhere (on a 2-core CPU the indexed form was mixed against it, and both beat the sampled one).
    Eagerly: "gather" on a CPU under autocast (a bf16 head), else "sample" (one grid_sample, which the
    index form would replace by four gathers written out in full).
    """
    if compiling:
        return "index" if device_type == "cuda" else "gather"
    return "gather" if device_type == "cpu" and autocast else "sample"


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def deform_conv2d_sampled(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stride: int,
    padding: int = 1,
) -> torch.Tensor:
    """Modulated deformable 3x3 convolution as bilinear sampling (``grid_sample``) + one matrix product.

    Why not torchvision's op: its CUDA kernel launches on the legacy default stream (a CUDA graph capture
    fails on it) and runs its matrix product in fp32 only. The sampling here is the same bilinear rule
    (zero outside the image; torchvision returns 0 beyond one pixel out, where every corner is outside
    anyway) and stays in fp32 (sample positions need the precision); the product follows autocast.
    Offsets use torchvision's layout: channel 2k is the row shift of tap k, 2k+1 its column shift.
    """
    b, c, h, w = x.shape
    ho, wo = offset.shape[-2:]
    if b > 1 and x.device.type == "cpu" and not torch.is_grad_enabled() and not _is_compiling():
        # CPU inference: one image at a time, so its 9x-sized columns stay in cache between the sampling,
        # the modulation and the product. glip_tiny_test, 3 frames of 480x640 on this 2-core CPU, the head
        # of the 3 frames: 40-42 ms frame by frame; batched, 42 ms with the DCN batched, 33-40 ms without.
        return torch.cat(
            [
                deform_conv2d_sampled(
                    x[i : i + 1], offset[i : i + 1], mask[i : i + 1], weight, bias, stride, padding
                )
                for i in range(b)
            ]
        )
    kh, kw = weight.shape[-2:]
    ntap = kh * kw
    base, scale = _base_grid(h, w, ho, wo, stride, padding, kh, kw, x.device)
    # grid_sample wants (x, y) pairs; the offsets come as (row, column) per tap. (flip, not a list index:
    # indexing with a Python list uploads the index from host memory, which a CUDA graph cannot capture.)
    off = offset.view(b, ntap, 2, ho, wo).flip(2).permute(0, 1, 3, 4, 2)
    grid = torch.addcmul(base, off, scale).view(b, ntap * ho, wo, 2)
    cols = _sample_channel_groups(x, grid).view(b, c, ntap, ho, wo)
    low = _autocast_dtype(x.device.type)
    if low is not None and x.device.type == "cpu" and not torch.is_grad_enabled():
        # The product will run in the autocast type. On a CPU the one-pass form below (fp32 inputs, bf16
        # output) takes TensorIterator's per-element casting loop: 7.8 ms for GLIP-T's finest level at
        # 480x640, against 1.1 + 1.6 ms for a vectorised in-place multiply and a cast. Same values: both
        # round the fp32 product once.
        cols = cols.mul_(mask.view(b, 1, ntap, ho, wo)).to(low)
    elif low is not None and not torch.is_grad_enabled():
        # On a GPU, cast while applying the modulation (one pass, not two). Not with gradients: an out=
        # product cannot be differentiated (training under autocast takes the plain product below).
        masked = torch.empty(cols.shape, dtype=low, device=x.device)
        cols = torch.mul(cols, mask.view(b, 1, ntap, ho, wo), out=masked)
    elif not torch.is_grad_enabled():
        # In place: the columns are this function's own (grid_sample's output, which its backward does
        # not keep). On a CPU a fresh buffer is read into the caches before it is written (44 MB at
        # GLIP-T's finest level at 480x640).
        cols = cols.mul_(mask.view(b, 1, ntap, ho, wo))
    else:
        cols = cols * mask.view(b, 1, ntap, ho, wo)
    return _columns_product(
        weight.reshape(weight.shape[0], -1), cols.view(b, c * ntap, ho * wo), bias, ho, wo
    )


def _columns_product(
    w2d: torch.Tensor, cols: torch.Tensor, bias: torch.Tensor, ho: int, wo: int
) -> torch.Tensor:
    """[Cout, K] weight x [B, K, Ho*Wo] columns (a transposed view is fine) + bias -> [B, Cout, Ho, Wo]. The
    bias rides in the product (one pass over the output fewer than adding it afterwards)."""
    b = cols.shape[0]
    if b == 1:
        return torch.addmm(bias.view(-1, 1), w2d, cols[0]).view(1, -1, ho, wo)
    return torch.baddbmm(bias.view(1, -1, 1), w2d.expand(b, -1, -1), cols).view(b, -1, ho, wo)


def deform_conv2d_gathered(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stride: int,
    padding: int = 1,
    fused: bool = False,
    product_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Modulated deformable 3x3 convolution as one weighted gather (``embedding_bag``) + one matrix product.

    Why: in :func:`deform_conv2d_sampled` the columns (9 x C values per output location) are written by
    grid_sample, read and written again by the modulation, then read by the product; grid_sample's kernel
    also loops over the channels inside each output position. Here each column row is one "bag" of the
    four bilinear corners of a tap, weighted by corner weight x mask, read from the input in channels-last
    layout (a location's channels are contiguous): the columns are written once, already modulated, and
    the index arithmetic is over 9 x 4 values per location, not 9 x C. Pixel coordinates and the zero
    outside the image as the official kernel (``dmcn_im2col_bilinear``). The sampling runs in fp32, or in
    the autocast type when autocast is on: then the input, the corner weights and the columns are in that
    type (positions stay fp32), where the sampled form rounds only its modulated columns.

    ``fused``: the gather as indexing and a weighted sum over the corners (in fp32, rounded once) instead of
    ``embedding_bag``, which a compiler keeps as a call of its own: inductor fuses the indexing, the sum and
    the index arithmetic into one kernel that writes the columns once. Eagerly that form writes the four
    corners' values out first (4x the columns): for compiled graphs only. ``product_weight``: the weight
    as [Cout, taps x Cin] (tap-major), if the caller keeps one.
    """
    b, c, h, w = x.shape
    ho, wo = offset.shape[-2:]
    kh, kw = weight.shape[-2:]
    ntap = kh * kw
    low = _autocast_dtype(x.device.type)
    table_dtype = low if low is not None else torch.float32
    base, lo, hi, corners = _gather_constants(h, w, ho, wo, stride, padding, kh, kw, x.device)
    # The input in channels-last layout with a zero border (one row/column before, two after), and sample
    # positions clamped to [-1, size]: a corner outside the image reads a zero, and a sample at or beyond one
    # pixel out of the image is zero whatever its clamped position (its corners are all border), as the
    # official kernel's (h_im <= -1 || h_im >= height) rule; no masks to build.
    wp = w + 3
    table = _bordered_channels_last(x, table_dtype, opaque=fused)  # [b, h + 3, w + 3, c]
    # [b, Ho, Wo, taps, 2] sample positions (row, column) in input pixels
    pos = torch.clamp(base + offset.view(b, ntap, 2, ho, wo).permute(0, 3, 4, 1, 2), lo, hi)
    top = pos.floor()
    frac = pos - top
    # row-major index of the top-left corner in the bordered table (the +1 border shift is in ``corners``),
    # then the four corners; exact in fp32 below 2^24 table rows
    index = (torch.add(top[..., 1], top[..., 0], alpha=wp).unsqueeze(-1) + corners).long()
    # corner weights (1 - fy, fy) x (1 - fx, fx), times the mask
    near_far = torch.stack((1 - frac, frac), dim=-1)  # [b, Ho, Wo, taps, 2 (axis), 2 (near, far)]
    m = mask.view(b, ntap, ho, wo).permute(0, 2, 3, 1)
    weights = (near_far[..., 0, :, None] * m[..., None, None]) * near_far[..., 1, None, :]
    if b > 1:
        index = index + (torch.arange(b, device=x.device) * ((h + 3) * wp)).view(b, 1, 1, 1, 1)
    if fused:
        # Four row gathers summed term by term, not one [rows, 4, C] gather and a sum over its corner axis:
        # on a GPU inductor wrote that tensor out in fp32 (4x the columns, in one kernel) and summed it in a
        # second (GLIP-T at 800x1344 on an H100: 0.32 + 0.23 ms per finest-level convolution); written
        # as a sum of products there is no reduction and no 4-corner tensor to keep, one pointwise kernel.
        rows, corner_weights = table.reshape(-1, c), weights.view(-1, 4)
        index = index.view(-1, 4)
        cols = rows[index[:, 0]].float() * corner_weights[:, 0:1]
        for k in range(1, 4):
            cols = cols + rows[index[:, k]].float() * corner_weights[:, k : k + 1]
        cols = cols.to(table_dtype)
    else:
        cols = F.embedding_bag(
            index.view(-1, 4),
            table.view(-1, c),
            mode="sum",
            per_sample_weights=weights.view(-1, 4).to(table_dtype),
        )
    cols = cols.view(b, ho * wo, ntap * c)
    # the weight in the columns' (tap, channel) order; the columns' rows are the output locations
    w2d = product_weight
    if w2d is None:
        w2d = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], ntap * c)
    return _columns_product(w2d, cols.transpose(1, 2), bias, ho, wo)


def _bordered_channels_last_eager(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return F.pad(x.permute(0, 2, 3, 1).to(dtype), (0, 0, 1, 2, 1, 2))


def _bordered_channels_last(x: torch.Tensor, dtype: torch.dtype, opaque: bool = False) -> torch.Tensor:
    """[B, C, H, W] -> [B, H + 3, W + 3, C] in ``dtype``, zero border of one row/column before, two after.

    ``opaque``: when compiling, build it behind a custom operator. Why: inductor would otherwise fold the
    pad and the permute into the fused gather's own kernel and read every corner's channels from the
    channels-first input, C values H x W apart: 2.5x slower sampling on this CPU, and uncoalesced loads on
    a GPU. Behind the operator the table is written once, channels contiguous. (``embedding_bag``, a call
    of its own, gets a written table anyway; eagerly the same two operators run directly.)
    """
    if opaque and _TABLE_OP is not None and _is_compiling():
        return _TABLE_OP(x, dtype)
    return _bordered_channels_last_eager(x, dtype)


def _define_table_op():  # -> the custom operator, or None where torch has no torch.library.custom_op (< 2.4)
    if not hasattr(torch.library, "custom_op"):
        return None
    op = torch.library.custom_op("glip_ros::bordered_channels_last", mutates_args=())(
        _bordered_channels_last_eager
    )

    @op.register_fake
    def _(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.new_empty(b, h + 3, w + 3, c, dtype=dtype)

    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.input_dtype = inputs[0].dtype

    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN202
        return grad[:, 1:-2, 1:-2].permute(0, 3, 1, 2).to(ctx.input_dtype), None

    op.register_autograd(backward, setup_context=setup_context)
    return op


_TABLE_OP = _define_table_op()


def _gather_constants(
    h: int, w: int, ho: int, wo: int, stride: int, padding: int, kh: int, kw: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per shape (constants.py): the zero-offset sample positions [1, Ho, Wo, taps, 2] in pixels (row,
    column), the clamp bounds (-1, -1) and (h, w), and the four corners' index steps in the bordered table
    (top-left, top-right, bottom-left, bottom-right, with the border's shift)."""
    key = ("dcn_gather", str(device), h, w, ho, wo, stride, padding, kh, kw)

    def make() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        ky = torch.arange(kh, device=device, dtype=torch.float32).repeat_interleave(kw)
        kx = torch.arange(kw, device=device, dtype=torch.float32).repeat(kh)
        ys = torch.arange(ho, device=device, dtype=torch.float32) * stride - padding
        xs = torch.arange(wo, device=device, dtype=torch.float32) * stride - padding
        rows = (ys.view(ho, 1, 1) + ky.view(1, 1, -1)).expand(ho, wo, kh * kw)
        cols = (xs.view(1, wo, 1) + kx.view(1, 1, -1)).expand(ho, wo, kh * kw)
        base = torch.stack((rows, cols), dim=-1).unsqueeze(0)
        # filled on the device (no tensor from host data, which a CUDA graph capture cannot copy)
        lo = torch.full((2,), -1.0, device=device)
        hi = torch.empty(2, device=device)
        hi[0].fill_(float(h))
        hi[1].fill_(float(w))
        wp = w + 3
        corners = torch.arange(4, device=device, dtype=torch.float32)  # 0, 1, 2, 3 -> 0, 1, wp, wp + 1
        corners = corners.remainder(2) + corners.div(2, rounding_mode="floor") * wp + (wp + 1)
        return base, lo, hi, corners

    return shape_constant(key, device, make)


# Channels per grid_sample batch entry in the sampled DCN (see _sample_channel_groups; 0: no split).
SAMPLE_GROUP_CHANNELS = 16


def _sample_channel_groups(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``grid_sample(x, grid)`` with the channels split into batch entries of SAMPLE_GROUP_CHANNELS.

    Why: grid_sample's kernels (CUDA and CPU) spread the work over batch entries and output positions and
    loop over the channels inside; a DCN samples 256 channels at 9 taps of few positions (693 threads at
    GLIP-T's coarsest level on a GPU, one CPU thread per image). The split gives each group of channels its
    own share of the work, reusing the one grid (a view for one image). Every output value is computed
    exactly as before (bitwise equal, tested). On this 2-core CPU GLIP-T's head at 480x640 went from
    1.03-1.10 s to 0.82-0.91 s; on a GPU it is not measured yet.
    """
    b, c, h, w = x.shape
    k = SAMPLE_GROUP_CHANNELS
    g = c // k if k > 0 and c % k == 0 else 1
    if g <= 1:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    grouped = grid.unsqueeze(1).expand(b, g, *grid.shape[1:]).flatten(0, 1)
    out = F.grid_sample(
        x.reshape(b * g, c // g, h, w), grouped, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.view(b, c, *out.shape[2:])


def _base_grid(
    h: int, w: int, ho: int, wo: int, stride: int, padding: int, kh: int, kw: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampling grid with zero offsets, [1, taps, Ho, Wo, 2] in grid_sample's units, and the factor that
    turns pixel offsets into those units; a grid is then ``base + offset * scale``. Kept per shape
    (constants.py): building it takes a dozen small operators, 78 convolutions per GLIP-T frame."""
    key = ("dcn_grid", str(device), h, w, ho, wo, stride, padding, kh, kw)
    return shape_constant(key, device, lambda: _make_base_grid(h, w, ho, wo, stride, padding, kh, kw, device))


def _make_base_grid(
    h: int, w: int, ho: int, wo: int, stride: int, padding: int, kh: int, kw: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    ky = torch.arange(kh, device=device, dtype=torch.float32).repeat_interleave(kw).view(-1, 1, 1)
    kx = torch.arange(kw, device=device, dtype=torch.float32).repeat(kh).view(-1, 1, 1)
    ys = (torch.arange(ho, device=device, dtype=torch.float32) * stride - padding).view(1, ho, 1)
    xs = (torch.arange(wo, device=device, dtype=torch.float32) * stride - padding).view(1, 1, wo)
    # grid_sample's align_corners=False pixel convention: pixel i sits at (2i + 1) / size - 1.
    gx = ((2 * (xs + kx) + 1) / w - 1).expand(kh * kw, ho, wo)
    gy = ((2 * (ys + ky) + 1) / h - 1).expand(kh * kw, ho, wo)
    base = torch.stack((gx, gy), dim=-1).unsqueeze(0)
    # Filled on the device (no tensor from host data, which a CUDA graph capture cannot copy).
    scale = torch.full((2,), 2.0 / w, device=device, dtype=torch.float32)
    scale[1:].fill_(2.0 / h)
    return base, scale


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    try:  # torch >= 2.4 takes the device type
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):
        pass
    return None


def set_deform_impl(module: nn.Module, impl: str) -> None:
    """Select the deformable-convolution implementation of every DCN in ``module``."""
    if impl not in DEFORM_IMPLS:
        raise ValueError(f"deform impl must be one of {', '.join(DEFORM_IMPLS)}, got {impl!r}")
    for m in module.modules():
        if isinstance(m, ModulatedDeformConv):
            m.impl = impl


def _reinterpret(t: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    b = t.shape[0]
    flat = t.reshape(b, -1)
    if flat.shape[1] < c * h * w:
        raise RuntimeError(f"offset buffer too small for reinterpretation: {tuple(t.shape)} -> ({c},{h},{w})")
    return flat[:, : c * h * w].reshape(b, c, h, w)


class Conv3x3Norm(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, deformable: bool, gn_groups: int):
        super().__init__()
        self.deformable = deformable
        if deformable:
            self.conv: nn.Module = ModulatedDeformConv(cin, cout, stride)
        else:
            self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
            nn.init.normal_(self.conv.weight, 0, 0.01)
            nn.init.zeros_(self.conv.bias)
        self.bn = nn.GroupNorm(gn_groups, cout)

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.conv(x, offset, mask) if self.deformable else self.conv(x)
        return self.bn(x)


class DYReLU(nn.Module):
    """Dynamic ReLU (K2, with bias, no spatial branch): max(x·a1 + b1, x·a2 + b2), coefficients from
    GAP(x)."""

    def __init__(self, inp: int, oup: int, reduction: int = 4):
        super().__init__()
        self.oup = oup
        self.lambda_a = 2.0
        self.fc = nn.Sequential(
            nn.Linear(inp, inp // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(inp // reduction, oup * 4),
            HSigmoid(),
        )
        # The fc output y holds [a1 | b1 | a2 | b2]; the coefficients are one affine map of it, derived from
        # the official expressions: a1 = (y - 0.5) * lambda_a + 1, b1 = y - 0.5, a2 = (y - 0.5) * lambda_a,
        # b2 = y - 0.5 (with lambda_a = 2: 2y, y - 0.5, 2y - 1, y - 0.5). Not in the state dict.
        one, lam = torch.ones(oup), self.lambda_a
        scale, shift = (
            torch.cat((lam * one, one, lam * one, one)),
            torch.cat(((1 - 0.5 * lam) * one, -0.5 * one, -0.5 * lam * one, -0.5 * one)),
        )
        self.register_buffer("coef_scale", scale, persistent=False)
        self.register_buffer("coef_shift", shift, persistent=False)
        self.reference = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = self.fc(F.adaptive_avg_pool2d(x, 1).view(b, c))
        if self.reference:  # the official operation order
            y = y.view(b, self.oup * 4, 1, 1)
            a1, b1, a2, b2 = torch.split(y, self.oup, dim=1)
            a1 = (a1 - 0.5) * self.lambda_a + 1.0
            a2 = (a2 - 0.5) * self.lambda_a + 0.0
            b1 = b1 - 0.5 + 0.0
            b2 = b2 - 0.5 + 0.0
            return torch.max(x * a1 + b1, x * a2 + b2)
        # (y - 0.5) * 2 + 1 = 2y etc. (lambda_a = 2): the same coefficients up to float rounding, in one
        # pass over the small coefficient tensor; then three passes over x instead of five.
        coef = torch.addcmul(self.coef_shift, y, self.coef_scale).view(b, 4, self.oup, 1, 1)
        a1, b1, a2, b2 = coef.unbind(1)
        return torch.maximum(torch.addcmul(b1, x, a1), torch.addcmul(b2, x, a2))


class DyConv(nn.Module):
    def __init__(self, channels: int, gn_groups: int, use_deform: bool, use_dyrelu: bool, use_dyfuse: bool):
        super().__init__()
        self.DyConv = nn.ModuleList(
            [
                Conv3x3Norm(channels, channels, 1, use_deform, gn_groups),  # applied to level l+1 (upsampled)
                Conv3x3Norm(channels, channels, 1, use_deform, gn_groups),  # level l
                Conv3x3Norm(channels, channels, 2, use_deform, gn_groups),  # level l-1, stride 2
            ]
        )
        if use_dyfuse:
            self.AttnConv = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, 1, 1), nn.ReLU(inplace=True)
            )
            nn.init.normal_(self.AttnConv[1].weight, 0, 0.01)
            nn.init.zeros_(self.AttnConv[1].bias)
        else:
            self.AttnConv = None
        self.relu = DYReLU(channels, channels) if use_dyrelu else nn.ReLU()
        self.reference = False  # the official operation order (GLIPModel.use_reference_ops)
        self.offset = nn.Conv2d(channels, 27, 3, padding=1) if use_deform else None

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for level, feature in enumerate(feats):
            args = {}
            if self.offset is not None:
                om = self.offset(feature)
                args = {"offset": om[:, :18], "mask": om[:, 18:].sigmoid()}
            temp = [self.DyConv[1](feature, **args)]
            if level > 0:
                temp.append(self.DyConv[2](feats[level - 1], **args))
            if level < len(feats) - 1:
                up = self.DyConv[0](feats[level + 1], **args)
                # F.upsample_bilinear == interpolate(bilinear, align_corners=True)
                temp.append(F.interpolate(up, size=feature.shape[-2:], mode="bilinear", align_corners=True))
            out.append(self._mean(temp))
        return [self.relu(x) for x in out]

    def _attention(self, t: torch.Tensor) -> torch.Tensor:
        """AttnConv (pool, 1x1 convolution to one channel, ReLU): [B, 1, 1, 1]. Off the official order, the
        1x1 convolution of the pooled [B, C, 1, 1] is the same dot product as a matrix product: under the
        CPU's autocast oneDNN's convolution took 61 us for it, the product 7 us (78 per GLIP-T frame)."""
        if self.reference:
            return self.AttnConv(t)
        conv = self.AttnConv[1]
        pooled = F.adaptive_avg_pool2d(t, 1).flatten(1)
        return F.relu(F.linear(pooled, conv.weight.flatten(1), conv.bias)).view(-1, 1, 1, 1)

    def _mean(self, temp: list[torch.Tensor]) -> torch.Tensor:
        """Scale-aware attention: the mean of the (up to) three convolutions, each weighted by a per-image
        scalar. Official: stack, multiply, mean; here a weighted sum without the stacked copy (len(temp) + 1
        passes over a level instead of 3 * len(temp) + 1), the same value up to float rounding."""
        if self.AttnConv is None:
            if self.reference:
                return torch.mean(torch.stack(temp), dim=0)
            acc = temp[0].clone() if len(temp) == 1 else temp[0] + temp[1]
            for t in temp[2:]:
                acc = acc.add_(t)
            return acc.div_(len(temp))
        attn = h_sigmoid(torch.stack([self._attention(t) for t in temp]), self.reference)
        if self.reference:
            return torch.mean(torch.stack(temp) * attn, dim=0)
        acc = temp[0] * attn[0]
        for t, a in zip(temp[1:], attn[1:], strict=True):
            acc = acc.addcmul_(t, a)
        return acc.div_(len(temp))
