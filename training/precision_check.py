"""``ich-model precision-check``: may a reduced-precision repository replace the FP32 one?

Both repositories run on the same patients through the evaluation of ``ich-model evaluate`` (the same
reader, preprocessing, runner, scoring and figures), and the candidate passes when its slice AUC is within
``--max-auc-drop`` (0.005) of the reference's and both Dice figures (candidate lesions and kept lesions,
pooled over the slices with hemorrhage) within ``--max-dice-drop`` (0.01). Only a drop counts: a candidate
that scores higher passes. The figures of both and the verdict are printed and written to ``--out``.

    ich-model precision-check --reference model_repository --candidate model_repository_int8 \\
        --data PATH/TO/ct-ich --limit 10 --out precision.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ich import repository
from ich.ensemble import EnsembleRunner
from training.evaluate import BaseAlone, collect, read_case_model

logger = logging.getLogger(__name__)

MAX_AUC_DROP = 0.005
MAX_DICE_DROP = 0.01
#: The compared figures: name -> (path in the report of ``training.oof_report.figures``, allowed drop).
CHECKS: dict[str, tuple[tuple[str, ...], str]] = {
    "slice_auc": (("models", "ensemble", "slice", "auc"), "auc"),
    "dice_candidates": (("dice", "candidates", "micro"), "dice"),
    "dice_kept_lesions": (("dice", "kept_lesions", "micro"), "dice"),
}


def repository_figures(root: Path, data: Path, cases: list[str], threads: int | None) -> dict[str, Any]:
    """Slice AUC and Dice of the repository at ``root`` on ``cases`` of ``data``."""
    from training.case_model import apply_case_model, paper_rule
    from training.oof_report import figures

    runner = EnsembleRunner.from_repository(root, intra_op_threads=threads)
    case_model = read_case_model(root)
    opening = case_model.opening if case_model is not None else 3
    records, skipped = collect(data, runner, BaseAlone(root, threads), cases, opening)
    if not records.cases:
        raise ValueError(f"no case of {data} could be read")
    scored = apply_case_model(case_model, records, None) if case_model else paper_rule(records, 0.5)
    report = figures(records, scored)
    values: dict[str, Any] = {"model_version": runner.model_version, "cases": len(records.cases)}
    for name, (path, _kind) in CHECKS.items():
        value: Any = report
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        values[name] = value
    values["skipped"] = skipped
    return values


def verdict(
    reference: dict[str, Any], candidate: dict[str, Any], max_auc_drop: float, max_dice_drop: float
) -> dict[str, Any]:
    """Per figure: both values, the drop, the allowed drop and whether it holds; ``passed`` for all."""
    rows: dict[str, Any] = {}
    for name, (_path, kind) in CHECKS.items():
        ref, cand = reference.get(name), candidate.get(name)
        allowed = max_auc_drop if kind == "auc" else max_dice_drop
        if ref is None or cand is None:
            rows[name] = {"reference": ref, "candidate": cand, "allowed_drop": allowed, "ok": ref == cand}
            continue
        drop = float(ref) - float(cand)
        rows[name] = {
            "reference": ref,
            "candidate": cand,
            "drop": drop,
            "allowed_drop": allowed,
            "ok": drop <= allowed,
        }
    return {"checks": rows, "passed": all(row["ok"] for row in rows.values())}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ich-model precision-check``."""
    parser.add_argument("--reference", type=Path, required=True, help="the FP32 repository")
    parser.add_argument("--candidate", type=Path, required=True, help="the reduced-precision repository")
    parser.add_argument("--data", type=Path, required=True, help="cases with masks (CT-ICH or DICOM layout)")
    parser.add_argument("--patients", nargs="+", default=None, help="case ids (default: all, or --limit)")
    parser.add_argument("--limit", type=int, default=None, help="the first N cases only")
    parser.add_argument("--max-auc-drop", type=float, default=MAX_AUC_DROP)
    parser.add_argument("--max-dice-drop", type=float, default=MAX_DICE_DROP)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="write both repositories' figures as JSON")


def run(args: argparse.Namespace) -> int:
    """0 when the candidate passes, 1 when it does not, 2 on bad input."""
    from training.data.cases import list_cases
    from training.evaluate import match_patients

    try:
        available = list_cases(Path(args.data))
        cases = match_patients(args.patients, available) if args.patients else available
        cases = cases[: args.limit] if args.limit else cases
        if not cases:
            raise ValueError(f"no cases in {args.data}")
        figures = {
            role: repository_figures(root, Path(args.data), cases, args.threads)
            for role, root in (("reference", args.reference), ("candidate", args.candidate))
        }
    except (OSError, ValueError, repository.RepositoryError) as exc:
        logger.error("%s", exc)
        return 2
    result = {
        **figures,
        **verdict(figures["reference"], figures["candidate"], args.max_auc_drop, args.max_dice_drop),
    }
    for name, row in result["checks"].items():
        logger.info(
            "%-18s reference %s candidate %s (allowed drop %g): %s",
            name,
            row["reference"],
            row["candidate"],
            row["allowed_drop"],
            "ok" if row["ok"] else "FAILS",
        )
    logger.info("%s on %d cases", "PASSED" if result["passed"] else "FAILED", figures["reference"]["cases"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0 if result["passed"] else 1
