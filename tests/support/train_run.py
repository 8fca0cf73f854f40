"""A tiny ``ich-model train`` invocation on the committed CT-ICH fixture, shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ct_ich"


def train_args(tmp_path: Path, config_template: str, steps: str = "all") -> tuple[list[str], Path]:
    """Write the split (val 081, train 049) and the config (``{split}`` filled in); return (argv, run dir)."""
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"val": ["081"], "train": ["049"]}))
    config = tmp_path / "tiny.toml"
    config.write_text(config_template.format(split=split.as_posix()))
    run_dir = tmp_path / "run"
    args = ["train", "--data", str(FIXTURE), "--config", str(config), "--run-dir", str(run_dir)]
    return [*args, "--steps", steps], run_dir


#: the body of a tiny ``[weight]`` table
TINY_WEIGHT = """hidden = 4
opening = 3
iterations = 2
batch = 4
lr = 1e-3
eval_every = 1
negatives_per_positive = 1
slice_bce = 0.5"""


def tiny_config(steps: str, *, seed: int = 3, network: str = "", weight: str = TINY_WEIGHT) -> str:
    """A config template for :func:`train_args`: 32 px, width 4, depth 2, one validation patient.

    ``steps`` holds the ``[steps.*]`` tables, ``network`` extra ``[network]`` keys, ``weight`` the body of
    ``[weight]``; literal braces in them must be doubled (the template is filled with ``str.format``).
    """
    return f"""
[run]
name = "tiny"
seed = {seed}
size = 32
threads = 1
val_patients = 1
split_file = "{{split}}"
eval_batch = 8

[network]
width = 4
depth = 2
{network}

{steps.strip()}

[weight]
{weight}
"""
