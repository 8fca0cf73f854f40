"""The Dice conventions of ``training.losses``, against values worked out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from training.losses import (
    dice_bce_loss,
    dice_loss,
    per_slice_dice_loss,
    slice_bce_loss,
    slice_logits,
    soft_dice_loss,
)


def _two_lesions() -> tuple[torch.Tensor, torch.Tensor]:
    """Slice 0: a 1-pixel bleed, missed. Slice 1: a 3-pixel bleed, found exactly."""
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, 0, 0] = 1
    target[1, 0, 2, 0:3] = 1
    prob = torch.zeros_like(target)
    prob[1, 0, 2, 0:3] = 1
    return prob, target


def test_per_slice_weights_a_small_bleed_like_a_large_one() -> None:
    prob, target = _two_lesions()
    # Slice 0: (2*0 + 1) / (0 + 1 + 1) = 0.5; slice 1: (2*3 + 1) / (3 + 3 + 1) = 1 -> loss 1 - 0.75.
    assert float(per_slice_dice_loss(prob, target)) == pytest.approx(0.25)
    # The batch convention: (2*3 + 1) / (3 + 4 + 1) = 7/8 -> loss 0.125; the missed pixel barely counts.
    assert float(soft_dice_loss(prob, target)) == pytest.approx(0.125)


def test_per_slice_leaves_negative_slices_to_bce() -> None:
    prob, target = _two_lesions()
    neg_prob = torch.full((1, 1, 4, 4), 0.5)
    prob3, target3 = torch.cat([prob, neg_prob]), torch.cat([target, torch.zeros(1, 1, 4, 4)])
    assert float(per_slice_dice_loss(prob3, target3)) == pytest.approx(0.25)
    # The batch convention counts the negative slice's 8 pixels of false-positive mass: 1 - 7/16.
    assert float(soft_dice_loss(prob3, target3)) == pytest.approx(1 - 7 / 16)


def test_mixed_counts_the_negative_slice_at_half_weight() -> None:
    prob, target = _two_lesions()
    neg_prob = torch.full((1, 1, 4, 4), 0.5)
    prob3, target3 = torch.cat([prob, neg_prob]), torch.cat([target, torch.zeros(1, 1, 4, 4)])
    # Half the per-slice loss (0.25, blind to the negative slice) plus half the batch loss (1 - 7/16).
    assert float(dice_loss(prob3, target3, "mixed")) == pytest.approx(0.5 * 0.25 + 0.5 * (1 - 7 / 16))
    # Without the negative slice it lies between the two conventions: 0.5 * 0.25 + 0.5 * 0.125.
    assert float(dice_loss(prob, target, "mixed")) == pytest.approx(0.1875)


def test_per_slice_without_positive_slices_is_the_batch_loss() -> None:
    prob, target = torch.full((2, 1, 4, 4), 0.25), torch.zeros(2, 1, 4, 4)
    # 1 - 1 / (8 + 0 + 1)
    assert float(per_slice_dice_loss(prob, target)) == pytest.approx(1 - 1 / 9)
    assert float(per_slice_dice_loss(prob, target)) == float(soft_dice_loss(prob, target))


def test_dice_modes_and_their_gradient() -> None:
    prob, target = _two_lesions()
    logits = torch.zeros_like(prob, requires_grad=True)
    dice_bce_loss(logits, target, dice="per_slice").backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    # The missed 1-pixel bleed pulls harder under per-slice Dice than under batch Dice.
    g_slice = logits.grad[0, 0, 0, 0].item()
    logits.grad = None
    dice_bce_loss(logits, target, dice="batch").backward()
    assert logits.grad is not None
    assert g_slice < logits.grad[0, 0, 0, 0].item() < 0
    assert float(dice_loss(prob, target, "batch")) == float(soft_dice_loss(prob, target))
    with pytest.raises(ValueError, match="dice mode"):
        dice_loss(prob, target, "sample")


def test_a_bad_dice_mode_is_refused_when_the_config_is_read() -> None:
    from training.config import StepConfig, WeightConfig

    step = {"iterations": 1, "lr": 1e-3, "warmup": 0, "batch": 2, "eval_every": 1}
    assert StepConfig.model_validate(step).dice == "batch"
    assert StepConfig.model_validate({**step, "dice": "per_slice"}).dice == "per_slice"
    with pytest.raises(ValidationError, match="per_slice"):
        StepConfig.model_validate({**step, "dice": "per-slice"})
    weight = {"hidden": 4, "opening": 3, "iterations": 1, "batch": 2, "lr": 1e-3, "eval_every": 1}
    weight |= {"negatives_per_positive": 1, "slice_bce": 0.5}
    with pytest.raises(ValidationError, match="mixed"):
        WeightConfig.model_validate({**weight, "dice": "dice"})


def test_slice_logit_is_the_mean_of_the_top_k_pixels() -> None:
    logits = torch.full((2, 1, 8, 8), -5.0)
    logits[0, 0, 2, 3] = 4.0
    logits[0, 0, 5, 5] = 2.0
    got = slice_logits(logits, top_k=3)
    assert torch.allclose(got, torch.tensor([(4.0 + 2.0 - 5.0) / 3.0, -5.0]))


def test_slice_bce_punishes_one_confident_focus_on_a_normal_slice() -> None:
    """The pixel-mean BCE barely notices a 3x3 focus; the slice term sees it like a wrong slice label."""
    clean = torch.full((1, 1, 64, 64), -6.0)
    focus = clean.clone()
    focus[0, 0, 10:13, 10:13] = 6.0
    empty = torch.zeros_like(clean)
    bce = F.binary_cross_entropy_with_logits
    pixel = bce(focus, empty) - bce(clean, empty)
    slice_term = slice_bce_loss(focus, empty) - slice_bce_loss(clean, empty)
    assert pixel < 0.02
    assert slice_term > 5.0


def test_slice_bce_labels_a_slice_positive_by_its_mask_and_reaches_its_top_pixels() -> None:
    logits = torch.zeros((1, 1, 16, 16), requires_grad=True)
    target = torch.zeros((1, 1, 16, 16))
    target[0, 0, 4, 4] = 1.0
    loss = slice_bce_loss(logits, target, top_k=4)
    loss.backward()
    assert logits.grad is not None
    assert int((logits.grad != 0).sum()) == 4
    assert float(logits.grad.sum()) < 0  # raising the top pixels lowers the loss of a positive slice
