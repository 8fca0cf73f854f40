"""Hard-negative mining of ``ich-model train``: the pool, the batches, and a tiny step that mines."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from tests.support.train_run import TINY_WEIGHT, tiny_config, train_args
from training.cli import main
from training.networks import InceptionUNet
from training.selections import SliceTable
from training.train import Cache, _batch, hardest_negatives


class _BrightnessNet(InceptionUNet):
    """Logits = first channel minus 0.5: a slice scores by its brightest pixel."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] - 0.5


def _cache(n: int = 10, size: int = 8) -> Cache:
    rng = np.random.default_rng(0)
    images = (rng.random((n, 4, size, size)) * 0.4).astype(np.float16)
    images[3, 0, 2, 2] = 0.9  # three negatives carry one bright pixel, of different brightness
    images[5, 0, 4, 4] = 0.8
    images[8, 0, 1, 6] = 0.7
    masks = np.zeros((n, 1, size, size), dtype=np.uint8)
    masks[:2, 0, 2:4, 2:4] = 1
    flat = masks.reshape(n, -1)
    table = SliceTable(np.array(["a"] * n), np.zeros((n, 5), int), flat.any(1), flat.sum(1), {})
    return Cache(images, masks, table)


def test_hardest_negatives_are_the_highest_scoring_ones() -> None:
    cache = _cache()
    neg = np.arange(2, 10)
    pool, above = hardest_negatives(_BrightnessNet(width=4, depth=2), cache.images, neg, pool=2, batch=3)
    assert pool.tolist() == [3, 5]  # the two brightest, returned sorted
    assert above == 3  # three negatives have a pixel above 0.5 (logit above 0)


def test_batch_draws_the_asked_share_of_negatives_from_the_pool() -> None:
    cache = _cache()
    pos, neg, hard = np.array([0, 1]), np.arange(2, 10), np.array([8])
    _, _, plain = _batch(cache, pos, neg, 8, torch.Generator().manual_seed(1))
    _, _, mixed = _batch(cache, pos, neg, 8, torch.Generator().manual_seed(1), hard, 0.5)
    _, _, only = _batch(cache, pos, neg, 8, torch.Generator().manual_seed(1), hard, 1.0)
    assert set(plain[:4]) <= {0, 1} and set(plain[4:]) <= set(neg.tolist())
    assert mixed[6:].tolist() == [8, 8] and set(mixed[4:6]) <= set(neg.tolist())
    assert only[4:].tolist() == [8, 8, 8, 8]


CONFIG = tiny_config(
    """
[steps.all]
iterations = 4
lr = 1e-3
warmup = 1
batch = 4
eval_every = 2
hard_negatives = {{ start = 1, every = 2, pool = 3, fraction = 0.5 }}
""",
    seed=5,
    network="flip_tta = true",
    weight=TINY_WEIGHT.replace("opening = 3", "opening = 1"),
)


def test_a_step_mines_at_the_asked_iterations_and_keeps_the_pool(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    args, run_dir = train_args(tmp_path, CONFIG)
    assert main(args) == 0
    mined = [r.getMessage() for r in caplog.records if "hard negatives" in r.getMessage()]
    assert [m.split(":")[0] for m in mined] == ["step all it 1", "step all it 3"]
    last = torch.load(run_dir / "all" / "last.pt", weights_only=False)
    pool = last["hard_negatives"]
    assert isinstance(pool, np.ndarray) and 0 < len(pool) <= 3
    assert json.loads((run_dir / "all" / "done.json").read_text())["history"][-1]["iteration"] == 4
