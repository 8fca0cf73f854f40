"""``ich-model card``: write ``MODEL_CARD.md`` from the cross-validation record and the shipped repository.

Why generated: every figure in the card must be the one the out-of-fold predictions give, and every setting
the one the run used; typed by hand, cards drift from the weights they describe. The prose (data,
attribution, intended use, limitations) lives here; the numbers come from files:

- ``<cv>/report.json``, ``<cv>/config.toml``, ``<cv>/folds.json``, ``<cv>/lesions.csv`` (``ich-model cv`` and
  ``cv-report``; committed under ``training/cv/<name>/``);
- the model repository: ``VERSION``, ``case_model.json`` (the shipped operating point), ONNX file sizes;
- optionally the shipped training run (``<run>/train.log`` for its duration).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ich import repository, spec
from ich.scoring import CASE_MODEL_FILENAME, CaseModel
from training.config import ConfigError, Section, TrainingConfig, load_config
from training.records import Records

logger = logging.getLogger(__name__)

#: The project's bar, out of fold over the 66 patients at the shipped threshold.
TARGETS: dict[str, float] = {
    "case sensitivity": 0.90,
    "case specificity": 0.70,
    "case AUC": 0.93,
    "slice AUC": 0.93,
    "Dice per patient": 0.45,
}
#: ... and the expected calibration error must stay at or below this.
MAX_ECE: float = 0.10


@dataclass(frozen=True)
class Target:
    """One line of the verdict: the figure, its goal and whether it is met."""

    name: str
    value: float | None
    goal: float
    met: bool
    at_most: bool = False


def verdict(report: Mapping[str, Any]) -> list[Target]:
    """The report's figures against :data:`TARGETS` and :data:`MAX_ECE` (a missing figure is not met)."""
    op = report["operating_point"]
    values = {
        "case sensitivity": op["sensitivity"]["value"],
        "case specificity": op["specificity"]["value"],
        "case AUC": report["case"]["ich_probability"]["auc"],
        "slice AUC": report["models"]["ensemble"]["slice"]["auc"],
        "Dice per patient": report["dice"]["kept_lesions"]["per_patient"],
    }
    out = [
        Target(k, values[k], goal, values[k] is not None and values[k] >= goal) for k, goal in TARGETS.items()
    ]
    ece = report["calibration"]["ece"]
    out.append(Target("expected calibration error", ece, MAX_ECE, ece is not None and ece <= MAX_ECE, True))
    return out


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(block: Mapping[str, Any], key: str = "auc_ci") -> str:
    ci = block.get(key) if key in block else block.get("ci")
    return f" (95% CI {_f(ci[0])}-{_f(ci[1])})" if ci else ""


def _prop(block: Mapping[str, Any]) -> str:
    if block["value"] is None:
        return "n/a"
    low, high = (_f(v, 2) for v in block["ci"])
    return f"{_f(block['value'], 2)} ({block['k']}/{block['n']}; 95% CI {low}-{high})"


def figures_section(report: Mapping[str, Any], model: CaseModel | None) -> str:
    """Out-of-fold figures: the case decision, calibration, slices, segmentation, the verdict."""
    op, case, cal, dice = report["operating_point"], report["case"], report["calibration"], report["dice"]
    thresholds = ", ".join(_f(t) for t in op.get("thresholds_by_fold", []))
    lines = [
        f"## Figures (out of fold: {report['patients']} patients, {report['patients_with_hemorrhage']} with "
        f"hemorrhage, {report['slices']} slices, {report.get('folds', 'n/a')} folds)",
        "",
        "Every figure below comes from predictions of models that never saw the patient, and every choice "
        "made after training (lesion model, calibration, threshold, band) was fitted on the other folds' "
        "predictions only (`training.case_model.cross_fit`).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| case AUC, calibrated case probability (`ich_probability`) | {_f(case['ich_probability']['auc'])}"
        f"{_ci(case['ich_probability'])} |",
        f"| case AUC, the paper's maximum slice probability | {_f(case['max_slice_probability']['auc'])}"
        f"{_ci(case['max_slice_probability'])} |",
        f"| case sensitivity at the operating point | {_prop(op['sensitivity'])} |",
        f"| case specificity at the operating point | {_prop(op['specificity'])} |",
        f"| normal heads flagged, per 10 | {_f(op['normal_heads_flagged_per_10'], 1)} |",
        f"| cases in the indeterminate band | {_prop(op['indeterminate'])} |",
        f"| slice AUC (SLICE_PROB) | {_f(report['models']['ensemble']['slice']['auc'])}"
        f"{_ci(report['models']['ensemble']['slice'])} |",
        f"| Dice per patient, reported mask (kept lesions) | {_f(dice['kept_lesions']['per_patient'])} |",
        f"| Dice per patient, all candidates (FUSED > 0.5) | {_f(dice['candidates']['per_patient'])} |",
        f"| Dice pooled over slices (micro), reported mask | {_f(dice['kept_lesions']['micro'])} |",
        f"| Brier score | {_f(cal['brier'])} |",
        f"| expected calibration error (10 bins) | {_f(cal['ece'])} |",
        "",
        f"The paper's rule at 0.5 (maximum slice probability) on the same predictions: sensitivity "
        f"{_f(case['max_slice_probability_at_0.5']['sensitivity'], 2)}, specificity "
        f"{_f(case['max_slice_probability_at_0.5']['specificity'], 2)}.",
        f"Thresholds chosen inside the training folds: {thresholds or 'n/a'}. Missed hemorrhage cases: "
        f"{', '.join(op['missed_cases']) or 'none'}; normal cases flagged: "
        f"{', '.join(op['flagged_normal_cases']) or 'none'}.",
        "",
        "Reliability diagram: [reliability.png](../training/cv/default/reliability.png); ROC: "
        "[roc.png](../training/cv/default/roc.png).",
        "",
        _operating_point_text(op, model),
        "",
        _models_table(report),
        "",
        "Against the project's bar (out of fold, at the shipped threshold):",
        "",
    ]
    for t in verdict(report):
        sign = "<=" if t.at_most else ">="
        lines.append(
            f"- {t.name}: {_f(t.value)} (bar {sign} {t.goal:g}): {'met' if t.met else '**not met**'}"
        )
    return "\n".join(lines)


def _operating_point_text(op: Mapping[str, Any], model: CaseModel | None) -> str:
    if model is None:
        return "The repository carries no case model: it decides by the maximum slice probability at 0.5."
    targets = model.info.get("targets", {})
    return (
        f"**Operating point.** The shipped threshold is {_f(model.threshold)} on the calibrated probability "
        f"(`model_repository/{CASE_MODEL_FILENAME}`), chosen on all out-of-fold predictions for a case "
        f"sensitivity of {targets.get('target_sensitivity', 'n/a')}; the indeterminate band is "
        f"[{_f(model.band[0])}, {_f(model.band[1])}]: below it every hemorrhage case of the out-of-fold "
        f"predictions lay above (sensitivity target {targets.get('band_sensitivity', 'n/a')}), above it at "
        f"least {targets.get('band_specificity', 'n/a')} of the normal cases lay below. Out of fold, "
        f"{_f(op['normal_heads_flagged_per_10'], 1)} normal heads in 10 were flagged. `ICH_THRESHOLD` "
        "overrides the threshold (not the band)."
    )


def _models_table(report: Mapping[str, Any]) -> str:
    lines = [
        "Each base model alone, through the ensemble's post-processing, on the same predictions (DeLong's "
        "test on slices treats slices as independent):",
        "",
        "| model | slice AUC | case AUC (max slice) | Dice (candidates) | DeLong p vs ensemble |",
        "|---|---|---|---|---|",
    ]
    for key in ("ensemble", *spec.MODEL_KEYS):
        block = report["models"][key]
        delong = block.get("delong_slice_vs_ensemble")
        dice = block.get("dice_candidates", report["dice"]["candidates"]["per_patient"])
        lines.append(
            f"| {key} | {_f(block['slice']['auc'])} | {_f(block['case_max_slice']['auc'])} | {_f(dice)} | "
            f"{_f(delong['p']) if delong else '-'} |"
        )
    return "\n".join(lines)


def _counts(block: Mapping[str, Any], key: str) -> str:
    return f"{block[key]['n_positive']}/{block[key]['n']}"


def subtype_section(report: Mapping[str, Any], model: CaseModel | None) -> str:
    """Per-subtype out-of-fold AUCs with intervals and counts, or why a subtype is not measured."""
    block = report.get("subtypes")
    if not block:
        return "This record carries no subtype figures (`ich-model cv-report` on the run writes them)."
    lines = [
        "Each subtype's probability comes from the lesion candidates' location and shape (`ich.subtypes`), "
        "fitted on out-of-fold lesions and cross-fitted over the folds like the case decision. AUC over "
        "all patients (case: has the subtype anywhere; slice: the slice carries it, patient bootstrap):",
        "",
        "| subtype | case AUC | positive / patients | slice AUC | positive / slices | Brier (case) |",
        "|---|---|---|---|---|---|",
    ]
    for name, b in block.items():
        if not b["measured"]:
            lines.append(
                f"| {name} | {b['reason']} | {b['positive_cases']}/{report['patients']} | - | "
                f"{b['positive_slices']}/{report['slices']} | - |"
            )
            continue
        lines.append(
            f"| {name} | {_f(b['case']['auc'])}{_ci(b['case'])} | {_counts(b, 'case')} | "
            f"{_f(b['slice']['auc'])}{_ci(b['slice'])} | {_counts(b, 'slice')} | {_f(b['brier'])} |"
        )
    shipped = sorted(model.subtypes.fits) if model is not None and model.subtypes is not None else []
    lines += [
        "",
        (
            f"The shipped case model gives {', '.join(shipped)}; the result's other subtypes are null."
            if shipped
            else "The shipped case model gives no subtypes: `subtypes` is null in every result."
        ),
    ]
    return "\n".join(lines)


def uncertainty_section(report: Mapping[str, Any]) -> str:
    """Whether the wrong calls concentrate among the uncertain cases, out of fold."""
    u = report.get("uncertainty")
    if not u or not u.get("measured"):
        return "This record carries no uncertainty figures (`ich-model cv-report` on the run writes them)."
    auc, band = u["auc_for_wrong_call"], u["closeness_to_threshold_auc_for_wrong_call"]
    thirds = "; ".join(
        f"{_f(t['uncertainty'][0])}-{_f(t['uncertainty'][1])}: {t['wrong']['k']}/{t['wrong']['n']} wrong"
        for t in u["by_third"]
    )
    return (
        f"`uncertainty` is the {u['definition']}. Out of fold, with {u['wrong_calls']} wrong calls at the "
        f"operating point among {report['patients']} patients, its AUC for a wrong call is "
        f"{_f(auc['auc'])}{_ci(auc)}; the closeness of the probability to the threshold (what the band "
        f"looks at) gives {_f(band['auc'])}{_ci(band)}. By thirds of the uncertainty: {thirds} "
        "([uncertainty.png](../training/cv/default/uncertainty.png)). It does not change the call: "
        "`indeterminate` is the band alone, and `ich-model review select --most-uncertain N` picks the "
        "cases the models disagree on."
    )


def false_positive_section(records: Records, report: Mapping[str, Any], model: CaseModel | None) -> str:
    """Where the candidate lesions of normal patients lie (vertex / skull base, against the bone)."""
    normals = {str(r["case"]) for r in records.cases if int(r["label"]) == 0}
    false = [r for r in records.lesions if str(r["case"]) in normals]
    if not false:
        return "No lesion candidate was found in any normal patient."
    edge = sum(float(r["brain_area_fraction"]) < 0.5 for r in false)
    bone = sum(float(r["bone_distance_mm"]) < 3.0 for r in false)
    small = sum(float(r["volume_ml"]) < 0.1 for r in false)
    return (
        f"Candidate lesions (FUSED > 0.5) in the {len(normals)} normal patients, out of fold: {len(false)}; "
        f"{edge} on slices whose brain area is under half the patient's largest (vertex and skull base), "
        f"{bone} within 3 mm of bone (inner table, petrous bone, middle cranial fossa), {small} under "
        "0.1 mL. "
        "The lesion model weighs exactly these features; what it keeps is in the figures above."
    )


def _settings(table: Section) -> str:
    """The keys the config file sets, as written (defaults are not listed)."""
    return ", ".join(f"{k} {v}" for k, v in table.as_written().items())


def training_section(cfg: TrainingConfig, run: Path | None) -> str:
    """The configuration of the shipped weights and of every fold."""
    rc = cfg.run
    lines = [
        "## Training",
        f"Configuration `training/configs/{rc.name}.toml` (seed {rc.seed}, input size {rc.size}, "
        f"forward passes in {rc.amp}, network {_settings(cfg.network)}), `torch==2.13.0`:",
    ]
    for step in spec.MODEL_KEYS:
        lines.append(f"  - `{step}`: {_settings(cfg.steps[step])}")
    lines.append(f"  - `weight`: {_settings(cfg.weight)}")
    lines += [
        "",
        "No patient is held out for selection: every step trains its fixed number of iterations and keeps "
        "the last weights, in every fold and in the shipped run alike. Each batch holds more normal slices "
        "than hemorrhage slices (`negative_fraction`); normal slices at the vertex and the skull base are "
        "drawn more often (`edge_negative_weight`); augmentation imitates other scanners (noise, kernel "
        "sharpness, HU offset; `training.augment`).",
    ]
    if run is not None and (run / "train.log").is_file():
        lines.append(f"Shipped run: `{run}` ({_duration(run / 'train.log')}).")
    return "\n".join(lines)


def _duration(log: Path) -> str:
    stamps = [line[:19] for line in log.read_text().splitlines() if line[:4].isdigit()]
    if len(stamps) < 2:
        return "duration unknown"
    from datetime import datetime

    start, end = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in (stamps[0], stamps[-1]))
    return f"{(end - start).total_seconds() / 60:.0f} min on this machine's CPU"


def baselines_section(record: Path = Path("training/baselines/cpu")) -> str:
    """The paper's comparison from ``ich-model baselines``'s record, or a line saying it has not yet run."""
    head = "## Against the paper's four classifiers (DenseNet121, InceptionResNetV2, MobileNetV2, VGG19)"
    if not (record / "report.json").is_file():
        return f"{head}\nNot yet run (`ich-model baselines`, docs/baselines.md: no `{record}/report.json`)."
    from training.baselines.report import markdown_tables

    built = json.loads((record / "report.json").read_text())
    return f"{head}\nMade by `{built.get('command', 'ich-model baselines')}`.\n\n{markdown_tables(built)}"


CARD = """\
# Model card: ICH weighted ensemble ({version})

**Research use only. NOT FOR CLINICAL USE.** This model is not a medical device, has not been cleared by any
regulator, and must not inform the diagnosis or treatment of any patient.

Generated by `ich-model card` from the cross-validation record (`{cv}/`) and the model repository; edit
`training/model_card.py`, not this file.

## What it is
Five 2D U-Nets with Inception modules (`ich_unet_all`, `ich_unet_subtype`, `ich_unet_sdh`, `ich_unet_sah`,
`ich_unet_small`) and a weight model (`ich_weighting`) that gives each slice a softmax weight per base model
and fuses the five sigmoid maps (`FUSED`; `SLICE_PROB` is the maximum of its 3x3 grey opening). Input: four
windows of the HU slice (stroke L40/W40, brain L40/W80, bone L500/W3000, skull-stripped brain), resized to
{size}x{size} (`ich.preprocess.preprocess_volume`). ONNX files: {sizes}.

**Case decision** (`ich.scoring`): the pixels of FUSED above 0.5 form lesion candidates, connected in 3D
across adjacent slices; each is described by its volume, slices, peak and mean probability, the share of
base models that see it, its distance to bone, the brain area of its slice, its density and the share inside
the skull-stripped brain. A logistic regression on these features ({case_model_info}) gives each candidate a
probability; {case_score} `hemorrhage_volume_ml` is the reported mask at the source matrix, the very voxels
of the DICOM SEG. The paper's case score, the highest slice probability, is reported beside it as
`max_slice_probability`. Beside the call: the probability of each subtype from the candidates' location
and shape (`subtypes`, where measured) and the five base models' disagreement on the deciding candidate
(`uncertainty`).

## Data and attribution
Trained on the {patients} patients of this copy of **"Computed Tomography Images for Intracranial Hemorrhage
Detection and Segmentation"** (version 1.0.0, PhysioNet; 82 patients in all), by Hssayeni M. D., Croock
M. S., Salman A. D., Al-khafaji H. F., Yahya Z. A. and Ghoraani B.; described in *Intracranial Hemorrhage
Segmentation Using a Deep Convolutional Model*, Data 2020, 5(1):14. Licensed under the Creative Commons
Attribution 4.0 International licence (CC BY 4.0); these weights are derived from it and carry this
attribution.

The data: head CT of trauma patients, Al Hilla Teaching Hospital, Iraq, 2018, 5 mm slices, stored as 8-bit
JPEG renderings in a brain and a bone window with radiologists' hemorrhage masks and per-slice subtype labels.
Approximate HU are recovered from the two windows (`training/data/ct_ich.py`; patient 081's bone images are
shifted back by one slice, patient 050's bone-derived HU raised by 93 HU; a slice whose bone image is missing
is read from the brain window alone); pixel spacing is estimated from the skull width (assumed 150 mm), since
the field of view is not recorded.

## How it was measured
Patient-grouped {k}-fold cross-validation over all {patients} patients, stratified by "has hemorrhage"
(`ich-model cv`, folds in `{cv}/folds.json`, seed {seed}): each fold's five base models and weight model were
trained on the other folds' patients with the configuration below and predicted the fold's patients once.
The shipped weights were then trained on all {patients} patients with the same configuration, and the shipped
case model (lesion model, calibration, threshold, band) was fitted on every out-of-fold prediction. The
figures therefore describe the recipe on unseen patients of this dataset; the shipped weights saw more
patients than any fold's.

{figures}

## Subtypes
{subtypes}

## Uncertainty
{uncertainty}

## Where the false positives lie
{false_positives}

{baselines}

{training}

## How to reproduce
```bash
make install
.venv/bin/ich-model cv --data PATH/TO/ct-ich --config training/configs/{name}.toml      # runs/cv-{name}
.venv/bin/ich-model cv-report --run-dir runs/cv-{name} --data PATH/TO/ct-ich --out {cv}
.venv/bin/ich-model train --data PATH/TO/ct-ich --config training/configs/{name}.toml   # runs/{name}
.venv/bin/ich-model export --run runs/{name} --case-model {cv}/case_model.json --out model_repository
.venv/bin/ich-model card --cv {cv} --run runs/{name} --repo model_repository
```
Folds are resumable (`--folds 0,1`); a finished fold is skipped. Training is seeded per iteration. Every
exported graph is checked against PyTorch (max abs difference at most 1e-4). `ich-model evaluate --data
PATH` measures the shipped repository on any folder of CT-ICH patients or DICOM studies with masks.

## Intended use
Research and engineering: reproducing a weighted-ensemble ICH detector, testing serving infrastructure,
studying cases that are difficult for AI. Not for clinical use, triage, or any decision about a patient.

## Limitations
- **Specificity.** At the operating point, {flagged} normal heads in 10 were flagged out of fold, with a wide
  interval ({n_normal} normal patients). The false foci sit at the vertex (the brain a small disc inside
  bone), against the inner table of the vault, beside the petrous bone and in the temporal lobes by the middle
  cranial fossa; on another scanner's images (other kernels, noise, gantry tilt) expect more.
- Windowed 8-bit JPEG source: HU are approximate (coarse outside the brain window, JPEG artefacts); real
  DICOM input differs from the training distribution.
- Pixel spacing is estimated from the skull, so lesion volumes (mL) and the "small lesion" selection are
  approximate.
- Small data: {patients} patients from one hospital and one protocol; subdural, subarachnoid and
  intraventricular bleeds are rare (a handful of patients each).
- Trauma population (young, many fractures): performance on stroke or elderly populations is unknown.
- Input size {size}: small bleeds lose pixels when resized; masks are compared at that size.
- The calibration and the threshold were fitted on out-of-fold predictions of models trained on fewer
  patients than the shipped ones; the shipped models may score somewhat higher, so its calibration on new
  data should be checked (`ich-model evaluate` reports it).
"""


#: How each raw case score (``ich.scoring.SCORES``) makes the call and the mask, for the card's text.
CASE_SCORES: dict[str, str] = {
    "lesion": "the case score is the highest one, Platt-calibrated into `ich_probability`. Candidates whose "
    "calibrated probability reaches the threshold form the reported mask (so a positive case always shows "
    "what made it positive).",
    "burden": "the case score is the case's burden, the candidates' volumes (mL) weighted by their "
    "probabilities and summed, Platt-calibrated on its logarithm into `ich_probability`: many small "
    "confident foci weigh little, a bleed weighs its volume. In a positive case the fewest largest "
    "candidates whose burden reaches the threshold form the reported mask (so a positive case always "
    "shows what made it positive).",
    "max_slice": "the case score is the paper's highest slice probability, Platt-calibrated into "
    "`ich_probability`; candidates whose opened map reaches the threshold form the reported mask.",
}


def render(cv: Path, repo: Path, run: Path | None = None) -> str:
    """The whole card as Markdown."""
    report = json.loads((cv / "report.json").read_text())
    cfg = load_config(cv / "config.toml")
    folds = json.loads((cv / "folds.json").read_text())
    model = CaseModel.load(repo / CASE_MODEL_FILENAME) if (repo / CASE_MODEL_FILENAME).is_file() else None
    records = Records.read(cv)
    sizes = []
    for name in repository.model_names():
        try:
            path = repository.step_model_file(repo, name)
        except repository.RepositoryError:
            continue
        sizes.append(f"`{name}` {path.stat().st_size / 1e6:.2f} MB")
    op = report["operating_point"]
    info = (
        "no case model"
        if model is None
        else f"{model.info.get('lesion_candidates', '?')} out-of-fold candidates"
    )
    return CARD.format(
        version=repository.read_version(repo) if (repo / "VERSION").is_file() else "unknown",
        cv=os.path.relpath(cv.resolve(), Path.cwd()) if cv.is_absolute() else cv.as_posix(),
        size=cfg.run.size,
        sizes=", ".join(sizes) or "n/a",
        case_model_info=info,
        case_score=CASE_SCORES[model.score]
        if model is not None
        else "the case score is the highest slice probability (no case model).",
        k=folds["k"],
        seed=folds["seed"],
        patients=report["patients"],
        figures=figures_section(report, model),
        false_positives=false_positive_section(records, report, model),
        subtypes=subtype_section(report, model),
        uncertainty=uncertainty_section(report),
        training=training_section(cfg, run),
        baselines=baselines_section(),
        name=cfg.run.name,
        flagged=_f(op["normal_heads_flagged_per_10"], 1),
        n_normal=op["specificity"]["n"],
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ich-model card``."""
    parser.add_argument(
        "--cv", type=Path, default=Path("training/cv/default"), help="cv-report output folder"
    )
    parser.add_argument("--repo", type=Path, default=Path("model_repository"), help="the model repository")
    parser.add_argument("--run", type=Path, default=None, help="the shipped training run (for its duration)")
    parser.add_argument("--out", type=Path, default=None, help="default: <repo>/MODEL_CARD.md")


def run(args: argparse.Namespace) -> int:
    """Write the card; 2 when the cross-validation record is missing."""
    missing = [n for n in ("report.json", "config.toml", "folds.json") if not (args.cv / n).is_file()]
    if missing:
        logger.error("card: %s lacks %s (run ich-model cv-report first)", args.cv, ", ".join(missing))
        return 2
    out = args.out or args.repo / "MODEL_CARD.md"
    try:
        card = render(args.cv, args.repo, args.run)
    except ConfigError as err:
        logger.error("card: %s", err)
        return 2
    out.write_text(card, encoding="utf-8")
    logger.info("card: wrote %s", out)
    return 0
