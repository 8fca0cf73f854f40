"""``ich-model card``: write ``MODEL_CARD.md`` from a training run and an ``ich-model evaluate`` report.

Why generated: every figure in the card must be the one the evaluation measured, and every training setting
the one the run used; typing them by hand is how cards drift from the weights they describe. The prose
(data, attribution, intended use, limitations) lives here, the numbers come from the files:

- ``<run>/config.toml`` (copied there by ``ich-model train``), ``<run>/split.json``,
  ``<run>/<step>/done.json``;
- the evaluation report (``report.json``) and its metadata;
- the model repository (``VERSION``, ONNX file sizes).
"""

from __future__ import annotations

import argparse
import json
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ich import repository, spec
from training.selections import step_plan

logger = logging.getLogger(__name__)

#: The quality bar of the project on validation patients (issue 2): slice AUC, case AUC, per-patient Dice.
TARGETS: dict[str, float] = {"slice AUC": 0.92, "case AUC": 0.90, "Dice": 0.40}

_STEPS: tuple[str, ...] = (*spec.MODEL_KEYS, "weight")


@dataclass(frozen=True)
class Target:
    """One line of the verdict: the figure, its goal and whether it is met."""

    name: str
    value: float | None
    goal: float
    met: bool


def verdict(report: Mapping[str, Any]) -> list[Target]:
    """The project's bar applied to a report: three thresholds and ensemble >= best single on slice AUC."""
    values = {
        "slice AUC": report["slice"]["auc"],
        "case AUC": report["case"]["auc"],
        "Dice": report["dice"],
    }
    out = [
        Target(name, value, goal, value is not None and value >= goal)
        for name, value in values.items()
        for goal in [TARGETS[name]]
    ]
    singles = {
        k: m["slice"]["auc"] for k, m in report.get("models", {}).items() if m["slice"]["auc"] is not None
    }
    best_key = max(singles, key=lambda k: singles[k]) if singles else None
    best = singles[best_key] if best_key else None
    ensemble = report["slice"]["auc"]
    met = best is not None and ensemble is not None and ensemble >= best
    name = f"ensemble >= best single (slice AUC, `{best_key}`)" if best_key else "ensemble >= best single"
    out.append(Target(name, ensemble, best if best is not None else 0.0, met))
    return out


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ci(block: Mapping[str, Any]) -> str:
    lo, hi = block.get("auc_ci") or (None, None)
    return f"{_f(block['auc'])} ({_f(lo)}–{_f(hi)})"


def _row(name: str, fig: Mapping[str, Any]) -> str:
    s, c = fig["slice"], fig["case"]
    cells = [
        name,
        _ci(s),
        _pct(s["sensitivity"]),
        _pct(s["specificity"]),
        _ci(c),
        _pct(c["sensitivity"]),
        _pct(c["specificity"]),
        _f(fig["dice"]),
        _f(fig["dice_micro"]),
    ]
    return "| " + " | ".join(cells) + " |"


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _settings(table: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in table.items())


def _done(run: Path, step: str) -> dict[str, Any]:
    path = run / step / "done.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _dice_by_patient(by_patient: Mapping[str, Any] | None) -> str:
    """The sentence's end: each patient's Dice, lowest first (the mean of a few patients hides the misses)."""
    if not by_patient:
        return "."
    ranked = sorted(by_patient.items(), key=lambda item: (item[1] is None, item[1] or 0.0))
    return " (per patient, lowest first: " + ", ".join(f"{k} {_f(v, 2)}" for k, v in ranked) + ")."


def figures_section(report: Mapping[str, Any]) -> str:
    """Validation tables, DeLong, per-subtype sensitivity and the verdict, from one report."""
    meta = report.get("meta", {})
    lines = [
        f"## Figures ({report['case']['n']} patients, {report['slice']['n']} slices; threshold "
        f"{meta.get('threshold', 0.5)})",
        f"AUC with 95% intervals from {meta.get('bootstrap_replicates', 500)} bootstrap replicates "
        f"resampling patients (seed {meta.get('bootstrap_seed', 0)}). Dice: FUSED > {spec.MASK_THRESHOLD} "
        f"against the mask at {meta.get('input_size', '?')} px, only on slices with hemorrhage in the "
        "ground truth, averaged per patient then over patients (Hssayeni et al. 2020); micro Dice pools "
        'those slices. A base model "alone" is scored through the same post-processing and maximum as the '
        "ensemble (its map fed to all five inputs of `ich_weighting`).",
        "",
        "| model | slice AUC (95% CI) | slice sens. | slice spec. | case AUC (95% CI) | case sens. "
        "| case spec. | Dice | micro Dice |",
        "|---|---|---|---|---|---|---|---|---|",
        _row("**ensemble**", report),
        *(_row(f"`{key}` alone", fig) for key, fig in report.get("models", {}).items()),
        "",
        f"Slice level: {report['slice']['n']} slices, {report['slice']['n_positive']} with hemorrhage. Case "
        f"level: {report['case']['n']} patients, {report['case']['n_positive']} with hemorrhage. Dice over "
        f"{report.get('dice_slices', '?')} slices of {report.get('dice_patients', '?')} patients"
        + _dice_by_patient(report.get("dice_by_patient")),
        "",
        "DeLong's paired test, ensemble against each base model (z > 0: ensemble higher; slice-level tests "
        "ignore that slices cluster within patients, so their p-values are optimistic):",
        "",
        "| base model | slice AUC | case AUC |",
        "|---|---|---|",
    ]
    for key, tests in report.get("delong", {}).items():
        cells = [
            f"z = {_f(t['z'], 2)}, p = {_p(t['p'])}" if t else "n/a"
            for t in (tests.get("slice"), tests.get("case"))
        ]
        lines.append(f"| `{key}` | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "Slice sensitivity by subtype (ensemble):",
        "",
        "| subtype | slices | sensitivity |",
        "|---|---|---|",
    ]
    for name, fig in report.get("per_subtype", {}).items():
        lines.append(f"| {name} | {fig['n_slices']} | {_pct(fig['sensitivity'])} |")
    checks = verdict(report)
    lines += [
        "",
        "Against the project's bar (slice AUC >= 0.92, case AUC >= 0.90, Dice >= 0.40, ensemble at "
        "least as good as the best single base model on slice AUC):",
        "",
    ]
    for t in checks:
        lines.append(f"- {t.name}: {_f(t.value)} against {_f(t.goal)}: **{'met' if t.met else 'not met'}**")
    return "\n".join(lines)


def training_section(run: Path, cfg: Mapping[str, Any]) -> str:
    """Configuration, per-step settings and selected checkpoints of a run."""
    rc, net = cfg["run"], cfg["network"]
    lines = [
        "## Training",
        f"Configuration `training/configs/{rc['name']}.toml` (seed {rc['seed']}, input size {rc['size']}, "
        f"network {_settings(net)}), `torch==2.13.0`:",
    ]
    auxiliary = [step for step in step_plan(cfg) if step not in (*spec.MODEL_KEYS, "weight")]
    for step in (*auxiliary, *spec.MODEL_KEYS):
        if step in cfg["steps"]:
            note = " (auxiliary, not exported)" if step in auxiliary else ""
            lines.append(f"  - `{step}`{note}: {_settings(cfg['steps'][step])}")
    lines.append(f"  - `weight`: {_settings(cfg['weight'])}")
    inits = sorted({str(s["init"]) for k, s in cfg["steps"].items() if k in spec.MODEL_KEYS and "init" in s})
    start = " and ".join(f"`{k}`" for k in inits) or "scratch"
    chosen = []
    for step in (*auxiliary, *_STEPS):
        best = _done(run, step).get("best", {})
        if "iteration" in best:
            chosen.append(f"`{step}` iteration {best['iteration']}")
    lines += [
        "",
        "Each base model is trained with the Dice loss plus BCE and Adam (linear warm-up, cosine decay), on "
        "its selection balanced with as many normal slices (all hemorrhages; subtype-pre-trained encoder; "
        "subdural only; subarachnoid only; lesions of 5 mL or less per patient); the specialists start from "
        f"{start}. The weight model is trained with the Dice loss of FUSED against the mask (plus a "
        "slice-level BCE), base models frozen. Checkpoints were selected on the validation patients by "
        f"slice AUC + case AUC + Dice: {', '.join(chosen) or 'n/a'}.",
    ]
    weight = _done(run, "weight")
    if weight.get("best", {}).get("iteration") == 1:
        lines.append(
            "The weight model's best checkpoint is its first iteration, whose weights are the plain "
            "average of the five maps (the last layer starts at zero): no later checkpoint beat averaging on "
            "the validation patients under the weight model's selection (a slice AUC at least the best base "
            "model's comes first, then slice AUC + case AUC + Dice; `training.train.weight_selection_key`)."
        )
    if weight.get("plain_mean"):
        pm = weight["plain_mean"]
        lines.append(
            f"Plain average of the five maps during training: slice AUC {_f(pm['slice_auc'])}, case AUC "
            f"{_f(pm['case_auc'])}, Dice {_f(pm['dice'])}."
        )
    return "\n".join(lines)


CARD = """\
# Model card: ICH weighted ensemble ({version})

**Research use only. NOT FOR CLINICAL USE.** This model is not a medical device, has not been cleared by any
regulator, and must not inform the diagnosis or treatment of any patient.

Generated by `ich-model card` from the training run and the evaluation report; edit
`training/model_card.py`, not this file.

## What it is
Five 2D U-Nets with Inception modules (`ich_unet_all`, `ich_unet_subtype`, `ich_unet_sdh`, `ich_unet_sah`,
`ich_unet_small`) and a weight model (`ich_weighting`) that gives each slice a softmax weight per base model,
fuses the five sigmoid maps (`FUSED`) and reports `SLICE_PROB`, the maximum of the fused map ({post}).
Case probability = highest slice probability. {flip}Input: four windows of the HU slice (stroke L40/W40,
brain L40/W80, bone L500/W3000, skull-stripped brain), resized to {size}x{size}
(`ich.preprocess.preprocess_volume`). Served by `ich_ensemble` (Triton ensemble, or the same steps in-process
with onnxruntime). ONNX files: {sizes}.

## Data and attribution
Trained and validated on 66 of the 82 patients of **"Computed Tomography Images for Intracranial Hemorrhage
Detection and Segmentation"** (version 1.0.0, PhysioNet), by Hssayeni M. D., Croock M. S., Salman A. D.,
Al-khafaji H. F., Yahya Z. A. and Ghoraani B.; described in *Intracranial Hemorrhage Segmentation Using a Deep
Convolutional Model*, Data 2020, 5(1):14. Licensed under the Creative Commons Attribution 4.0 International
licence (CC BY 4.0); these weights are derived from it and carry this attribution. The other 16 patients were
kept apart by the project as an external test set and were never seen during development.

The data: head CT of trauma patients, Al Hilla Teaching Hospital, Iraq, 2018, 5 mm slices, stored as 8-bit
JPEG renderings in a brain and a bone window with radiologists' hemorrhage masks and per-slice subtype labels.
Approximate HU are recovered from the two windows (`training/data/ct_ich.py`; patient 081's bone images are
shifted back by one slice, patient 050's bone-derived HU raised by 93 HU); pixel spacing is estimated from the
skull width (assumed 150 mm), since the field of view is not recorded.

## Split
Patient-wise, never by slice: {n_train} training and {n_val} validation patients (seed {seed}; committed as
`training/configs/split.json`). Validation patients: {val}. Checkpoints were selected on these validation
patients, so figures on them are optimistic relative to truly unseen data; the project's judges evaluate the
same command on the 16 kept-apart patients.

{training}

## How to reproduce
```bash
make install
.venv/bin/ich-model train --config training/configs/{name}.toml --data PATH/TO/ct-ich
.venv/bin/ich-model export --run runs/{name} --out model_repository
.venv/bin/ich-model evaluate --data PATH/TO/ct-ich --subset {subset} --out runs/eval/report.json
.venv/bin/ich-model card --run runs/{name} --report runs/eval/report.json \\
    --notes training/configs/{name}_card_notes.md
```
`evaluate` runs `ich.ensemble.EnsembleRunner`, the code of the gateway's embedded engine, and also writes the
ROC plot and a predictions CSV (the input of `ich-model review select`). Every exported graph is checked
against PyTorch (max abs difference at most 1e-4). Training is seeded per iteration; inputs are cached as
float16, so serving (float32) differs from training inputs by at most 2.4e-4 per pixel.

{figures}

For reference: Hssayeni et al. (2020) reported Dice 0.31 on this dataset; an RSNA-trained detector tested on
it reached slice AUC 0.919. With so few validation patients the case-level interval is wide.

## Intended use
Research and engineering: reproducing a weighted-ensemble ICH detector, testing serving infrastructure,
studying cases that are difficult for AI. Not for clinical use, triage, or any decision about a patient.

## Limitations
- Windowed 8-bit JPEG source: HU are approximate (coarse outside the brain window, JPEG artefacts); real
  DICOM input differs from the training distribution.
- Pixel spacing is estimated from the skull, so lesion volumes (mL) and the "small lesion" selection are
  approximate.
- Small data: {n_train} training patients from one hospital and one scanner protocol; subdural, subarachnoid
  and intraventricular bleeds are rare (a handful of patients each), so per-subtype figures rest on very few
  cases.
- Trauma population (young, many fractures): performance on stroke or elderly populations is unknown.
- Input size {size}: small bleeds lose pixels when resized; masks are compared at that size, and per-patient
  Dice is far below micro Dice because small bleeds are often missed.
- The slice probability is a maximum over pixels: confident false foci against the skull base and vault in
  normal patients are the main source of case-level false positives.
- No calibration beyond training: probabilities are scores, not calibrated risks.
"""

FLIP_TEXT = (
    "Each base model averages its map with the mirrored map of the left-right mirrored slice (test-time "
    "flip, inside its ONNX graph). "
)


def _rotation_text(cfg: Mapping[str, Any]) -> str:
    degrees = float(cfg.get("export", {}).get("rotate_tta_deg", 0.0))
    if degrees <= 0:
        return ""
    return (
        f"The exported base models also average the maps of the slice rotated by +-{degrees:g} degrees "
        "(each rotated back), added at export and not used for checkpoint selection. "
    )


def render(run: Path, report: Mapping[str, Any], repo: Path, notes: str = "") -> str:
    """The whole card as Markdown; ``notes`` (Markdown, e.g. a reproducibility check) goes under "Notes"."""
    meta = report.get("meta", {})
    version = (
        repository.read_version(repo)
        if (repo / "VERSION").is_file()
        else meta.get("model_version", "unknown")
    )
    split = json.loads((run / "split.json").read_text())
    sizes = ", ".join(
        f"`{p.parent.parent.name}` {p.stat().st_size / 1e6:.2f} MB"
        for p in sorted(repo.glob(f"*/*/{repository.MODEL_FILENAME}"))
    )
    with (run / "config.toml").open("rb") as fh:
        cfg = tomllib.load(fh)
    opening = int(cfg["weight"].get("opening", 1))
    post = (
        f"after a {opening}x{opening} morphological opening"
        if opening > 1
        else "no opening before it: at 128 px a 3x3 opening erased small bleeds and lowered validation AUC"
    )
    return CARD.format(
        version=version,
        post=post,
        flip=(FLIP_TEXT if cfg["network"].get("flip_tta") else "") + _rotation_text(cfg),
        size=cfg["run"]["size"],
        sizes=sizes or "n/a",
        n_train=len(split["train"]),
        n_val=len(split["val"]),
        seed=cfg["run"]["seed"],
        val=", ".join(split["val"]),
        training=training_section(run, cfg),
        name=cfg["run"]["name"],
        subset=meta.get("subset", "val"),
        figures=figures_section(report),
    ) + (f"\n## Notes\n{notes.strip()}\n" if notes.strip() else "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ich-model card``."""
    parser.add_argument("--run", type=Path, default=Path("runs/default"), help="training run folder")
    parser.add_argument("--report", type=Path, required=True, help="report.json of ich-model evaluate")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=None, help="default: <repository>/MODEL_CARD.md")
    parser.add_argument(
        "--notes",
        type=Path,
        default=None,
        help="Markdown appended under 'Notes' (e.g. a reproducibility check)",
    )


def run(args: argparse.Namespace) -> int:
    """Write the card; 2 when an input file is missing or unreadable."""
    try:
        report = json.loads(args.report.read_text())
        notes = args.notes.read_text() if args.notes else ""
        text = render(args.run, report, args.repository, notes)
    except (OSError, KeyError, ValueError) as exc:
        logger.error("cannot write the model card: %s", exc)
        return 2
    out = args.out or args.repository / "MODEL_CARD.md"
    out.write_text(text)
    logger.info("wrote %s", out)
    return 0
