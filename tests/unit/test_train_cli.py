"""``ich-model train`` end to end on the committed fixture with a tiny config: files, resume, split."""

from __future__ import annotations

import json
import logging

import torch

from tests.support.train_run import tiny_config, train_args
from training.cli import main
from training.networks import InceptionUNet, load_checkpoint

CONFIG = tiny_config(
    """
[steps.all]
iterations = 4
lr = 1e-3
warmup = 1
batch = 4
eval_every = 2
"""
)


def test_train_all_step_then_resume(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    args, run_dir = train_args(tmp_path, CONFIG)
    assert main(args) == 0
    done = json.loads((run_dir / "all" / "done.json").read_text())
    assert [h["iteration"] for h in done["history"]] == [2, 4]
    assert json.loads((run_dir / "split.json").read_text())["val"] == ["081"]
    model = load_checkpoint(run_dir / "all" / "best.pt")
    assert isinstance(model, InceptionUNet) and model.hparams["width"] == 4
    with torch.no_grad():
        assert model(torch.rand(1, 4, 32, 32)).shape == (1, 1, 32, 32)
    # a finished step is skipped on restart: its checkpoint is left untouched
    before = (run_dir / "all" / "best.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (run_dir / "all" / "best.pt").stat().st_mtime_ns == before
    assert "step all already done" in caplog.text
    assert "step all already done" in (run_dir / "train.log").read_text()
