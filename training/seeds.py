"""Where every random draw of a training run gets its seed.

A run has one seed (``[run].seed``). Each step derives its own from it (:func:`step_seed`): it seeds the
network's initial weights and, for the weight model, the subsample of normal slices. Each iteration of a
step draws its batch and its augmentation from a fresh ``torch.Generator`` seeded by :func:`batch_seed`,
so a step resumed from a checkpoint draws exactly the batches it would have drawn without the interruption.

The arithmetic is kept as it is because the shipped weights are reproduced from it: any other derivation
changes every draw. Its limit: the generator seeds of two steps of one run are ``step seed x 7919 +
phase + iteration`` and the step seeds differ by one, so they are distinct only while a phase runs fewer
than 7919 iterations (``ITERATION_STRIDE``); past that a step reuses the next step's first seeds.
``numpy.random.SeedSequence`` (spawning independent streams per step and phase) has no such limit; it
waits for the next shipped training (docs/decisions.md).
"""

from __future__ import annotations

from typing import Final, Literal

import torch

from ich.spec import MODEL_KEYS

#: The steps of a run in training order; a step's index is its offset from the run's seed.
STEP_ORDER: Final[tuple[str, ...]] = (*MODEL_KEYS, "weight")

#: Spacing of the generator seeds of consecutive step seeds.
ITERATION_STRIDE: Final[int] = 7919

Phase = Literal["segment", "classify", "weight"]
#: Offset of each phase's generator seeds: the segmentation iterations of a base model, the subtype
#: classifier's pre-training iterations of its encoder, the weight model's iterations.
PHASE_OFFSET: Final[dict[str, int]] = {"segment": 0, "classify": 100_000, "weight": 200_000}


def step_seed(run_seed: int, step: str) -> int:
    """The seed of one step: the run's seed plus the step's place in :data:`STEP_ORDER`.

    Fixed places, so training a subset of steps (``--steps``) draws what the whole run draws.
    """
    return run_seed + STEP_ORDER.index(step)


def batch_seed(seed: int, iteration: int, phase: Phase = "segment") -> int:
    """The generator seed of one iteration of a step whose seed is ``seed`` (:func:`step_seed`)."""
    return seed * ITERATION_STRIDE + PHASE_OFFSET[phase] + iteration


def batch_generator(seed: int, iteration: int, phase: Phase = "segment") -> torch.Generator:
    """A ``torch.Generator`` seeded with :func:`batch_seed` (what each iteration draws from)."""
    return torch.Generator().manual_seed(batch_seed(seed, iteration, phase))


def unit_seed(run_seed: int, fold: int, architecture_index: int) -> int:
    """The seed of a baselines unit: one per fold and architecture, shared by its modes (weak, strong),
    so that they start from the same weights, draw the same batches and differ by the loss alone."""
    return run_seed + 1000 * fold + architecture_index
