"""Visual backbone: Swin-Det or ResNet body, then GLIP's FPN with P6/P7 (``fpn.py``, ``LastLevelP6P7``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import GLIPConfig
from .swin import SwinTransformer

__all__ = ["FPN", "ResNetBody", "Backbone"]


class LastLevelP6P7(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for m in (self.p6, self.p7):
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.constant_(m.bias, 0)
        self.use_p5 = in_channels == out_channels

    def forward(self, c5: torch.Tensor, p5: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(p5 if self.use_p5 else c5)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """P3–P5 from the last three body stages (official names ``fpn_inner2..4``/``fpn_layer2..4``), P6/P7
    on P5."""

    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        # Official in_channels_list is [0, C3, C4, C5]: index 1 (stride 4) is skipped, so names start at 2.
        self.names = []
        for idx, cin in enumerate(in_channels, start=2):
            inner = nn.Conv2d(cin, out_channels, 1)
            layer = nn.Conv2d(out_channels, out_channels, 3, padding=1)
            for m in (inner, layer):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)
            self.add_module(f"fpn_inner{idx}", inner)
            self.add_module(f"fpn_layer{idx}", layer)
            self.names.append(idx)
        self.top_blocks = LastLevelP6P7(out_channels, out_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """``feats``: the body outputs used (strides 8, 16, 32)."""
        last = getattr(self, f"fpn_inner{self.names[-1]}")(feats[-1])
        results = [getattr(self, f"fpn_layer{self.names[-1]}")(last)]
        for feat, idx in zip(feats[:-1][::-1], self.names[:-1][::-1], strict=False):
            top_down = F.interpolate(last, size=(int(feat.shape[-2]), int(feat.shape[-1])), mode="nearest")
            last = getattr(self, f"fpn_inner{idx}")(feat) + top_down
            results.insert(0, getattr(self, f"fpn_layer{idx}")(last))
        results.extend(self.top_blocks(feats[-1], results[-1]))
        return results


class ResNetBody(nn.Module):
    """torchvision ResNet stages C2–C5 (no classifier). The paper's ResNet option, small and CPU friendly."""

    def __init__(self, depth: int):
        super().__init__()
        import torchvision

        builders = {
            18: torchvision.models.resnet18,
            34: torchvision.models.resnet34,
            50: torchvision.models.resnet50,
            101: torchvision.models.resnet101,
        }
        if depth not in builders:
            raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(builders)}")
        net = builders[depth](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.out_channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


class Backbone(nn.Module):
    """``backbone.body`` + ``backbone.fpn`` (official key prefixes)."""

    def __init__(self, cfg: GLIPConfig):
        super().__init__()
        if cfg.backbone == "swin":
            self.body: nn.Module = SwinTransformer(cfg.swin)
        elif cfg.backbone == "resnet":
            self.body = ResNetBody(cfg.resnet.depth)
        else:
            raise ValueError(f"unknown backbone {cfg.backbone!r} (swin or resnet)")
        self.fpn = FPN(list(self.body.out_channels[1:]), cfg.fpn_channels)

    def forward(self, images: torch.Tensor, return_body: bool = False):
        body = self.body(images)
        fpn = self.fpn(body[1:])
        return (fpn, body) if return_body else fpn
