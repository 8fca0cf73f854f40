"""``training.seeds``: the numbers the shipped weights were drawn with, pinned against the formula."""

from __future__ import annotations

import pytest
import torch

from training.seeds import STEP_ORDER, batch_generator, batch_seed, step_seed, unit_seed

RUN_SEED = 20261201  # default.toml's [run].seed


def test_steps_keep_their_fixed_offsets_from_the_run_seed() -> None:
    assert STEP_ORDER == ("all", "subtype", "sdh", "sah", "small", "weight")
    assert [step_seed(RUN_SEED, s) for s in STEP_ORDER] == [RUN_SEED + i for i in range(6)]
    with pytest.raises(ValueError):
        step_seed(RUN_SEED, "transfer")


@pytest.mark.parametrize("iteration", [0, 1, 639, 7918])
def test_batch_seeds_are_the_formula_the_shipped_weights_were_trained_with(iteration: int) -> None:
    for step in STEP_ORDER:
        s = RUN_SEED + STEP_ORDER.index(step)
        assert batch_seed(step_seed(RUN_SEED, step), iteration) == s * 7919 + iteration
        assert batch_seed(s, iteration, "classify") == s * 7919 + 100_000 + iteration
        assert batch_seed(s, iteration, "weight") == s * 7919 + 200_000 + iteration
    assert batch_seed(RUN_SEED, 0) == 160_448_450_719  # written out once, so the formula cannot drift


def test_a_batch_generator_draws_what_a_generator_seeded_by_hand_draws() -> None:
    s = step_seed(RUN_SEED, "sdh")
    for phase, offset in (("segment", 0), ("classify", 100_000), ("weight", 200_000)):
        by_hand = torch.Generator().manual_seed(s * 7919 + offset + 5)
        draws = torch.randint(1000, (8,), generator=batch_generator(s, 5, phase))
        assert torch.equal(draws, torch.randint(1000, (8,), generator=by_hand)), phase


def test_the_documented_limit_a_step_past_7919_iterations_reuses_the_next_steps_seeds() -> None:
    """Why a SeedSequence derivation is wanted (docs/decisions.md): the streams overlap past the stride."""
    first, second = step_seed(RUN_SEED, "all"), step_seed(RUN_SEED, "subtype")
    assert len({batch_seed(s, it) for s in (first, second) for it in range(7919)}) == 2 * 7919
    assert batch_seed(first, 7919) == batch_seed(second, 0)


def test_baseline_units_share_a_seed_across_modes_and_differ_across_folds_and_architectures() -> None:
    assert unit_seed(20261220, 0, 0) == 20261220
    assert unit_seed(20261220, 2, 3) == 20261220 + 2003
    seeds = {unit_seed(20261220, fold, arch) for fold in range(4) for arch in range(4)}
    assert len(seeds) == 16
