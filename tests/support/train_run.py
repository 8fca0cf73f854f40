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
