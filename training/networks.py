"""Networks: the 2D Inception U-Net (each base model) and the WeightModel that fuses five maps.

Checkpoints (``runs/<run>/<step>/best.pt``) are dicts ``{"kind": "unet"|"weight", "hparams": {...},
"state_dict": {...}, ...}``; :func:`load_checkpoint` rebuilds the network from one, so the exporter needs
nothing but the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ich.spec import IN_CHANNELS, MODEL_KEYS


def morphological_opening(prob: torch.Tensor, kernel: int) -> torch.Tensor:
    """Grey-level opening (erosion = -maxpool(-x), then dilation = maxpool) of [B, 1, H, W] maps.

    Removes bright structures narrower than ``kernel`` pixels (stray pixels near bone) so that a maximum
    over the map is not set off by them. Built from max pooling only, so it exports to ONNX unchanged.
    """
    if kernel <= 1:
        return prob
    pad = kernel // 2
    eroded = -F.max_pool2d(-prob, kernel_size=kernel, stride=1, padding=pad)
    return F.max_pool2d(eroded, kernel_size=kernel, stride=1, padding=pad)


def slice_probability(prob: torch.Tensor, kernel: int) -> torch.Tensor:
    """[B, 1, H, W] map -> [B, 1] slice probability: max over the opened map."""
    return torch.amax(morphological_opening(prob, kernel), dim=(2, 3))


def _rotation_grid(degrees: float, like: torch.Tensor) -> torch.Tensor:
    """Sampling grid [B, S, S, 2] that rotates [B, C, S, S] maps by ``degrees`` about the centre.

    Built from Python numbers and the (fixed) spatial size, so an ONNX export stores it as a constant and
    only the batch axis stays dynamic.
    """
    t = math.radians(degrees)
    theta = torch.tensor([[[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]]])
    size = [1, 1, int(like.shape[-2]), int(like.shape[-1])]
    grid = F.affine_grid(theta, size, align_corners=False).to(like.dtype)
    return grid.expand(like.shape[0], -1, -1, -1)


class ConvBNReLU(nn.Sequential):
    """3x3 (or kxk) convolution, batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, k: int = 3, dilation: int = 1) -> None:
        pad = dilation * (k // 2)
        super().__init__(
            nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Inception(nn.Module):
    """Inception module: 1x1, 3x3, 5x5 (two 3x3) and pool-projection branches, concatenated, fused by 1x1.

    Parallel receptive fields let one layer see both small bleeds and large hematomas.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        b = max(cout // 4, 4)
        self.b1 = ConvBNReLU(cin, b, k=1)
        self.b3 = nn.Sequential(ConvBNReLU(cin, b, k=1), ConvBNReLU(b, b))
        self.b5 = nn.Sequential(ConvBNReLU(cin, b, k=1), ConvBNReLU(b, b), ConvBNReLU(b, b))
        self.bp = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), ConvBNReLU(cin, b, k=1))
        self.fuse = ConvBNReLU(4 * b, cout, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1))


class InceptionUNet(nn.Module):
    """2D U-Net whose blocks are Inception modules; IMAGE [B, 4, S, S] -> PROB [B, 1, S, S] (sigmoid).

    Args:
        width: channels of the first level; level i has ``width * 2**i``.
        depth: number of downsamplings.
        in_channels: input channels (the four windows).
        n_subtypes: size of the optional subtype-classification head on the bottleneck (used only to
            pre-train the "subtype" model's encoder; not part of the exported graph).
        flip_tta: ``forward`` averages the map of the slice and the mirrored map of its left-right mirror
            image (test-time augmentation, part of the exported graph). A stray focus that the network sees
            in one orientation only drops to half its probability, while a bleed, seen both ways, keeps it.
            Training uses :meth:`logits`, without it.
        rotate_tta_deg: when > 0, ``forward`` also averages the (flip-averaged) maps of the slice rotated by
            plus and minus this angle, each rotated back (bilinear, zeros outside). Set at export time
            (``[export] rotate_tta_deg``): it triples the networks' work for every slice served.
    """

    def __init__(
        self,
        width: int = 16,
        depth: int = 4,
        in_channels: int = IN_CHANNELS,
        n_subtypes: int = 5,
        flip_tta: bool = False,
        rotate_tta_deg: float = 0.0,
    ):
        super().__init__()
        self.hparams: dict[str, Any] = {
            "width": width,
            "depth": depth,
            "in_channels": in_channels,
            "n_subtypes": n_subtypes,
            "flip_tta": flip_tta,
            "rotate_tta_deg": rotate_tta_deg,
        }
        self.flip_tta = flip_tta
        self.rotate_tta_deg = rotate_tta_deg
        chans = [width * 2**i for i in range(depth + 1)]
        self.stem = ConvBNReLU(in_channels, width)
        self.down = nn.ModuleList()
        self.down.append(Inception(width, chans[0]))
        for i in range(1, depth + 1):
            self.down.append(Inception(chans[i - 1], chans[i]))
        self.up = nn.ModuleList()
        self.upconv = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.upconv.append(nn.ConvTranspose2d(chans[i], chans[i - 1], 2, stride=2))
            self.up.append(Inception(2 * chans[i - 1], chans[i - 1]))
        self.head = nn.Conv2d(chans[0], 1, 1)
        self.cls_head = nn.Linear(chans[depth], n_subtypes)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features at every level (last = bottleneck)."""
        feats = []
        h = self.stem(x)
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.max_pool2d(h, 2)
            h = block(h)
            feats.append(h)
        return feats

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Subtype logits [B, n_subtypes] from the pooled bottleneck (encoder pre-training)."""
        return self.cls_head(torch.amax(self.encode(x)[-1], dim=(2, 3)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits [B, 1, S, S]."""
        feats = self.encode(x)
        h = feats[-1]
        for j, (upc, block) in enumerate(zip(self.upconv, self.up, strict=True)):
            h = upc(h)
            h = block(torch.cat([h, feats[-2 - j]], dim=1))
        return self.head(h)

    def set_rotate_tta(self, degrees: float) -> None:
        """Turn the rotation test-time augmentation on (``degrees`` > 0) or off; kept in ``hparams``."""
        self.rotate_tta_deg = float(degrees)
        self.hparams["rotate_tta_deg"] = float(degrees)

    def _flip_averaged(self, x: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(self.logits(x))
        if not self.flip_tta:
            return prob
        mirrored = torch.flip(torch.sigmoid(self.logits(torch.flip(x, dims=[3]))), dims=[3])
        return 0.5 * (prob + mirrored)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prob = self._flip_averaged(x)
        if self.rotate_tta_deg <= 0:
            return prob
        total = prob
        for sign in (1.0, -1.0):
            there = _rotation_grid(sign * self.rotate_tta_deg, x)
            back = _rotation_grid(-sign * self.rotate_tta_deg, x)
            rotated = F.grid_sample(x, there, mode="bilinear", padding_mode="zeros", align_corners=False)
            total = total + F.grid_sample(
                self._flip_averaged(rotated), back, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        return total / 3.0


class WeightModel(nn.Module):
    """Per-slice weights for the five base maps, the fused map and the slice probability.

    forward(PROB_ALL, PROB_SUBTYPE, PROB_SDH, PROB_SAH, PROB_SMALL) -> (WEIGHTS [B, 5],
    FUSED [B, 1, S, S], SLICE_PROB [B, 1]). WEIGHTS = softmax of a small conv/pool/linear net over the
    stacked maps; FUSED = sum_i w_i * PROB_i; SLICE_PROB = max over the morphological opening of FUSED
    (``opening`` pixels), the one post-processing that evaluation and both engines share via the ONNX.
    The last linear layer starts at zero, so training starts from the plain average.
    """

    def __init__(self, hidden: int = 16, opening: int = 3) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = {"hidden": hidden, "opening": opening}
        n = len(MODEL_KEYS)
        self.features = nn.Sequential(
            nn.Conv2d(n, hidden, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(2 * hidden + n, n)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.opening = opening

    def forward(
        self,
        prob_all: torch.Tensor,
        prob_subtype: torch.Tensor,
        prob_sdh: torch.Tensor,
        prob_sah: torch.Tensor,
        prob_small: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        maps = torch.cat([prob_all, prob_subtype, prob_sdh, prob_sah, prob_small], dim=1)
        h = self.features(maps)
        pooled = torch.cat(
            [torch.mean(h, dim=(2, 3)), torch.amax(h, dim=(2, 3)), torch.amax(maps, dim=(2, 3))], dim=1
        )
        weights = torch.softmax(self.fc(pooled), dim=1)
        fused = torch.sum(maps * weights[:, :, None, None], dim=1, keepdim=True)
        return weights, fused, slice_probability(fused, self.opening)


def build(kind: str, hparams: dict[str, Any]) -> nn.Module:
    """Build an untrained network of ``kind`` ("unet" or "weight") from its hyper-parameters."""
    if kind == "unet":
        return InceptionUNet(**hparams)
    if kind == "weight":
        return WeightModel(**hparams)
    raise ValueError(f"unknown network kind {kind!r}")


def save_checkpoint(path: Path, kind: str, model: nn.Module, **extra: Any) -> None:
    """Write ``{"kind", "hparams", "state_dict", **extra}`` atomically (tmp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    hparams = dict(getattr(model, "hparams", {}))
    torch.save({"kind": kind, "hparams": hparams, "state_dict": model.state_dict(), **extra}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path | str) -> nn.Module:
    """Rebuild a network from ``best.pt`` (kind + hparams + state_dict), in eval mode, on CPU.

    This is what the exporter calls: ``load_checkpoint("runs/default/all/best.pt")`` gives an
    :class:`InceptionUNet`; ``.../weight/best.pt`` gives a :class:`WeightModel`.
    """
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=False)
    model = build(ckpt["kind"], ckpt["hparams"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model
