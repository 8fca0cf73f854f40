"""``ich-model train`` end to end on the committed fixture with a tiny config: files, resume, split."""

from __future__ import annotations

import json
import logging

import pytest
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


class _StoppedError(Exception):
    """Stands for the process being killed."""


def test_a_step_stopped_after_a_checkpoint_resumes_to_the_weights_of_an_uninterrupted_one(
    tmp_path, monkeypatch
) -> None:
    from training import train

    for name in ("straight", "stopped"):
        (tmp_path / name).mkdir()
    straight_args, straight = train_args(tmp_path / "straight", CONFIG)
    assert main(straight_args) == 0
    saves = []
    real_save = train.save_base_progress

    def save_then_stop(*args, **kwargs) -> None:
        saves.append(args[-1].iteration)
        if len(saves) == 2:  # killed before its second checkpoint was written
            raise _StoppedError
        real_save(*args, **kwargs)

    args, run_dir = train_args(tmp_path / "stopped", CONFIG)
    monkeypatch.setattr(train, "save_base_progress", save_then_stop)
    with pytest.raises(_StoppedError):
        main(args)
    assert saves == [2, 4] and not (run_dir / "all" / "done.json").exists()
    assert torch.load(run_dir / "all" / "last.pt", weights_only=False)["iteration"] == 2
    monkeypatch.setattr(train, "save_base_progress", real_save)
    assert main(args) == 0
    done = json.loads((run_dir / "all" / "done.json").read_text())
    assert done == json.loads((straight / "all" / "done.json").read_text())  # losses, figures, best
    for name in ("best.pt", "last.pt"):
        a = torch.load(straight / "all" / name, weights_only=False)["state_dict"]
        b = torch.load(run_dir / "all" / name, weights_only=False)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
