"""``ich-model`` as a user meets it: help that describes each command, clear errors for a wrong --data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.train_run import FIXTURE
from training.cli import SUBCOMMANDS, main


def test_top_level_help_describes_the_tool_not_its_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "Train, cross-validate, export, evaluate" in out
    assert "imported only" not in out  # the module docstring is for developers


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_command_help_has_a_description(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    usage_and_description = capsys.readouterr().out.split("options:")[0]
    assert SUBCOMMANDS[command][1][1:] in usage_and_description.replace("\n", " ").replace("  ", " ")


@pytest.mark.parametrize("command", ["train", "cv"])
def test_a_missing_data_folder_and_a_wrong_layout_get_different_messages(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ["--config", "training/configs/smoke.toml", "--run-dir", str(tmp_path / "run")]
    assert main([command, "--data", str(tmp_path / "absent"), *config]) == 2
    missing = capsys.readouterr().err
    assert "absent: no such folder" in missing and "Traceback" not in missing
    (tmp_path / "other").mkdir()
    assert main([command, "--data", str(tmp_path / "other"), *config]) == 2
    assert "not a CT-ICH folder (no Patients_CT/)" in capsys.readouterr().err
    assert FIXTURE.is_dir()  # the layout the message asks for exists in the fixtures


def test_a_run_whose_config_does_not_validate_is_named_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text('[run]\nname = "x"\nbogus = 1\n')
    code = main(["cv-report", "--run-dir", str(run), "--data", str(FIXTURE), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "ich-model cv-report: error:" in err and "[run] bogus: unknown key" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
