"""``ich-model evaluate``: run the exported ensemble on cases with masks and write a JSON report.

What runs is exactly what the gateway's embedded engine runs: :class:`ich.ensemble.EnsembleRunner` on the
repository's ONNX files, fed by :func:`ich.preprocess.preprocess_volume` at the repository's input size, then
the repository's case decision (:mod:`ich.scoring` with ``case_model.json``; the paper's maximum slice
probability for a repository without one). Cases are read one at a time (``training.data.cases``: the CT-ICH
layout or DICOM studies with NIfTI/SEG masks) and only their records (:mod:`training.records`) are kept.
A case that cannot be read is reported under ``skipped`` with the reason, and the rest are evaluated.

Figures are those of :func:`training.oof_report.figures`, the same code as the cross-validation report:

* slice label: hemorrhage in ``hemorrhage_diagnosis.csv`` or in the mask; slice score: ``SLICE_PROB``.
* case = patient; label = any positive slice; ``ich_probability`` the case decision's probability and
  ``max_slice_probability`` the paper's; ``operating_point`` at the repository's threshold (``--threshold``
  overrides it), with exact 95% intervals.
* calibration: Brier score, expected calibration error (10 equal-width bins), a reliability diagram.
* AUC intervals: patient bootstrap (slices) or case bootstrap, 1000 replicates, seed 0.
* subtypes (with a subtype model in the repository's case model): per subtype, case and slice AUC with
  intervals and the counts, or why it is not measured; uncertainty: whether wrong calls have a high
  ensemble disagreement (``training.oof_report.uncertainty_figures``).
* Dice: per-slice Dice on slices with hemorrhage in the ground truth, averaged per patient, then over patients
  (Hssayeni et al. 2020), at the model input size; ``kept_lesions`` is the reported mask, ``candidates``
  FUSED > 0.5; each base model alone: its map > 0.5, its slice score the same opening as the ensemble's.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ich import repository, spec
from ich.ensemble import EnsembleRunner
from ich.preprocess import preprocess_volume, resize_channel
from ich.scoring import CASE_MODEL_FILENAME, CaseModel, model_pixel_mm
from training.case_model import ScoredCase, apply_case_model, paper_rule
from training.records import CasePrediction, Records, case_records, subtypes_from_ct_ich
from training.subtype_model import apply_subtype_model

logger = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPLIT_FILE = _REPO_ROOT / "training" / "configs" / "split.json"


def default_repository() -> Path:
    """The checkout's ``model_repository/`` (beside ``training/``), else ``./model_repository``."""
    beside = _REPO_ROOT / "model_repository"
    return beside if beside.is_dir() else Path.cwd() / "model_repository"


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Ground-truth masks ``[N, H, W]`` -> ``[N, S, S]`` bool with the images' resize, thresholded at 0.5."""
    return np.stack([resize_channel(m.astype(np.float32), size) >= 0.5 for m in masks])


def _patient_key(value: str) -> str:
    """Compare patient ids by number when numeric, so "49", "049" and 49 in a split file all match."""
    value = value.strip()
    return str(int(value)) if value.isdigit() else value


def match_patients(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Folder names of the ``requested`` patients, in request order.

    Raises:
        ValueError: some requested patients have no folder.
    """
    folders = {_patient_key(name): name for name in available}
    absent = [p for p in requested if _patient_key(p) not in folders]
    if absent:
        raise ValueError(f"patients not found: {', '.join(absent)}")
    return [folders[_patient_key(p)] for p in requested]


def patients_from_split(split_file: Path, subset: str) -> list[str]:
    """Patient ids of ``subset`` in a split file: ``{"val": [...]}`` or ``{"subsets": {"val": [...]}}``."""
    data = json.loads(Path(split_file).read_text(encoding="utf-8"))
    holder = data.get("subsets", data) if isinstance(data, dict) else {}
    ids = holder.get(subset) if isinstance(holder, dict) else None
    if not isinstance(ids, list) or not ids:
        raise ValueError(f"{split_file}: no patient list for subset {subset!r}")
    return [str(v) for v in ids]


class BaseAlone:
    """The weight model's ONNX fed one base map on all five inputs: that map's post-processed maximum.

    The weights sum to one, so FUSED equals that map and SLICE_PROB is its maximum after the very opening
    the ensemble applies: each base model alone is scored by the ensemble's own post-processing.
    """

    def __init__(self, root: Path, intra_op_threads: int | None) -> None:
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        path = repository.step_model_file(root, spec.WEIGHTING_MODEL)
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [spec.WEIGHTING_INPUTS[key] for key in spec.MODEL_KEYS]

    def slice_prob(self, prob_map: np.ndarray) -> np.ndarray:
        """``[N, 1, S, S]`` -> ``[N]``."""
        (slice_prob,) = self._session.run([spec.SLICE_PROB], {name: prob_map for name in self._inputs})
        return np.asarray(slice_prob).reshape(-1)


def read_case_model(root: Path) -> CaseModel | None:
    """The repository's case model, or ``None`` (the paper's rule) when it has none."""
    path = Path(root) / CASE_MODEL_FILENAME
    return CaseModel.load(path) if path.is_file() else None


def collect(
    data: Path, runner: EnsembleRunner, base_alone: BaseAlone, cases: Sequence[str], opening: int = 3
) -> tuple[Records, list[dict[str, str]]]:
    """Score every readable case (one at a time); the others are returned with the reason."""
    from training.data.cases import CaseReadError, read_case, read_case_labels

    labels = read_case_labels(data)
    size = runner.input_size
    records, skipped = Records(), []
    for i, case_id in enumerate(cases, 1):
        try:
            case = read_case(data, case_id, labels)
        except CaseReadError as exc:
            logger.warning("case %d/%d skipped: %s", i, len(cases), exc.reason)
            skipped.append({"case": case_id, "reason": exc.reason})
            continue
        images = preprocess_volume(case.hu, size)
        result = runner.run(images)
        pixel_mm = model_pixel_mm(case.pixel_spacing_mm, (case.hu.shape[1], case.hu.shape[2]), size)
        records.extend(
            case_records(
                CasePrediction(
                    case_id=case_id,
                    fold=0,
                    fused=result.fused[:, 0],
                    probs=np.concatenate([result.probs[k] for k in spec.MODEL_KEYS], axis=1),
                    slice_prob=result.slice_prob.reshape(-1),
                    images=images,
                    truth=resize_masks(case.masks, size),
                    slice_labels=np.asarray(case.slice_labels, dtype=np.int64),
                    pixel_mm=pixel_mm,
                    voxel_ml=pixel_mm[0] * pixel_mm[1] * case.slice_thickness_mm / 1000.0,
                    opening=opening,
                    model_slice_prob=np.stack(
                        [base_alone.slice_prob(result.probs[k]) for k in spec.MODEL_KEYS], 1
                    ),
                    slice_subtypes=subtypes_from_ct_ich(case.subtypes, case.slice_labels),
                )
            )
        )
        logger.info(
            "case %d/%d: %d slices%s",
            i,
            len(cases),
            images.shape[0],
            f" ({len(case.warnings)} reader warnings)" if case.warnings else "",
        )
    return records, skipped


def write_predictions(scored: Sequence[ScoredCase], path: Path) -> None:
    """Case-level predictions CSV (``case``, ``probability``, ``label``, ``uncertainty``): the input of
    ``review select``.

    Written from the decisions, not from the report, whose probabilities are rounded to 4 decimals: a
    probability of 0.49996 must not read as a call at 0.5 in the worklist.
    """
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "probability", "label", "uncertainty"])
        for case in scored:
            u = "" if case.uncertainty is None else f"{float(case.uncertainty):.6f}"
            writer.writerow([case.case, f"{float(case.probability):.6f}", int(case.label), u])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ich-model evaluate``."""
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="CT-ICH layout (Patients_CT/...) or DICOM cases with masks (<case>/dicom, mask)",
    )
    parser.add_argument("--out", type=Path, required=True, help="report JSON to write")
    parser.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="model repository (default: the project's model_repository/)",
    )
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--patients", nargs="+", default=None, help="case ids (default: all in --data)")
    chosen.add_argument("--subset", default=None, help="subset of --split-file to evaluate")
    parser.add_argument("--split-file", type=Path, default=DEFAULT_SPLIT_FILE, help="patient split JSON")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold (default: the repository's operating point)",
    )
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")


def _cases(args: argparse.Namespace) -> list[str]:
    from training.data.cases import list_cases

    available = list_cases(Path(args.data))
    if args.subset:
        cases = match_patients(patients_from_split(args.split_file, args.subset), available)
    elif args.patients:
        cases = match_patients(args.patients, available)
    else:
        cases = available
    if not cases:
        raise ValueError(f"no cases in {args.data}")
    return cases


def _decide(
    case_model: CaseModel | None, records: Records, threshold: float | None
) -> tuple[list[ScoredCase], float]:
    """The case model's decisions and threshold; the paper's maximum-slice rule without a case model."""
    if case_model is not None:
        return apply_case_model(case_model, records, threshold), (
            case_model.threshold if threshold is None else threshold
        )
    chosen = 0.5 if threshold is None else threshold
    return paper_rule(records, chosen), chosen


def _log_summary(report: dict[str, Any], skipped: int, out: Path) -> None:
    op = report["operating_point"]
    logger.info(
        "case AUC %s (max slice %s), sensitivity %s, specificity %s, Dice %s; %d skipped -> %s",
        report["case"]["ich_probability"]["auc"],
        report["case"]["max_slice_probability"]["auc"],
        op["sensitivity"]["value"],
        op["specificity"]["value"],
        report["dice"]["kept_lesions"]["per_patient"],
        skipped,
        out,
    )


def run(args: argparse.Namespace) -> int:
    """Evaluate; write the report, its records, the figures and the predictions CSV beside it."""
    from training.oof_report import figures

    try:
        cases = _cases(args)
        root = args.repository or default_repository()
        runner = EnsembleRunner.from_repository(root, intra_op_threads=args.threads)
        base_alone = BaseAlone(root, args.threads)
        case_model = read_case_model(root)
    except (OSError, ValueError, repository.RepositoryError) as exc:
        logger.error("%s", exc)
        return 2
    logger.info("evaluating %d cases at input size %d", len(cases), runner.input_size)
    opening = case_model.opening if case_model is not None else 3
    records, skipped = collect(Path(args.data), runner, base_alone, cases, opening)
    if not records.cases:
        logger.error("no case of %s could be read", args.data)
        return 1
    scored, threshold = _decide(case_model, records, args.threshold)
    out = Path(args.out)
    extra = out.with_name(out.stem + "_files")
    subtypes = (
        (apply_subtype_model(case_model, records), [case_model])
        if case_model is not None and case_model.subtypes is not None
        else None
    )
    report = figures(records, scored, extra, subtypes, [threshold] * len(scored))
    records.write(extra)
    pred_path = out.with_name(out.stem + "_predictions.csv")
    report["meta"] = {
        "model_version": runner.model_version,
        "input_size": runner.input_size,
        "decision": "case model" if case_model is not None else "maximum slice probability",
        "threshold": threshold,
        "cases_evaluated": len(records.cases),
        "skipped": skipped,
        "subset": args.subset,
        "files": extra.name,
        "predictions": pred_path.name,
    }
    report["definitions"] = (__doc__ or "").split("the cross-validation report:")[-1].strip()
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    write_predictions(scored, pred_path)
    _log_summary(report, len(skipped), out)
    return 0
