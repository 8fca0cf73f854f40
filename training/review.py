"""``ich-model review``: the difficult-case study of the paper's section 2.3, runnable on a hospital's cases.

Two steps with a reading session in between:

1. ``select`` reads the predictions that ``ich-model evaluate`` writes (``case, probability, label`` and
   optionally ``readers_disagreed`` and ``uncertainty``) and writes a worklist of the cases that are
   difficult for the model (a hemorrhage scored at or below ``--high``, a normal scan scored at or above
   ``--low``), uncertain for it (the five base models disagree: ``--uncertain-above``, ``--most-uncertain``;
   this needs no label, so it also picks cases before anyone has read them) or were difficult for the
   original annotators (``readers_disagreed = 1``).
2. Experts re-read the worklist blind; their reads come back as ``case, reader, label``.
3. ``score`` measures the readers and the model on the worklist, their agreement (Fleiss' kappa), settles a
   revised truth by majority vote and measures everyone again against it. It writes ``report.json`` and a
   Markdown summary beside it (same name, ``.md``).

Bad input files end with one line on stderr and exit status 2, never a traceback: this is run by clinical
teams, not developers. Only counts are logged; case identifiers appear only in the files the user asked for
and in error messages about the user's own files.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ich.spec import INDETERMINATE_BAND
from training.agreement import (
    CaseConsensus,
    ConsensusStatus,
    binary_scores,
    binary_table,
    fleiss_kappa,
    majority_consensus,
    validate_majority,
)

logger = logging.getLogger(__name__)

#: Reasons written in the worklist's ``reasons`` column (several are joined with ``;``).
REASON_AI = "difficult_for_ai"
REASON_HUMANS = "difficult_for_humans"
REASON_UNCERTAIN = "uncertain_for_ai"
#: Case probability at or above which the model's call is "hemorrhage" (the gateway's default threshold).
DEFAULT_THRESHOLD = 0.5
DEFAULT_MAJORITY = 4
#: How many offending values an error message quotes before it just counts the rest.
_QUOTE = 5

TIE_RULE = "an even panel split exactly in half: the original label stands; discuss at the consensus meeting"
NO_MAJORITY_RULE = (
    "neither label reaches --majority votes (and not a tie): the original label stands; discuss at the "
    "consensus meeting"
)


class ReviewInputError(ValueError):
    """A problem with the user's files or options, reported as one line and exit status 2."""


# --------------------------------------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``select`` and ``score`` sub-subcommands."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="{select,score}")

    sel = sub.add_parser("select", help="write the worklist of difficult cases from evaluate's predictions")
    sel.add_argument(
        "--predictions", type=Path, required=True, help="CSV: case, probability, label[, readers_disagreed]"
    )
    sel.add_argument("--out", type=Path, required=True, help="worklist CSV to write")
    sel.add_argument(
        "--low",
        type=float,
        default=INDETERMINATE_BAND[0],
        help="label-0 cases with probability >= LOW are difficult for AI (default %(default)s)",
    )
    sel.add_argument(
        "--high",
        type=float,
        default=INDETERMINATE_BAND[1],
        help="label-1 cases with probability <= HIGH are difficult for AI (default %(default)s)",
    )

    sel.add_argument(
        "--uncertain-above",
        type=float,
        default=None,
        help="cases whose uncertainty (evaluate's ensemble disagreement) is >= this are uncertain for AI",
    )
    sel.add_argument(
        "--most-uncertain",
        type=int,
        default=None,
        help="the N cases with the highest uncertainty are uncertain for AI (ties: file order)",
    )

    sco = sub.add_parser("score", help="score expert re-reads of a worklist; settle the truth by majority")
    sco.add_argument("--worklist", type=Path, required=True, help="worklist CSV written by `select`")
    sco.add_argument(
        "--reads", type=Path, required=True, help="CSV: case, reader, label (every reader, every case)"
    )
    sco.add_argument("--out", type=Path, required=True, help="report JSON; a Markdown summary goes beside it")
    sco.add_argument(
        "--majority",
        type=int,
        default=DEFAULT_MAJORITY,
        help="readers needed to overturn (or confirm) an original label (default %(default)s, the paper)",
    )
    sco.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="model probability at or above which it calls hemorrhage (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``select`` or ``score``; input problems become a message on stderr and exit status 2."""
    try:
        if args.action == "select":
            return _run_select(args)
        return _run_score(args)
    except ReviewInputError as exc:
        sys.stderr.write(f"ich-model review {args.action}: error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"ich-model review {args.action}: error: {exc.strerror or exc}: {exc.filename}\n")
        return 2


# ----------------------------------------------------------------------------------------------- parsing


def _quote(values: Iterable[str]) -> str:
    items = list(values)
    shown = ", ".join(repr(v) for v in items[:_QUOTE])
    return shown + (f" and {len(items) - _QUOTE} more" if len(items) > _QUOTE else "")


def _read_rows(path: Path, required: Sequence[str]) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    """Read a CSV into (line number, row) pairs after checking the header has the ``required`` columns."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not header:
            raise ReviewInputError(f"{path}: the file is empty (expected columns {', '.join(required)})")
        reader.fieldnames = header
        missing = [c for c in required if c not in header]
        if missing:
            raise ReviewInputError(
                f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header)}"
            )
        rows: list[tuple[int, dict[str, str]]] = []
        for row in reader:
            if None in row:
                raise ReviewInputError(f"{path}, line {reader.line_num}: more fields than columns")
            clean = {k: (v or "").strip() for k, v in row.items()}
            if not any(clean.values()):
                continue  # a blank line
            rows.append((reader.line_num, clean))
    if not rows:
        raise ReviewInputError(f"{path}: no data rows")
    return rows, header


def _parse_label(value: str, where: str, column: str = "label") -> int:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if number not in (0.0, 1.0):
        raise ReviewInputError(f"{where}: {column} must be 0 or 1, got {value!r}")
    return int(number)


def _parse_probability(value: str, where: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ReviewInputError(f"{where}: probability must be a number in [0, 1], got {value!r}")
    return number


def _parse_case(value: str, where: str) -> str:
    if not value:
        raise ReviewInputError(f"{where}: empty case")
    return value


@dataclass(frozen=True)
class Prediction:
    """One case of evaluate's predictions (or of a worklist)."""

    case: str
    probability: float
    label: int
    probability_text: str  # written back unchanged so the worklist keeps evaluate's precision
    readers_disagreed: int | None = None
    reasons: tuple[str, ...] = ()
    #: the ensemble's disagreement (``uncertainty`` column, blank: not known)
    uncertainty: float | None = None
    uncertainty_text: str = ""


def read_predictions(path: Path) -> tuple[list[Prediction], bool]:
    """Read ``case, probability, label[, readers_disagreed][, reasons]``.

    Returns:
        the cases in file order, and whether the file had a ``readers_disagreed`` column. A blank
        ``readers_disagreed`` means "not known" (a dataset without the original annotators' votes) and
        never selects the case as difficult for humans.

    Raises:
        ReviewInputError: missing columns, malformed values, duplicate cases.
    """
    rows, header = _read_rows(path, ("case", "probability", "label"))
    has_disagreed = "readers_disagreed" in header
    seen: dict[str, int] = {}
    out: list[Prediction] = []
    for line, row in rows:
        where = f"{path}, line {line}"
        case = _parse_case(row["case"], where)
        if case in seen:
            raise ReviewInputError(f"{where}: case {case!r} appears again (first on line {seen[case]})")
        seen[case] = line
        disagreed: int | None = None
        if has_disagreed and row["readers_disagreed"]:
            disagreed = _parse_label(row["readers_disagreed"], where, "readers_disagreed")
        reasons = tuple(r.strip() for r in row.get("reasons", "").split(";") if r.strip())
        uncertainty_text = row.get("uncertainty", "")
        out.append(
            Prediction(
                case=case,
                probability=_parse_probability(row["probability"], where),
                label=_parse_label(row["label"], where),
                probability_text=row["probability"],
                readers_disagreed=disagreed,
                reasons=reasons,
                uncertainty=_parse_uncertainty(uncertainty_text, where) if uncertainty_text else None,
                uncertainty_text=uncertainty_text,
            )
        )
    return out, has_disagreed


def _parse_uncertainty(value: str, where: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number >= 0.0):
        raise ReviewInputError(f"{where}: uncertainty must be a number >= 0, got {value!r}")
    return number


def read_reads(path: Path, cases: Sequence[str]) -> dict[str, dict[str, int]]:
    """Read ``case, reader, label`` and check every reader read every worklist case exactly once.

    Returns:
        reader -> case -> label, readers in order of first appearance.

    Raises:
        ReviewInputError: missing columns, empty reader, labels other than 0/1, duplicate reads, cases that
            are not on the worklist, readers who skipped cases, fewer than two readers.
    """
    rows, _ = _read_rows(path, ("case", "reader", "label"))
    known = set(cases)
    reads: dict[str, dict[str, int]] = {}
    unknown: dict[str, None] = {}
    for line, row in rows:
        where = f"{path}, line {line}"
        case = _parse_case(row["case"], where)
        reader = row["reader"]
        if not reader:
            raise ReviewInputError(f"{where}: empty reader")
        label = _parse_label(row["label"], where)
        if case not in known:
            unknown[case] = None
            continue
        per_reader = reads.setdefault(reader, {})
        if case in per_reader:
            raise ReviewInputError(f"{where}: reader {reader!r} read case {case!r} twice")
        per_reader[case] = label
    if unknown:
        raise ReviewInputError(f"{path}: {len(unknown)} case(s) not on the worklist: {_quote(unknown)}")
    incomplete = []
    for reader, per_reader in reads.items():
        missing = [c for c in cases if c not in per_reader]
        if missing:
            incomplete.append(f"reader {reader!r} is missing {len(missing)} case(s): {_quote(missing)}")
    if incomplete:
        raise ReviewInputError(
            f"{path}: every reader must read every worklist case; " + "; ".join(incomplete)
        )
    if len(reads) < 2:
        raise ReviewInputError(f"{path}: the review needs at least two readers, found {len(reads)}")
    return reads


# ------------------------------------------------------------------------------------------------ select


def difficulty_reasons(p: Prediction, low: float, high: float, uncertain: bool = False) -> tuple[str, ...]:
    """Why a case belongs on the worklist (empty: it does not). Both bounds are inclusive, as in the paper.

    ``uncertain``: the case was chosen by its uncertainty (:func:`uncertain_cases`).
    """
    reasons: list[str] = []
    if (p.label == 1 and p.probability <= high) or (p.label == 0 and p.probability >= low):
        reasons.append(REASON_AI)
    if uncertain:
        reasons.append(REASON_UNCERTAIN)
    if p.readers_disagreed == 1:
        reasons.append(REASON_HUMANS)
    return tuple(reasons)


def uncertain_cases(predictions: Sequence[Prediction], above: float | None, most: int | None) -> set[str]:
    """Cases chosen by uncertainty: at or above ``above``, and/or the ``most`` highest (ties: file order).

    Raises:
        ReviewInputError: an uncertainty option without an ``uncertainty`` value for every case.
    """
    if above is None and most is None:
        return set()
    unknown = [p.case for p in predictions if p.uncertainty is None]
    if unknown:
        raise ReviewInputError(
            f"--uncertain-above/--most-uncertain need an uncertainty for every case; missing for "
            f"{len(unknown)} case(s): {_quote(unknown)} (evaluate writes the column)"
        )
    chosen = {p.case for p in predictions if above is not None and (p.uncertainty or 0.0) >= above}
    if most is not None:
        ranked = sorted(enumerate(predictions), key=lambda ip: (-(ip[1].uncertainty or 0.0), ip[0]))
        chosen |= {p.case for _, p in ranked[:most]}
    return chosen


def _check_unit(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ReviewInputError(f"{name} must lie in [0, 1], got {value}")


def _run_select(args: argparse.Namespace) -> int:
    _check_unit("--low", args.low)
    _check_unit("--high", args.high)
    if args.uncertain_above is not None and not (
        math.isfinite(args.uncertain_above) and args.uncertain_above >= 0
    ):
        raise ReviewInputError(f"--uncertain-above must be a number >= 0, got {args.uncertain_above}")
    if args.most_uncertain is not None and args.most_uncertain < 0:
        raise ReviewInputError(f"--most-uncertain must be >= 0, got {args.most_uncertain}")
    predictions, has_disagreed = read_predictions(args.predictions)
    uncertain = uncertain_cases(predictions, args.uncertain_above, args.most_uncertain)
    selected = [(p, difficulty_reasons(p, args.low, args.high, p.case in uncertain)) for p in predictions]
    selected = [(p, r) for p, r in selected if r]
    if not selected:
        # An empty worklist is a legitimate answer, but never a silent one (options can exclude everything,
        # e.g. --low above every normal case's probability and --high below every hemorrhage case's).
        logger.warning(
            "review select: no case met the criteria (--low %s, --high %s, --uncertain-above %s, "
            "--most-uncertain %s); the worklist is empty", args.low, args.high, args.uncertain_above,
            args.most_uncertain,
        )
    has_uncertainty = any(p.uncertainty is not None for p in predictions)
    columns = ["case", "probability", "label", *(["readers_disagreed"] if has_disagreed else [])]
    columns += [*(["uncertainty"] if has_uncertainty else []), "reasons"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for p, reasons in selected:
            disagreed = (
                [] if not has_disagreed else ["" if p.readers_disagreed is None else p.readers_disagreed]
            )
            uncertainty = [p.uncertainty_text] if has_uncertainty else []
            writer.writerow(
                [p.case, p.probability_text, p.label, *disagreed, *uncertainty, ";".join(reasons)]
            )
    n_ai = sum(REASON_AI in r for _, r in selected)
    n_uncertain = sum(REASON_UNCERTAIN in r for _, r in selected)
    n_humans = sum(REASON_HUMANS in r for _, r in selected)
    logger.info(
        "worklist: %d of %d cases (%d difficult for AI, %d uncertain for AI, %d difficult for humans) -> %s",
        len(selected),
        len(predictions),
        n_ai,
        n_uncertain,
        n_humans,
        args.out,
    )
    return 0


# ------------------------------------------------------------------------------------------------- score


def build_report(
    worklist: Sequence[Prediction], reads: dict[str, dict[str, int]], majority: int, threshold: float
) -> dict[str, Any]:
    """Compute the study's figures; see docs/review.md for each field.

    Raises:
        ReviewInputError: ``majority`` is not a reachable majority of the readers.
    """
    cases = [p.case for p in worklist]
    readers = list(reads)
    try:
        validate_majority(majority, len(readers))
    except ValueError as exc:
        raise ReviewInputError(str(exc)) from None
    original = np.array([p.label for p in worklist], dtype=np.int64)
    model_calls = np.array([p.probability >= threshold for p in worklist], dtype=np.int64)
    calls = {r: np.array([reads[r][c] for c in cases], dtype=np.int64) for r in readers}
    votes = np.sum(np.stack([calls[r] for r in readers]), axis=0)
    verdicts: list[CaseConsensus] = majority_consensus(votes, len(readers), original, majority)
    revised = np.array([v.revised_label for v in verdicts], dtype=np.int64)
    kappa = fleiss_kappa(binary_table(votes, len(readers)))

    def panel(truth: np.ndarray) -> dict[str, Any]:
        return {
            "readers": {r: binary_scores(truth, calls[r]).as_dict() for r in readers},
            "model": binary_scores(truth, model_calls).as_dict(),
        }

    before, after = panel(original), panel(revised)
    agreement = [_agreement_row(p, v) for p, v in zip(worklist, verdicts, strict=True)]

    def listed(status: ConsensusStatus) -> list[dict[str, Any]]:
        return [
            {k: a[k] for k in ("case", "votes_hemorrhage", "readers", "original_label", "revised_label")}
            for a in agreement
            if a["status"] == status
        ]

    return {
        "cases": len(cases),
        "n_readers": len(readers),
        "majority": majority,
        "threshold": threshold,
        "fleiss_kappa": None if math.isnan(kappa) else kappa,
        "unanimous_cases": sum(v.unanimous for v in verdicts),
        "readers": before["readers"],
        "model": before["model"],
        "agreement": agreement,
        "consensus_changed": listed(ConsensusStatus.OVERTURNED),
        "ties": listed(ConsensusStatus.TIE),
        "no_majority": listed(ConsensusStatus.NO_MAJORITY),
        "revised": after,
        "rules": _rules(majority, len(readers), threshold),
    }


def _agreement_row(p: Prediction, v: CaseConsensus) -> dict[str, Any]:
    """One case's votes, labels and consensus status in the report."""
    return {
        "case": p.case,
        "votes_hemorrhage": v.votes_positive,
        "readers": v.readers,
        "original_label": v.original_label,
        "revised_label": v.revised_label,
        "status": str(v.status),
        "reasons": list(p.reasons),
    }


def _rules(majority: int, n_readers: int, threshold: float) -> dict[str, str]:
    """The rule behind each list and call of the report, in words."""
    return {
        "consensus_changed": f"at least {majority} of {n_readers} readers chose the opposite label",
        "ties": TIE_RULE,
        "no_majority": NO_MAJORITY_RULE,
        "model_call": f"probability >= {threshold}",
        "undefined_rate": "null when its denominator is zero (no positive or no negative cases)",
    }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    """A one-page summary for the consensus meeting; the JSON is the record."""
    kappa = report["fleiss_kappa"]
    lines = [
        "# Difficult-case review",
        "",
        f"- Cases: {report['cases']}; readers: {report['n_readers']}; majority to overturn: "
        f"{report['majority']}; model threshold: {report['threshold']}",
        f"- Fleiss' kappa: {'undefined (one label only)' if kappa is None else f'{kappa:.3f}'}",
        f"- Unanimous cases: {report['unanimous_cases']} of {report['cases']}",
        f"- Ground truth changed by majority: {len(report['consensus_changed'])}; ties: "
        f"{len(report['ties'])}; no majority: {len(report['no_majority'])} (original label kept)",
        "",
        "| | accuracy | sensitivity | specificity | revised accuracy | revised sensitivity | "
        "revised specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [("model", report["model"], report["revised"]["model"])]
    rows += [(f"reader {r}", s, report["revised"]["readers"][r]) for r, s in report["readers"].items()]
    for name, a, b in rows:
        figures = [_fmt(d[k]) for d in (a, b) for k in ("accuracy", "sensitivity", "specificity")]
        lines.append(f"| {name} | " + " | ".join(figures) + " |")
    for title, key in (
        ("Ground truth changed", "consensus_changed"),
        ("Ties (original label kept)", "ties"),
        ("No majority (original label kept)", "no_majority"),
    ):
        if report[key]:
            lines += [
                "",
                f"## {title}",
                "",
                "| case | votes for hemorrhage | original | revised |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {c['case']} | {c['votes_hemorrhage']}/{c['readers']} | {c['original_label']} | "
                f"{c['revised_label']} |"
                for c in report[key]
            ]
    return "\n".join(lines) + "\n"


def _run_score(args: argparse.Namespace) -> int:
    _check_unit("--threshold", args.threshold)
    if args.out.suffix.lower() == ".md":
        raise ReviewInputError("--out is the JSON report; the Markdown summary is written beside it")
    worklist, _ = read_predictions(args.worklist)
    reads = read_reads(args.reads, [p.case for p in worklist])
    report = build_report(worklist, reads, args.majority, args.threshold)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    summary = args.out.with_suffix(".md")
    summary.write_text(render_markdown(report), encoding="utf-8")
    logger.info(
        "review: %d cases, %d readers, kappa %s, %d changed -> %s, %s",
        report["cases"],
        report["n_readers"],
        _fmt(report["fleiss_kappa"]),
        len(report["consensus_changed"]),
        args.out,
        summary,
    )
    return 0
