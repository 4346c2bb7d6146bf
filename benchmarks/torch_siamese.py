"""The changedet Siamese U-Net (msdiff/diff/conc/distance heads, "shuffle" or "nearest"
upsampling, no norm) written in PyTorch, for benchmarks only, with its weights copied from a
Flax model.

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
    with torch.no_grad():  # np.array copies: from_numpy needs a writable array
        conv.weight.copy_(torch.from_numpy(np.array(kernel.transpose(3, 2, 0, 1))))
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
    equal to ``SiameseNet.change_score`` of the Flax model the parameters come from.

    Parameter tree as in Flax: ``encoder.down`` always; ``encoder.up/dec/out`` (the U-Net
    decoder producing one embedding per date) for the distance/diff/conc heads, or
    ``decoder.up/dec`` (the :class:`DiffDecoder` of the per-level differences) for ``msdiff``;
    ``head.block`` (optional) and ``head.logit`` for every head but distance.
    """

    def __init__(self, cfg: Any, state: dict[str, Any]) -> None:
        super().__init__()
        if cfg.norm != "none":
            raise ValueError("the PyTorch reference implements norm='none' only")
        if cfg.head not in ("distance", "diff", "conc", "msdiff"):
            raise ValueError(f"unknown head {cfg.head!r}")
        self.cfg = cfg
        enc = state["encoder"]
        self.down = nn.ModuleList(ConvBlock(enc["down"][i]) for i in sorted(enc["down"]))
        # The U-Net decoder: the encoder's own (one embedding per date) or, for msdiff, the
        # DiffDecoder's (decodes the per-level differences of the two dates' pyramids).
        dec = state["decoder"] if cfg.head == "msdiff" else enc
        self.up = nn.ModuleList(Up(dec["up"][i], cfg.upsample) for i in sorted(dec["up"]))
        self.dec = nn.ModuleList(ConvBlock(dec["dec"][i]) for i in sorted(dec["dec"]))
        self.out = (None if cfg.head == "msdiff"
                    else _conv(enc["out"]["kernel"], enc["out"]["bias"]))
        self.head_block = None
        self.logit = None
        if cfg.head != "distance":
            head = state["head"]
            if head.get("block"):
                self.head_block = ConvBlock(head["block"])
            self.logit = _conv(head["logit"]["kernel"], head["logit"]["bias"])

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The down path's feature maps, finest first (``UNetEncoder.pyramid``)."""
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        return skips

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """From the deepest map up: upsample, then convolve ``[skips[level], upsampled]``."""
        x = skips[-1]
        for level in reversed(range(len(self.up))):
            x = self.up[level](x)
            x = self.dec[level](torch.cat([skips[level], x], dim=1))
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel embeddings (not the msdiff head, which has none)."""
        return self.out(self.decode(self.pyramid(x)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """``ChangeHead``: optional conv block, 1x1 logit, sigmoid -> ``(N, H, W)``."""
        if self.head_block is not None:
            x = self.head_block(x)
        return torch.sigmoid(self.logit(x)[:, 0])

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        n = before.shape[0]
        batch = torch.cat([before, after], dim=0)
        if self.cfg.head == "msdiff":
            diffs = [torch.abs(p[:n] - p[n:]) for p in self.pyramid(batch)]
            return self.head(self.decode(diffs))
        e = self.embed(batch)
        e_b, e_a = e[:n], e[n:]
        if self.cfg.head == "distance":
            if self.cfg.distance != "euclidean":
                raise ValueError("the PyTorch reference implements the euclidean distance only")
            return torch.sqrt(torch.sum((e_b - e_a) ** 2, dim=1))
        if self.cfg.head == "diff":
            return self.head(torch.abs(e_b - e_a))
        return self.head(torch.cat([e_b + e_a, torch.abs(e_b - e_a)], dim=1))


def from_flax(model: Any) -> TorchSiamese:
    """A :class:`TorchSiamese` (eval mode, f32) with the weights of a ``ChangeModel``."""
    return TorchSiamese(model.config, model.state).eval()
