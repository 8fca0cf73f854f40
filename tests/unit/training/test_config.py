"""``training.config``: every committed config loads and means what its keys meant as plain TOML reads;
unknown keys, wrong types and missing keys are refused naming the file, the table and the key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from training.case_model import DecisionTargets
from training.config import (
    AugmentConfig,
    BaselinesConfig,
    ConfigError,
    DecisionConfig,
    TrainingConfig,
    load_baselines_config,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "training" / "configs"
ENSEMBLE = sorted(p for p in CONFIGS.glob("*.toml") if not p.name.startswith("baselines"))
BASELINES = sorted(CONFIGS.glob("baselines*.toml"))
#: what a step's ``augment`` table meant when a key was left out (the augmentation's documented defaults)
AUGMENT_DEFAULTS = {"flip": True, "rotate_deg": 10.0, "scale": 0.1, "intensity": 0.05, "paste": 0.0}
AUGMENT_DEFAULTS |= {"noise_hu": 0.0, "sharpen": 0.0, "hu_offset": 0.0}


def _raw(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def test_the_committed_configs_are_all_covered() -> None:
    names = {p.name for p in [*ENSEMBLE, *BASELINES]}
    assert {"default.toml", "smoke.toml", "gpu.toml", "slice-bce.toml", "baselines.toml"} <= names
    assert names == {p.name for p in CONFIGS.glob("*.toml")}


@pytest.mark.parametrize("path", ENSEMBLE, ids=lambda p: p.name)
def test_an_ensemble_config_means_what_its_plain_reads_meant(path: Path) -> None:
    """Each typed value equals the TOML value, or the default the trainer used when the key was absent."""
    raw, cfg = _raw(path), load_config(path)
    rc = raw["run"]
    assert (cfg.run.name, cfg.run.seed, cfg.run.size, cfg.run.eval_batch) == (
        rc["name"], rc["seed"], rc["size"], rc["eval_batch"],
    )
    assert cfg.run.threads == rc.get("threads", 2) and cfg.run.val_patients == rc.get("val_patients", 0)
    assert cfg.run.amp == rc.get("amp", "none") and cfg.run.device == rc.get("device", "cpu")
    assert cfg.run.split_path == (Path(rc["split_file"]) if rc.get("split_file") else None)
    assert cfg.select_opening == rc.get("select_opening", raw["weight"]["opening"])
    assert cfg.cv.folds == raw.get("cv", {}).get("folds", 5)
    assert cfg.decision_targets() == DecisionTargets(
        **raw.get("decision", {}), opening=raw["weight"]["opening"]
    )
    assert cfg.network.model_dump() == {"width": 16, "depth": 4, "flip_tta": False} | raw["network"]
    assert cfg.export.rotate_tta_deg == raw.get("export", {}).get("rotate_tta_deg", 0.0)
    assert cfg.weight.model_dump() == {"dice": "batch"} | raw["weight"]
    assert list(cfg.steps) == list(raw["steps"])
    for name, table in raw["steps"].items():
        step = cfg.steps[name]
        assert step.init == table.get("init") and step.cls_iterations == table.get("cls_iterations", 0)
        assert (step.iterations, step.lr, step.warmup, step.batch, step.eval_every) == (
            table["iterations"], table["lr"], table["warmup"], table["batch"], table["eval_every"],
        )
        assert step.dice == table.get("dice", "batch") and step.bce_weight == table.get("bce_weight", 1.0)
        assert step.negative_fraction == table.get("negative_fraction", 0.5)
        assert step.edge_negative_weight == table.get("edge_negative_weight", 1.0)
        assert step.slice_bce == table.get("slice_bce", 0.0)
        assert step.hard_negatives == table.get("hard_negatives")
        assert step.augment.model_dump() == AUGMENT_DEFAULTS | table.get("augment", {})


@pytest.mark.parametrize("path", ENSEMBLE, ids=lambda p: p.name)
def test_as_written_gives_back_the_files_tables_in_their_order(path: Path) -> None:
    """What the model card lists: the keys the file sets, in its order, with its values."""
    raw, cfg = _raw(path), load_config(path)
    assert list(cfg.network.as_written().items()) == list(raw["network"].items())
    assert list(cfg.weight.as_written().items()) == list(raw["weight"].items())
    for name, table in raw["steps"].items():
        assert list(cfg.steps[name].as_written().items()) == list(table.items()), name


@pytest.mark.parametrize("path", BASELINES, ids=lambda p: p.name)
def test_a_baselines_config_means_what_its_plain_reads_meant(path: Path) -> None:
    raw, cfg = _raw(path), load_baselines_config(path)
    assert isinstance(cfg, BaselinesConfig)
    assert cfg.architectures == raw["architectures"] and cfg.modes == raw["modes"]
    assert cfg.run.eval_batch == raw["run"].get("eval_batch", 32) and cfg.run.amp == raw["run"]["amp"]
    train = raw["train"]
    assert cfg.train.as_written() == train
    assert cfg.train.log_every == train.get("log_every", 50) and cfg.train.dice == train.get("dice", "batch")
    assert cfg.train.seg_weight == train.get("seg_weight", 1.0)
    assert cfg.train.edge_negative_weight == train.get("edge_negative_weight", 1.0)
    for arch, net in raw["network"].items():
        typed = cfg.network[arch]
        assert typed.width == net.get("width", 1.0) and typed.blocks == net.get("blocks")


def test_the_decision_table_has_the_case_models_targets_and_defaults() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(DecisionTargets) if f.name != "opening"}
    assert DecisionConfig().model_dump() == fields
    cfg = load_config(CONFIGS / "smoke.toml")  # no [decision]: the case model's defaults
    assert cfg.decision_targets() == DecisionTargets(opening=cfg.weight.opening)


def _default() -> dict[str, Any]:
    return _raw(CONFIGS / "default.toml")


def _refused(cfg: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(cfg, "my.toml")
    return str(err.value)


def test_an_unknown_key_is_refused_naming_the_file_the_table_and_the_key() -> None:
    cfg = _default()
    cfg["steps"]["sdh"]["negative_fracton"] = 0.7  # a typo would otherwise train with the default
    assert _refused(cfg) == "my.toml: [steps.sdh] negative_fracton: unknown key"
    cfg = _default()
    cfg["steps"]["all"]["augment"]["noise"] = 6.0
    assert _refused(cfg) == "my.toml: [steps.all.augment] noise: unknown key"
    cfg = _default()
    cfg["runs"] = {"name": "x"}
    assert _refused(cfg) == "my.toml: runs: unknown key"


def test_a_value_of_the_wrong_type_or_range_is_refused_naming_the_key() -> None:
    cfg = _default()
    cfg["steps"]["all"]["iterations"] = "640"
    assert _refused(cfg).startswith("my.toml: [steps.all] iterations: Input should be a valid integer")
    cfg = _default()
    cfg["run"]["amp"] = "fp16"
    assert _refused(cfg).startswith("my.toml: [run] amp: Input should be 'none' or 'bf16'")
    cfg = _default()
    cfg["steps"]["all"]["negative_fraction"] = 1.5
    assert "[steps.all] negative_fraction: Input should be less than or equal to 1" in _refused(cfg)
    cfg = _default()
    cfg["decision"]["score"] = "loudest"
    assert "[decision] score: expected one of" in _refused(cfg)


def test_a_missing_key_and_every_problem_at_once_are_named() -> None:
    cfg = _default()
    del cfg["run"]["seed"], cfg["weight"]["opening"]
    expected = ["my.toml: [run] seed: missing", "my.toml: [weight] opening: missing"]
    assert _refused(cfg).splitlines() == expected


def test_load_config_names_the_file_and_refuses_broken_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[run]\nname = \n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(path)
    path.write_text((CONFIGS / "smoke.toml").read_text().replace("eval_batch = 64", "eval_batchs = 64"))
    with pytest.raises(ConfigError, match=r"broken\.toml: \[run\] eval_batchs: unknown key"):
        load_config(path)


def test_the_models_are_frozen_and_augment_is_the_augmentations_type() -> None:
    cfg = load_config(CONFIGS / "default.toml")
    assert isinstance(cfg, TrainingConfig) and isinstance(cfg.steps["all"].augment, AugmentConfig)
    with pytest.raises(Exception, match="frozen"):
        cfg.run.seed = 1  # type: ignore[misc]
