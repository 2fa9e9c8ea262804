"""The assembled GLIP model (``GeneralizedVLRCNN`` with ``RPN_ONLY`` and the VL-DyHead).

The forward is split where the robot needs it split: ``encode_text`` (once per query, cached by the engine),
``encode_image`` (Swin + FPN, once per frame whatever the number of phrases or prompt chunks) and
``forward_head`` (fusion + DyHead + box/alignment outputs, per frame and prompt chunk).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .backbone import Backbone
from .config import GLIPConfig
from .head import RPN, BoxCoder, HeadOutputs
from .language import LanguageBackbone, TextFeatures

__all__ = ["GLIPModel", "resize_shape", "build_model"]


def resize_shape(h: int, w: int, min_size: int | None, max_size: int | None) -> tuple[int, int]:
    """maskrcnn_benchmark ``Resize.get_size`` (the official test transform): shorter side to ``min_size``,
    capped so the longer side is at most ``max_size``; ``min_size=None`` keeps the image as it is."""
    if min_size is None:
        return h, w
    size = float(min_size)
    if max_size is not None:
        mn, mx = float(min(w, h)), float(max(w, h))
        if mx / mn * size > max_size:
            size = int(round(max_size * mn / mx))
    size = int(size)
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


class GLIPModel(nn.Module):
    def __init__(self, config: GLIPConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.language_backbone = LanguageBackbone(config.language)
        self.rpn = RPN(config)
        self.box_coder = BoxCoder()
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    # -- text ------------------------------------------------------------------------------------------------
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        text = self.language_backbone(input_ids, attention_mask)
        tl = self.rpn.tunable_linear
        if tl is not None:
            # Prompt tuning ('language_prompt_v2'): a learned per-position offset on both text features.
            offset = tl.weight[: text.hidden.shape[1], :].unsqueeze(0)
            text = TextFeatures(
                hidden=text.hidden + offset, embedded=text.embedded + offset, masks=text.masks
            )
        return text

    def enable_prompt_tuning(self) -> nn.Linear:
        """Adds the zero-initialised ``rpn.tunable_linear`` of the official prompt-tuning mode."""
        if self.rpn.tunable_linear is None:
            d = self.config.language.hidden_size
            tl = nn.Linear(d, 1000, bias=False)
            nn.init.zeros_(tl.weight)
            self.rpn.tunable_linear = tl.to(self.rpn.head.bias_lang.device)
        return self.rpn.tunable_linear

    # -- image -----------------------------------------------------------------------------------------------
    def _normalize_into(self, out: torch.Tensor, image: torch.Tensor, bgr: bool = False) -> torch.Tensor:
        """[3,H,W] uint8 RGB (BGR with ``bgr``) -> the official input (BGR, ToTensor()/255 then ×255
        (TO_BGR255), Normalize), written into ``out`` (a view of the padded batch) in the official rounding
        sequence, in place: no full-size temporaries (on a CPU their allocations cost as much as the
        arithmetic)."""
        out.copy_(image if bgr else image.flip(-3))  # BGR, converted to float by the copy
        mean = self.pixel_mean.to(out.device).view(3, 1, 1)
        std = self.pixel_std.to(out.device).view(3, 1, 1)
        return out.div_(255.0).mul_(255.0).sub_(mean).div_(std)

    def preprocess(
        self,
        images: Sequence[np.ndarray],
        min_size: int | None = -1,
        max_size: int | None = -1,
        device: torch.device | None = None,
    ) -> tuple[torch.Tensor, list[tuple[int, int]], list[tuple[float, float]]]:
        """RGB uint8 HWC arrays -> (padded normalised batch, resized (h, w) per image, (sx, sy) per image).

        Resizing uses PIL bilinear as the official transform does (torchvision Resize on a PIL image);
        ``min_size=-1`` means the config's test size; ``None`` means no resize. Padding is zeros at the
        bottom/right of the normalised image up to a multiple of ``size_divisibility`` (``to_image_list``).

        An RGB array that is a channel-reversed view of a BGR buffer (how a bgr8 camera image reaches us,
        without a copy) is read through that buffer: the model wants BGR, so flipping it to RGB and back
        would be two copies for nothing (a 720p frame: 3.6 ms on these CPUs). PIL's resize treats the
        channels alike, so the values are bitwise the same.
        """
        from PIL import Image

        if min_size == -1:
            min_size = self.config.min_size
        if max_size == -1:
            max_size = self.config.max_size
        device = device or self.pixel_mean.device
        tensors, sizes, scales, bgr = [], [], [], []
        for img in images:
            bgr.append(img.ndim == 3 and img.shape[2] == 3 and img.strides[2] < 0)
            if bgr[-1]:
                img = img[:, :, ::-1]  # the BGR buffer behind the RGB view
            h, w = img.shape[:2]
            nh, nw = resize_shape(h, w, min_size, max_size)
            if (nh, nw) != (h, w):
                img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((nw, nh), Image.BILINEAR))
            if not (img.flags.writeable and img.flags.c_contiguous):
                img = np.array(img, order="C")  # one copy, writable and contiguous
            tensors.append(torch.from_numpy(img).to(device).permute(2, 0, 1))  # uint8 CHW
            sizes.append((nh, nw))
            scales.append((w / nw, h / nh))
        # Normalised straight into the padded batch (zeros only where there is padding).
        out = self._empty_batch(tensors, torch.float32)
        for i, t in enumerate(tensors):
            h, w = t.shape[1:]
            out[i, :, h:].zero_()  # padding at the bottom and right (empty slices when there is none)
            out[i, :, :h, w:].zero_()
            self._normalize_into(out[i, :, :h, :w], t, bgr[i])
        return out, sizes, scales

    def _empty_batch(self, tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        div = self.config.size_divisibility
        mh = max(t.shape[1] for t in tensors)
        mw = max(t.shape[2] for t in tensors)
        if div > 0:
            mh = int(math.ceil(mh / div) * div)
            mw = int(math.ceil(mw / div) * div)
        return torch.empty((len(tensors), 3, mh, mw), dtype=dtype, device=tensors[0].device)

    def encode_image(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(images)

    # -- head ------------------------------------------------------------------------------------------------
    def use_reference_ops(self, on: bool = True) -> GLIPModel:
        """``on``: the official operation order (fusion projections on the visual side, torchvision's
        deformable convolution, DyHead's stacked mean and DyReLU as written). Off (default): the factored
        fusion, the sampled deformable convolution and fewer passes in DyHead, the same functions up to
        float reassociation with fewer FLOPs and memory passes (see fusion.py, dyhead.py)."""
        from . import dyhead
        from .dyhead import DyConv, DYReLU, HSigmoid, set_deform_impl
        from .fusion import BiMultiHeadAttention

        for m in self.modules():
            if isinstance(m, BiMultiHeadAttention):
                m.factored = not on
            elif isinstance(m, (DyConv, DYReLU, HSigmoid)):
                m.reference = on
        set_deform_impl(self, "torchvision" if on else dyhead.DEFAULT_DEFORM_IMPL)
        return self

    def forward_head(self, features: list[torch.Tensor], text: TextFeatures) -> HeadOutputs:
        return self.rpn.head(features, text)

    def anchors(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.rpn.anchor_generator(features)

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> HeadOutputs:
        text = self.encode_text(input_ids, attention_mask)
        feats = self.encode_image(images)
        if text.hidden.shape[0] != images.shape[0]:
            text = text.repeat(images.shape[0])
        return self.forward_head(feats, text)


def build_model(spec="glip_t", bert_config=None) -> GLIPModel:
    """A preset name (``glip_t_a``, ``glip_t``, ``glip_l`` …), an official YAML file, a dict or a GLIPConfig.

    Weights are random (or the official init schemes); load weights with ``load_checkpoint``.
    """
    from .config import resolve_config

    model = GLIPModel(resolve_config(spec, bert_config=bert_config))
    return model.eval()
