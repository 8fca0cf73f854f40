"""Training step order and seeds (``training.selections.step_plan``); an auxiliary step end to end."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest
import torch

from tests.support.train_run import tiny_config, train_args
from training.cli import main
from training.networks import load_checkpoint
from training.selections import step_plan
from training.train import criterion, weight_selection_key

ROOT = Path(__file__).resolve().parents[2]


def _cfg(**steps: dict) -> dict:
    return {"steps": steps}


def test_five_selections_and_weight_keep_their_seeds_beside_an_auxiliary_step() -> None:
    plain = step_plan(_cfg(all={}, sdh={"init": "all"}))
    assert plain == {"all": 0, "subtype": 1, "sdh": 2, "sah": 3, "small": 4, "weight": 5}
    aux = step_plan(_cfg(transfer={"selection": "all", "seed_offset": 0}, all={}, sdh={"init": "transfer"}))
    assert list(aux) == ["transfer", "all", "subtype", "sdh", "sah", "small", "weight"]
    assert aux["transfer"] == 0 and {k: v for k, v in aux.items() if k != "transfer"} == plain


def test_auxiliary_steps_default_to_fresh_seed_offsets_in_file_order() -> None:
    plan = step_plan(_cfg(a={"selection": "all"}, b={"selection": "sdh"}, all={}))
    assert list(plan)[:2] == ["a", "b"] and (plan["a"], plan["b"]) == (6, 7)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ({"transfer": {}, "all": {}}, "needs selection"),
        ({"transfer": {"selection": "ivh"}, "all": {}}, "needs selection"),
        ({"all": {"selection": "sdh"}}, "its own selection"),
        ({"all": {"init": "sdh"}, "sdh": {}}, "does not train before it"),
        ({"all": {"init": "nowhere"}}, "does not train before it"),
        ({"weight": {"selection": "all"}, "all": {}}, "[weight]"),
    ],
)
def test_bad_step_configs_are_refused(steps: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        step_plan({"steps": steps})


def test_committed_default_config_fine_tunes_from_the_mixed_dice_all_model() -> None:
    with (ROOT / "training" / "configs" / "default.toml").open("rb") as fh:
        cfg = tomllib.load(fh)
    # no auxiliary step: the five and the weight model in order, with their fixed seed offsets
    assert step_plan(cfg) == {"all": 0, "subtype": 1, "sdh": 2, "sah": 3, "small": 4, "weight": 5}
    steps = cfg["steps"]
    fine_tunes = ("subtype", "sdh", "sah", "small")
    assert all(steps[k]["init"] == "all" for k in fine_tunes) and "init" not in steps["all"]
    assert steps["all"]["dice"] == "mixed"
    assert all(steps[k]["dice"] == "per_slice" for k in fine_tunes) and cfg["weight"]["dice"] == "per_slice"


def test_committed_configs_select_nothing_on_patients() -> None:
    # Honest figures: no validation patients (so no checkpoint is chosen on anyone) and a CV protocol.
    for name in ("default", "gpu"):
        with (ROOT / "training" / "configs" / f"{name}.toml").open("rb") as fh:
            cfg = tomllib.load(fh)
        assert cfg["run"]["val_patients"] == 0 and "split_file" not in cfg["run"], name
        assert cfg["cv"]["folds"] >= 2 and cfg["decision"]["score"] in ("select", "lesion", "max_slice"), name


CONFIG = tiny_config(
    """
[steps.base]
selection = "all"
seed_offset = 0
iterations = 3
lr = 1e-3
warmup = 1
batch = 4
eval_every = 3

[steps.all]
iterations = 3
lr = 1e-3
warmup = 1
batch = 4
eval_every = 3

[steps.sdh]
init = "base"
iterations = 2
lr = 3e-4
warmup = 1
batch = 4
eval_every = 2
"""
)


def test_auxiliary_step_trains_first_and_shares_the_draws_of_its_seed_offset(tmp_path, caplog) -> None:
    """``base`` has ``all``'s settings and seed offset, so it must come out bit-identical to ``all``."""
    caplog.set_level(logging.INFO)
    args, run_dir = train_args(tmp_path, CONFIG, steps="base,all")
    assert main(args) == 0
    base, plain = load_checkpoint(run_dir / "base" / "best.pt"), load_checkpoint(run_dir / "all" / "best.pt")
    for (name, a), (_, b) in zip(base.state_dict().items(), plain.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    log = (run_dir / "train.log").read_text()
    assert log.index("step base finished") < log.index("step all finished")


def test_train_cli_refuses_a_bad_plan_before_touching_the_run_dir(tmp_path, caplog) -> None:
    caplog.set_level(logging.ERROR)
    bad = CONFIG.replace('init = "base"', 'init = "small"')
    args, run_dir = train_args(tmp_path, bad, steps="all")
    assert main(args) == 2
    assert "does not train before it" in caplog.text and not run_dir.exists()
    args, run_dir = train_args(tmp_path, CONFIG, steps="all,ivh")
    assert main(args) == 2
    assert "ivh" in caplog.text and not run_dir.exists()


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
