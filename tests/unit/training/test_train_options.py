"""Training against false positives: batch composition, edge negatives, scanner augmentation, no selection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.support.train_run import tiny_config, train_args
from training.augment import CHANNEL_WIDTHS_HU, AugmentConfig, scanner_augment
from training.cli import main
from training.networks import load_checkpoint
from training.selections import SliceTable
from training.train import Cache, Sampling, _batch, edge_slices, negative_weights


def _cache(brain_px: list[int], size: int = 8) -> Cache:
    """One patient; slice i has a stripped-brain square of ``brain_px[i]`` pixels; slices 0-1 positive."""
    n = len(brain_px)
    images = np.zeros((n, 4, size, size), dtype=np.float16)
    for i, px in enumerate(brain_px):
        images[i, 3].reshape(-1)[:px] = 0.5
    masks = np.zeros((n, 1, size, size), dtype=np.uint8)
    masks[:2, 0, 2:4, 2:4] = 1
    flat = masks.reshape(n, -1)
    table = SliceTable(np.array(["a"] * n), np.zeros((n, 5), int), flat.any(1), flat.sum(1), {})
    return Cache(images, masks, table)


def test_negative_fraction_sets_the_share_of_normal_slices() -> None:
    cache = _cache([40] * 10)
    pos, neg = np.array([0, 1]), np.arange(2, 10)
    _, _, idx = _batch(cache, pos, neg, 16, torch.Generator().manual_seed(0), negative_fraction=0.625)
    assert np.isin(idx[:6], pos).all() and np.isin(idx[6:], neg).all()  # 6 positives, 10 negatives
    _, _, half = _batch(cache, pos, neg, 16, torch.Generator().manual_seed(0))
    assert np.isin(half[:8], pos).all() and np.isin(half[8:], neg).all()


def test_edge_slices_are_those_with_little_brain() -> None:
    cache = _cache([64, 60, 64, 20, 31, 32, 64])
    assert edge_slices(cache).tolist() == [False, False, False, True, True, False, False]


def test_edge_negatives_are_drawn_as_often_as_their_weight_says() -> None:
    cache = _cache([64, 64, 64, 64, 10, 64, 64, 64, 64, 64])  # slice 4: a vertex slice
    neg = np.arange(2, 10)
    assert negative_weights(cache, neg, Sampling()) is None  # uniform draws stay those of the plain path
    weights = negative_weights(cache, neg, Sampling(edge_negative_weight=8.0))
    assert weights is not None and weights.tolist() == [1, 1, 8, 1, 1, 1, 1, 1]
    gen = torch.Generator().manual_seed(0)
    drawn = np.concatenate(
        [_batch(cache, np.array([0, 1]), neg, 16, gen, neg_weights=weights)[2][8:] for _ in range(200)]
    )
    share = float(np.mean(drawn == 4))
    assert 0.45 < share < 0.60  # expected 8 / 15; uniform would give 1 / 8


def _images(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 4, 16, 16, generator=gen)
    x[:, :, :2] = 0.0  # air and the stripped channel's background
    x[:, :, -2:] = 1.0  # saturated (bone on the brain windows)
    return x


def test_scanner_augmentation_is_off_by_default_and_touches_only_pixels_inside_a_window() -> None:
    x = _images()
    assert torch.equal(scanner_augment(x, AugmentConfig(), torch.Generator().manual_seed(1)), x)
    cfg = AugmentConfig(noise_hu=8.0, sharpen=0.6, hu_offset=5.0)
    out = scanner_augment(x, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :, :2], x[:, :, :2]) and torch.equal(out[:, :, -2:], x[:, :, -2:])
    assert not torch.equal(out[:, :, 2:-2], x[:, :, 2:-2])
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    again = scanner_augment(x, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # seeded: a resumed step sees the same batches


def test_an_hu_offset_moves_each_channel_by_offset_over_its_window_width() -> None:
    x = torch.full((1, 4, 8, 8), 0.5)
    out = scanner_augment(x, AugmentConfig(hu_offset=10.0), torch.Generator().manual_seed(3))
    shifts = (out - x)[0, :, 0, 0]
    offset_hu = float(shifts[0]) * CHANNEL_WIDTHS_HU[0]
    assert abs(offset_hu) > 0 and abs(offset_hu) <= 10.0
    for c, width in enumerate(CHANNEL_WIDTHS_HU):
        assert float(shifts[c]) * width == pytest.approx(offset_hu, rel=1e-3, abs=1e-3)


NO_VAL = tiny_config(
    """
[steps.all]
iterations = 3
lr = 1e-3
warmup = 1
batch = 4
eval_every = 2
negative_fraction = 0.75
edge_negative_weight = 2.0
augment = {{ flip = true, rotate_deg = 5.0, noise_hu = 4.0, sharpen = 0.5, hu_offset = 3.0 }}
"""
).replace("val_patients = 1", "val_patients = 0").replace('split_file = "{split}"\n', "")


def test_a_step_without_validation_patients_keeps_its_last_iteration(tmp_path) -> None:
    args, run_dir = train_args(tmp_path, NO_VAL)
    assert main(args) == 0
    split = json.loads((run_dir / "split.json").read_text())
    assert split["val"] == [] and split["train"] == ["049", "081"]
    done = json.loads((run_dir / "all" / "done.json").read_text())
    assert done["best"]["iteration"] == 3
    assert [h["iteration"] for h in done["history"]] == [2, 3]
    assert "slice_auc" not in done["history"][0]  # nothing was scored on patients
    best = torch.load(run_dir / "all" / "best.pt", weights_only=False)
    last = torch.load(run_dir / "all" / "last.pt", weights_only=False)
    assert best["iteration"] == 3 and last["iteration"] == 3
    for key, value in best["state_dict"].items():
        assert torch.equal(value, last["state_dict"][key])
    assert load_checkpoint(run_dir / "all" / "best.pt") is not None
