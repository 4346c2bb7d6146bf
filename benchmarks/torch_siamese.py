"""The changedet Siamese U-Net (diff/conc/distance heads, "shuffle" or "nearest" upsampling,
no norm) written in PyTorch, for benchmarks only, with its weights copied from a Flax model.

Layout: Flax is NHWC with conv kernels ``(kh, kw, in, out)``; PyTorch is NCHW with
``(out, in, kh, kw)``. Flax's depth-to-space takes channel ``(dy*2 + dx)*C + c``; PyTorch's
``pixel_shuffle`` takes ``c*4 + dy*2 + dx``: the 1x1 conv's output channels are permuted once
when copying, so the fast native ``pixel_shuffle`` gives the same result. The library never
imports this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def _conv(kernel: np.ndarray, bias: np.ndarray) -> nn.Conv2d:
    kh, kw, cin, cout = kernel.shape
    conv = nn.Conv2d(cin, cout, (kh, kw), padding=(kh // 2, kw // 2))
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
        conv.bias.copy_(torch.from_numpy(np.array(bias)))
    return conv


class ConvBlock(nn.Module):
    """3x3 convs + ReLU, from ``{"convs": {i: {"kernel", "bias"}}}``."""

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__()
        convs = params["convs"]
        self.convs = nn.ModuleList(_conv(convs[i]["kernel"], convs[i]["bias"])
                                   for i in sorted(convs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        return x


class Up(nn.Module):
    """2x upsampling: 1x1 conv + pixel shuffle ("shuffle"), or nearest + 3x3 conv."""

    def __init__(self, params: dict[str, Any], mode: str) -> None:
        super().__init__()
        self.mode = mode
        kernel, bias = np.asarray(params["conv"]["kernel"]), np.asarray(params["conv"]["bias"])
        if mode == "shuffle":  # Flax channel k = s*C + c (s = dy*2+dx) -> torch c*4 + s
            c = kernel.shape[-1] // 4
            order = np.array([s * c + ch for ch in range(c) for s in range(4)])
            kernel, bias = kernel[..., order], bias[order]
        self.conv = _conv(kernel, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "shuffle":
            return F.pixel_shuffle(self.conv(x), 2)
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TorchSiamese(nn.Module):
    """``forward(before, after)`` NCHW float -> ``(N, H, W)`` change score (sigmoid or distance),
    equal to ``SiameseNet.change_score`` of the Flax model the parameters come from."""

    def __init__(self, cfg: Any, state: dict[str, Any]) -> None:
        super().__init__()
        if cfg.norm != "none":
            raise ValueError("the PyTorch reference implements norm='none' only")
        self.cfg = cfg
        enc = state["encoder"]
        self.down = nn.ModuleList(ConvBlock(enc["down"][i]) for i in sorted(enc["down"]))
        self.up = nn.ModuleList(Up(enc["up"][i], cfg.upsample) for i in sorted(enc["up"]))
        self.dec = nn.ModuleList(ConvBlock(enc["dec"][i]) for i in sorted(enc["dec"]))
        self.out = _conv(enc["out"]["kernel"], enc["out"]["bias"])
        self.head_block = None
        self.logit = None
        if cfg.head != "distance":
            head = state["head"]
            if head.get("block"):
                self.head_block = ConvBlock(head["block"])
            self.logit = _conv(head["logit"]["kernel"], head["logit"]["bias"])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for level in reversed(range(len(self.up))):
            x = self.up[level](x)
            x = self.dec[level](torch.cat([skips[level], x], dim=1))
        return self.out(x)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        n = before.shape[0]
        e = self.embed(torch.cat([before, after], dim=0))
        e_b, e_a = e[:n], e[n:]
        if self.cfg.head == "distance":
            if self.cfg.distance != "euclidean":
                raise ValueError("the PyTorch reference implements the euclidean distance only")
            return torch.sqrt(torch.sum((e_b - e_a) ** 2, dim=1))
        if self.cfg.head == "diff":
            x = torch.abs(e_b - e_a)
        else:
            x = torch.cat([e_b + e_a, torch.abs(e_b - e_a)], dim=1)
        if self.head_block is not None:
            x = self.head_block(x)
        return torch.sigmoid(self.logit(x)[:, 0])


def from_flax(model: Any) -> TorchSiamese:
    """A :class:`TorchSiamese` (eval mode, f32) with the weights of a ``ChangeModel``."""
    return TorchSiamese(model.config, model.state).eval()
