"""Losses: soft Dice (the paper's) plus binary cross-entropy.

Dice alone gives vanishing gradients on the many slices with empty masks; the BCE term keeps those slices
teaching "no hemorrhage here". Three Dice conventions, chosen per step in the config (``dice = ...``):

- ``"batch"`` (default): Dice over the whole batch, so negative slices count through their false-positive
  mass, and a large bleed outweighs a small one in proportion to its pixels.
- ``"per_slice"``: the mean of each positive slice's own soft Dice. It is the evaluation's convention (Dice
  per slice with hemorrhage, averaged), so a 20-pixel bleed counts as much as a 2,000-pixel one; negative
  slices are left to the BCE term.
- ``"mixed"``: the mean of the two. Per-slice Dice alone segments better but detects worse (stray pixels on
  normal slices cost it nothing but BCE); the batch term puts their false-positive mass back into the Dice.

Both terms average over pixels, so a confident 20-pixel focus on a normal slice costs almost nothing, yet
the served slice probability is the maximum of the map and one such focus flags the head. The optional
slice term (:func:`slice_bce_loss`) scores each slice the way it is served, by its most confident pixels,
against "does this slice hold hemorrhage".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.config import DICE_MODES, DiceMode


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch; prob and target [B, 1, H, W] in [0, 1]."""
    inter = torch.sum(prob * target)
    return 1.0 - (2.0 * inter + eps) / (torch.sum(prob) + torch.sum(target) + eps)


def per_slice_dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - the mean soft Dice of the slices whose target is not empty; batch Dice if none is."""
    positive = torch.sum(target, dim=(1, 2, 3)) > 0
    if not bool(positive.any()):
        return soft_dice_loss(prob, target, eps)
    p, t = prob[positive], target[positive]
    inter = torch.sum(p * t, dim=(1, 2, 3))
    dice = (2.0 * inter + eps) / (torch.sum(p, dim=(1, 2, 3)) + torch.sum(t, dim=(1, 2, 3)) + eps)
    return 1.0 - dice.mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor, mode: DiceMode = "batch") -> torch.Tensor:
    """The Dice loss of the convention ``mode`` (see the module docstring)."""
    if mode == "batch":
        return soft_dice_loss(prob, target)
    if mode == "per_slice":
        return per_slice_dice_loss(prob, target)
    if mode == "mixed":
        return 0.5 * (soft_dice_loss(prob, target) + per_slice_dice_loss(prob, target))
    raise ValueError(f"dice mode {mode!r}: expected one of {DICE_MODES}")


def dice_bce_loss(
    logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0, dice: DiceMode = "batch"
) -> torch.Tensor:
    """Soft Dice (convention ``dice``) on sigmoid(logits) plus ``bce_weight`` x BCE on the logits."""
    prob = torch.sigmoid(logits)
    return dice_loss(prob, target, dice) + bce_weight * F.binary_cross_entropy_with_logits(logits, target)


def slice_logits(logits: torch.Tensor, top_k: int = 9) -> torch.Tensor:
    """[B, 1, H, W] logits -> [B]: the mean of each slice's ``top_k`` highest logits.

    A smooth stand-in for the served maximum (over a 3x3 opening, hence nine pixels): its gradient reaches
    the few pixels that decide the slice, where a plain maximum would move one pixel per step.
    """
    flat = logits.flatten(1)
    return torch.topk(flat, min(top_k, flat.shape[1]), dim=1).values.mean(dim=1)


def slice_bce_loss(logits: torch.Tensor, target: torch.Tensor, top_k: int = 9) -> torch.Tensor:
    """BCE between each slice's top-``top_k`` logit and its label (1 when its mask is not empty)."""
    labels = (target.flatten(1).amax(dim=1) > 0).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(slice_logits(logits, top_k), labels)
