"""Batch augmentation in torch: flips, small rotations and scales, intensity jitter, lesion pasting, scanners.

The scanner part (``noise_hu``, ``sharpen``, ``hu_offset``) imitates what differs between CT scanners and
protocols, the false positives' main source on unseen heads: quantum noise, the reconstruction kernel's
sharpness (a soft kernel blurs, a bone kernel sharpens the inner table and makes bright rims), and a small
calibration offset of the HU scale. It works on the windowed channels through their windows
(:data:`ich.preprocess.WINDOWS`), so 5 HU of offset moves the 40 HU-wide stroke window twice as far as the
80 HU-wide brain window, as on a real scanner.

Every random draw comes from an explicit ``torch.Generator`` seeded per iteration, so a step resumed from a
checkpoint sees exactly the batches it would have seen without the interruption.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ich.preprocess import STRIPPED_WINDOW, WINDOWS
from training.config import AugmentConfig

#: Window width (HU) of each input channel, in channel order: the HU-to-channel scale of the scanner part.
CHANNEL_WIDTHS_HU: tuple[float, ...] = (*(w for _, w in WINDOWS), STRIPPED_WINDOW[1])


def paste_lesions(
    images: torch.Tensor,
    masks: torch.Tensor,
    donors_img: torch.Tensor,
    donors_mask: torch.Tensor,
    prob: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy donor lesion pixels (all channels, at the same position) into mask-free samples.

    Heads in CT-ICH are centred, so a lesion pasted at its own position lands inside a brain; the pasted
    slice becomes a positive of the selection's subtype (used for the rare SDH/SAH specialists).
    """
    if prob <= 0 or donors_img.shape[0] == 0:
        return images, masks
    images, masks = images.clone(), masks.clone()
    for i in range(images.shape[0]):
        if masks[i].sum() > 0 or float(torch.rand(1, generator=gen)) >= prob:
            continue
        j = int(torch.randint(donors_img.shape[0], (1,), generator=gen))
        m = donors_mask[j] > 0.5
        inside = images[i, 3:4] > 0  # only where the target slice has brain
        m = m & inside
        images[i] = torch.where(m, donors_img[j], images[i])
        masks[i] = m.float()
    return images, masks


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flip, rotation/scale (one affine grid for image and mask) and intensity jitter.

    Args:
        images: [B, 4, S, S] in [0, 1].
        masks: [B, 1, S, S] in {0, 1}.
    """
    b = images.shape[0]
    if cfg.flip:
        flip = torch.rand(b, generator=gen) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        masks = torch.where(flip[:, None, None, None], masks.flip(-1), masks)
    if cfg.rotate_deg > 0 or cfg.scale > 0:
        angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(cfg.rotate_deg)
        scale = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * cfg.scale
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        masks = (F.grid_sample(masks, grid, mode="bilinear", align_corners=False) > 0.5).float()
    if cfg.intensity > 0:
        gain = 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * cfg.intensity
        bias = (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * cfg.intensity
        images = torch.clamp(images * gain + bias * (images > 0), 0.0, 1.0)
    return images, masks


def scanner_augment(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Noise, kernel sharpness and HU offset as another scanner would give them (see the module docstring).

    Only pixels strictly inside a channel's window change (clipped pixels lie beyond the window in HU, and
    the stripped channel's zero background is not brain), so air stays air and the skull stays white.
    """
    if cfg.noise_hu <= 0 and cfg.sharpen <= 0 and cfg.hu_offset <= 0:
        return images
    b, c = images.shape[0], images.shape[1]
    widths = torch.tensor(CHANNEL_WIDTHS_HU[:c], dtype=images.dtype).view(1, c, 1, 1)
    inside = (images > 0) & (images < 1)
    out = images
    if cfg.sharpen > 0:
        amount = (torch.rand(b, 1, 1, 1, generator=gen) * 1.5 - 0.5) * cfg.sharpen
        blurred = F.avg_pool2d(out, 3, stride=1, padding=1, count_include_pad=False)
        out = out + amount * (out - blurred)
    if cfg.noise_hu > 0:
        sd = torch.rand(b, 1, 1, 1, generator=gen) * cfg.noise_hu
        field = torch.randn(b, 1, images.shape[2], images.shape[3], generator=gen) * sd
        out = out + field / widths
    if cfg.hu_offset > 0:
        offset = (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * cfg.hu_offset
        out = out + offset / widths
    return torch.where(inside, out.clamp(0.0, 1.0), images)
