"""``ich-model``: one entry point whose subcommands live in their own modules.

Each subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only
when chosen, so ``ich-model review`` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

DESCRIPTION = (
    "Train, cross-validate, export, evaluate and document the ICH ensemble (five Inception U-Nets and the "
    "weight model that fuses them). `ich-model COMMAND --help` describes each command."
)
EXIT_USAGE = 2

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.train", "train the five base models and the weight model (resumable steps)"),
    "cv": ("training.cv", "patient-grouped k-fold cross-validation: train each fold, predict it out of fold"),
    "cv-report": ("training.oof_report", "out-of-fold records, figures and case model of a cv run"),
    "baselines": ("training.baselines.train", "four classifiers, weak vs strong annotation, vs the ensemble"),
    "export": ("training.export", "export trained checkpoints to ONNX and write model_repository/"),
    "evaluate": ("training.evaluate", "run the exported ensemble on cases with masks and write a report"),
    "precision-check": (
        "training.precision_check",
        "compare a reduced-precision repository with the FP32 one on the same patients (AUC, Dice)",
    ),
    "review": ("training.review", "the difficult-case study: select a worklist, score expert reads"),
    "pack": ("training.data.pack", "a compact copy of a CT-ICH folder (shrunk images) for a GPU machine"),
    "card": ("training.model_card", "write MODEL_CARD.md from the cross-validation record"),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the parser; subcommand modules are imported lazily in ``main``."""
    parser = argparse.ArgumentParser(prog="ich-model", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the chosen subcommand and return its exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    known, rest = top.parse_known_args(args_list)
    logging.basicConfig(
        level=logging.DEBUG if known.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module_name, help_text = SUBCOMMANDS[known.command]
    module = importlib.import_module(module_name)
    description = help_text[0].upper() + help_text[1:] + "."
    parser = argparse.ArgumentParser(prog=f"ich-model {known.command}", description=description)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    from training.config import ConfigError  # pydantic only; every command that reads a config needs it

    try:
        return int(module.run(args))
    except (FileNotFoundError, NotADirectoryError, ConfigError) as exc:
        # A missing or misplaced input, or a config that does not validate (the message names the file,
        # table and key), is the user's to fix: say which, without a traceback.
        print(f"ich-model {known.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
