"""Losses: soft Dice (the paper's) plus binary cross-entropy.

Dice alone gives vanishing gradients on the many slices with empty masks; the BCE term keeps those slices
teaching "no hemorrhage here". Dice is computed over the whole batch (not per sample), so negative slices
count through their false-positive mass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch; prob and target [B, 1, H, W] in [0, 1]."""
    inter = torch.sum(prob * target)
    return 1.0 - (2.0 * inter + eps) / (torch.sum(prob) + torch.sum(target) + eps)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0) -> torch.Tensor:
    """Soft Dice on sigmoid(logits) plus ``bce_weight`` x BCE on the logits."""
    prob = torch.sigmoid(logits)
    return soft_dice_loss(prob, target) + bce_weight * F.binary_cross_entropy_with_logits(logits, target)
