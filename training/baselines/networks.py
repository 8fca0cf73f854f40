"""The paper's four slice classifiers on the four-channel input, each with its class-activation map.

Every network is ``features -> global average pooling -> one linear unit`` (the slice logit), so the
class-activation map of the last convolutional layer (Zhou et al. 2016) is exact: the linear unit applied
at each position of the last feature map, and the slice logit is that map's mean. The strong mode trains
this map (upsampled, through a sigmoid: :func:`saliency`) against the hemorrhage mask.

Where they come from: DenseNet121 is MONAI's (:class:`monai.networks.nets.DenseNet` with DenseNet121's
blocks). MONAI has no VGG, MobileNetV2 or Inception-ResNet; timm has all four but imports torchvision, which
does not load beside the pinned torch; so those three are written here from their papers, with ``same``
padding throughout (any input size divisible by 32, the paper's ``valid`` stem needs 75 px and more) and,
for VGG19, batch normalisation after each convolution (trained from scratch: no ImageNet weights can be
fetched, and a plain 19-layer VGG does not start learning in a few hundred iterations). ``width`` scales
every channel count (1.0: the published network) and ``blocks`` the repeats, for tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ich.spec import IN_CHANNELS

ARCHITECTURES: tuple[str, ...] = ("densenet121", "inception_resnet_v2", "mobilenet_v2", "vgg19")
#: Published repeats: DenseNet121's dense blocks, InceptionResNetV2's Inception-ResNet-A/B/C blocks.
DEFAULT_BLOCKS: dict[str, tuple[int, ...]] = {
    "densenet121": (6, 12, 24, 16),
    "inception_resnet_v2": (10, 20, 9),
    "mobilenet_v2": (1, 2, 3, 4, 3, 3, 1),
    "vgg19": (2, 2, 4, 4, 4),
}


class SliceClassifier(nn.Module):
    """``features`` [B, C, h, w] -> (slice logit [B], class-activation map [B, 1, h, w])."""

    def __init__(self, features: nn.Module, head: nn.Linear, hparams: dict[str, Any]) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.hparams = hparams

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """The linear unit at every position of the last feature map (its mean is the slice logit)."""
        weight = self.head.weight[:, :, None, None]
        return F.conv2d(self.features(x), weight, self.head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = self.cam(x)
        return cam.mean(dim=(2, 3))[:, 0], cam


def saliency(cam: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The map the strong mode trains: sigmoid of the CAM, bilinearly upsampled to the input ``size``."""
    up = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)
    return torch.sigmoid(up)


def normalised_cam(cam: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The usual CAM read-out, free of the logit's scale: ReLU, upsampled, divided by its slice maximum."""
    up = F.relu(F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False))
    top = up.flatten(1).amax(dim=1).clamp_min(1e-12)
    return up / top[:, None, None, None]


def _ch(n: int, width: float) -> int:
    return max(4, round(n * width))


def _conv_bn(
    cin: int, cout: int, k: int | tuple[int, int] = 3, stride: int = 1, act: bool = True
) -> nn.Sequential:
    """Convolution (``same`` padding), batch norm and, unless ``act`` is false, ReLU."""
    kh, kw = (k, k) if isinstance(k, int) else k
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=(kh // 2, kw // 2), bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------- DenseNet121
def densenet121(width: float = 1.0, blocks: Sequence[int] | None = None) -> tuple[nn.Module, nn.Linear]:
    """MONAI's DenseNet with DenseNet121's configuration (64 initial features, growth 32)."""
    from monai.networks.nets.densenet import DenseNet

    net = DenseNet(
        spatial_dims=2,
        in_channels=IN_CHANNELS,
        out_channels=1,
        init_features=_ch(64, width),
        growth_rate=_ch(32, width),
        block_config=tuple(blocks or DEFAULT_BLOCKS["densenet121"]),
    )
    # MONAI applies the ReLU after the last norm in its classification layers; it belongs to the features.
    head = net.class_layers.out
    assert isinstance(head, nn.Linear)
    return nn.Sequential(net.features, nn.ReLU(inplace=False)), head


# ------------------------------------------------------------------------------------------------- VGG19
def vgg19(width: float = 1.0, blocks: Sequence[int] | None = None) -> tuple[nn.Module, nn.Linear]:
    """VGG19 (configuration E of Simonyan and Zisserman 2015) with batch norm, up to its last convolution.

    The fifth block's max pooling is left out: the CAM is read from the last convolution (stride 16).
    """
    layers: list[nn.Module] = []
    cin = IN_CHANNELS
    repeats = tuple(blocks or DEFAULT_BLOCKS["vgg19"])
    for i, (n, channels) in enumerate(zip(repeats, (64, 128, 256, 512, 512), strict=True)):
        if i > 0:
            layers.append(nn.MaxPool2d(2))
        for _ in range(n):
            layers.append(_conv_bn(cin, _ch(channels, width)))
            cin = _ch(channels, width)
    return nn.Sequential(*layers), nn.Linear(cin, 1)


# ------------------------------------------------------------------------------------------ MobileNetV2
def _divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: to a multiple of 8, never more than 10% below ``value``."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depth-wise, linear 1x1 projection; residual at stride 1."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


#: (expansion t, channels c, stride s) of each stage, Sandler et al. 2018, table 2 (repeats n: blocks).
_MOBILENET_STAGES: tuple[tuple[int, int, int], ...] = (
    (1, 16, 1),
    (6, 24, 2),
    (6, 32, 2),
    (6, 64, 2),
    (6, 96, 1),
    (6, 160, 2),
    (6, 320, 1),
)


def mobilenet_v2(width: float = 1.0, blocks: Sequence[int] | None = None) -> tuple[nn.Module, nn.Linear]:
    """MobileNetV2 up to its last 1x1 convolution (1280 channels at width 1 and below)."""
    cin = _divisible(32 * width)
    layers: list[nn.Module] = [
        nn.Conv2d(IN_CHANNELS, cin, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU6(inplace=True),
    ]
    repeats = tuple(blocks or DEFAULT_BLOCKS["mobilenet_v2"])
    for (t, c, s), n in zip(_MOBILENET_STAGES, repeats, strict=True):
        cout = _divisible(c * width)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
            cin = cout
    last = _divisible(1280 * max(1.0, width))
    layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
    return nn.Sequential(*layers), nn.Linear(last, 1)


# ------------------------------------------------------------------------------------ InceptionResNetV2
class _Branches(nn.Module):
    """Parallel branches concatenated along the channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class _ResidualInception(nn.Module):
    """x + scale * 1x1(branches(x)), then ReLU (not after the network's last block)."""

    def __init__(
        self, branches: _Branches, inner: int, channels: int, scale: float, act: bool = True
    ) -> None:
        super().__init__()
        self.branches = branches
        self.up = nn.Conv2d(inner, channels, 1, bias=True)
        self.scale = scale
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x + self.scale * self.up(self.branches(x))
        return F.relu(out) if self.act else out


def _seq(cin: int, *steps: tuple[int, int | tuple[int, int], int]) -> nn.Sequential:
    """A chain of conv-BN-ReLU from ``cin``; each step is (out channels, kernel, stride)."""
    layers = []
    for cout, k, stride in steps:
        layers.append(_conv_bn(cin, cout, k, stride))
        cin = cout
    return nn.Sequential(*layers)


def _inception_resnet_stem(w: Callable[[int], int]) -> list[nn.Module]:
    """Inception-ResNet-v2's stem up to mixed_5b (its 320 channels at 1/8 of the input)."""
    return [
        _seq(IN_CHANNELS, (w(32), 3, 2), (w(32), 3, 1), (w(64), 3, 1)),
        nn.MaxPool2d(3, stride=2, padding=1),
        _seq(w(64), (w(80), 1, 1), (w(192), 3, 1)),
        nn.MaxPool2d(3, stride=2, padding=1),
        _Branches(  # mixed_5b
            _seq(w(192), (w(96), 1, 1)),
            _seq(w(192), (w(48), 1, 1), (w(64), 5, 1)),
            _seq(w(192), (w(64), 1, 1), (w(96), 3, 1), (w(96), 3, 1)),
            nn.Sequential(
                nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), _conv_bn(w(192), w(64), 1)
            ),
        ),
    ]


def inception_resnet_v2(
    width: float = 1.0, blocks: Sequence[int] | None = None
) -> tuple[nn.Module, nn.Linear]:
    """Inception-ResNet-v2 (Szegedy et al. 2017) in the layout Keras ships, up to its 1536-channel 1x1."""

    def w(n: int) -> int:
        return _ch(n, width)

    n35, n17, n8 = tuple(blocks or DEFAULT_BLOCKS["inception_resnet_v2"])
    layers: list[nn.Module] = _inception_resnet_stem(w)
    c35 = w(96) + w(64) + w(96) + w(64)
    for _ in range(n35):  # Inception-ResNet-A
        branches = _Branches(
            _seq(c35, (w(32), 1, 1)),
            _seq(c35, (w(32), 1, 1), (w(32), 3, 1)),
            _seq(c35, (w(32), 1, 1), (w(48), 3, 1), (w(64), 3, 1)),
        )
        layers.append(_ResidualInception(branches, w(32) + w(32) + w(64), c35, 0.17))
    layers.append(
        _Branches(  # mixed_6a (reduction A)
            _seq(c35, (w(384), 3, 2)),
            _seq(c35, (w(256), 1, 1), (w(256), 3, 1), (w(384), 3, 2)),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
    )
    c17 = w(384) + w(384) + c35
    for _ in range(n17):  # Inception-ResNet-B
        branches = _Branches(
            _seq(c17, (w(192), 1, 1)),
            _seq(c17, (w(128), 1, 1), (w(160), (1, 7), 1), (w(192), (7, 1), 1)),
        )
        layers.append(_ResidualInception(branches, 2 * w(192), c17, 0.1))
    layers.append(
        _Branches(  # mixed_7a (reduction B)
            _seq(c17, (w(256), 1, 1), (w(384), 3, 2)),
            _seq(c17, (w(256), 1, 1), (w(288), 3, 2)),
            _seq(c17, (w(256), 1, 1), (w(288), 3, 1), (w(320), 3, 2)),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
    )
    c8 = w(384) + w(288) + w(320) + c17
    for i in range(n8 + 1):  # Inception-ResNet-C; the last one unscaled and without ReLU, as published
        branches = _Branches(
            _seq(c8, (w(192), 1, 1)),
            _seq(c8, (w(192), 1, 1), (w(224), (1, 3), 1), (w(256), (3, 1), 1)),
        )
        last = i == n8
        layers.append(_ResidualInception(branches, w(192) + w(256), c8, 1.0 if last else 0.2, act=not last))
    layers.append(_conv_bn(c8, w(1536), 1))
    return nn.Sequential(*layers), nn.Linear(w(1536), 1)


_BUILDERS = {
    "densenet121": densenet121,
    "inception_resnet_v2": inception_resnet_v2,
    "mobilenet_v2": mobilenet_v2,
    "vgg19": vgg19,
}


def build_classifier(
    architecture: str, width: float = 1.0, blocks: Sequence[int] | None = None
) -> SliceClassifier:
    """One of :data:`ARCHITECTURES` on four channels; ``width`` and ``blocks`` shrink it (tests)."""
    if architecture not in _BUILDERS:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")
    features, head = _BUILDERS[architecture](width, blocks)
    hparams = {"architecture": architecture, "width": width, "blocks": list(blocks) if blocks else None}
    return SliceClassifier(features, head, hparams)
