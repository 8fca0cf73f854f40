"""The steps of a training config: the committed recipes, what the validation refuses, checkpoint order."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest

from tests.support.train_run import tiny_config, train_args
from training.cli import main
from training.config import ConfigError, load_config, parse_config
from training.train import criterion, weight_selection_key

ROOT = Path(__file__).resolve().parents[3]


def test_committed_default_config_fine_tunes_from_the_mixed_dice_all_model() -> None:
    cfg = load_config(ROOT / "training" / "configs" / "default.toml")
    steps = cfg.steps
    fine_tunes = ("subtype", "sdh", "sah", "small")
    assert list(steps) == ["all", *fine_tunes]
    assert all(steps[k].init == "all" for k in fine_tunes) and steps["all"].init is None
    assert steps["all"].dice == "mixed"
    assert all(steps[k].dice == "per_slice" for k in fine_tunes) and cfg.weight.dice == "per_slice"


def test_committed_configs_select_nothing_on_patients() -> None:
    # Honest figures: no validation patients (so no checkpoint is chosen on anyone) and a CV protocol.
    for name in ("default", "gpu"):
        cfg = load_config(ROOT / "training" / "configs" / f"{name}.toml")
        assert cfg.run.val_patients == 0 and cfg.run.split_path is None, name
        assert cfg.cv.folds >= 2 and cfg.decision.score in ("select", "lesion", "max_slice"), name


_STEP = {"iterations": 1, "lr": 1e-3, "warmup": 0, "batch": 2, "eval_every": 1}


def _with_steps(**steps: dict) -> dict:
    with (ROOT / "training" / "configs" / "smoke.toml").open("rb") as fh:
        cfg = tomllib.load(fh)
    cfg["steps"] = {name: {**_STEP, **table} for name, table in steps.items()}
    return cfg


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ({"transfer": {}, "all": {}}, "unknown step 'transfer'"),
        ({"weight": {}, "all": {}}, "[weight], not [steps.weight]"),
        ({"all": {"selection": "sdh"}}, "[steps.all] selection: unknown key"),
        ({"all": {"init": "sdh"}, "sdh": {}}, "[steps.all] init = 'sdh': that step does not train before it"),
        ({"sdh": {"init": "nowhere"}}, "init = 'nowhere': that step does not train before it"),
        ({"small": {"init": "small"}}, "init = 'small': that step does not train before it"),
    ],
)
def test_bad_step_configs_are_refused(steps: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^x\.toml: .*" + message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(_with_steps(**steps), "x.toml")


def test_a_step_may_start_from_any_step_before_it_even_one_this_config_leaves_out() -> None:
    # ``--steps sdh`` on a run folder whose ``all`` was trained before: init names a step, not a table
    cfg = parse_config(_with_steps(sdh={"init": "all"}, small={"init": "sah"}))
    assert cfg.steps["sdh"].init == "all" and cfg.steps["small"].init == "sah"


CONFIG = tiny_config(
    """
[steps.all]
iterations = 3
lr = 1e-3
warmup = 1
batch = 4
eval_every = 3

[steps.sdh]
init = "all"
iterations = 2
lr = 3e-4
warmup = 1
batch = 4
eval_every = 2
"""
)


@pytest.mark.parametrize(
    ("change", "steps", "message"),
    [
        (('init = "all"', 'init = "small"'), "all", "does not train before it"),
        (("batch = 4\neval_every = 2", "batch = 4\neval_evry = 2"), "all", "[steps.sdh] eval_evry: unknown"),
        (("", ""), "all,ivh", "--steps all,ivh"),
        (("", ""), "sah", "no [steps.sah]"),
    ],
)
def test_train_cli_refuses_a_bad_config_before_touching_the_run_dir(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: tuple[str, str], steps: str, message: str
) -> None:
    caplog.set_level(logging.ERROR)
    args, run_dir = train_args(tmp_path, CONFIG.replace(*change) if change[0] else CONFIG, steps=steps)
    assert main(args) == 2
    assert message in caplog.text and not run_dir.exists()


def _fig(slice_auc: float, case_auc: float, dice: float) -> dict[str, float]:
    return {"slice_auc": slice_auc, "case_auc": case_auc, "dice": dice}


def test_weight_checkpoint_below_the_best_member_loses_to_one_at_or_above_it() -> None:
    floor = 0.965  # best single base model's slice AUC
    mean = _fig(0.967, 0.946, 0.390)  # iteration 1: the plain mean
    leaning = _fig(0.957, 0.982, 0.403)  # higher sum, but detects worse than the best member
    assert criterion(leaning) > criterion(mean)
    assert weight_selection_key(mean, floor) > weight_selection_key(leaning, floor)
    # among checkpoints on the same side of the floor the plain sum decides
    assert weight_selection_key(_fig(0.970, 0.95, 0.40), floor) > weight_selection_key(mean, floor)
    assert weight_selection_key(leaning, floor) > weight_selection_key(_fig(0.950, 0.90, 0.40), floor)
    # the floor is inclusive, and a NaN slice AUC (one class only) never reaches it
    assert weight_selection_key(_fig(floor, 0.5, 0.1), floor)[0]
    assert not weight_selection_key(_fig(float("nan"), 1.0, 1.0), floor)[0]
