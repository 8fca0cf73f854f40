"""``uncertainty.png``: each case's probability against its uncertainty, the wrong calls marked.

Where the wrong calls sit tells at a glance whether the ensemble's disagreement means something: near the
top (uncertain) it does; among the certain cases at the bottom, it does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.calibration import _pyplot

__all__ = ["uncertainty_diagram"]


def uncertainty_diagram(
    probability: np.ndarray, uncertainty: np.ndarray, wrong: np.ndarray, path: Path
) -> None:
    """PNG scatter of case probability (x) and uncertainty (y); right calls grey dots, wrong ones red."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    right = ~np.asarray(wrong, dtype=bool)
    ax.scatter(
        probability[right], uncertainty[right], s=18, color="grey", label=f"right ({int(right.sum())})"
    )
    ax.scatter(
        probability[~right],
        uncertainty[~right],
        s=40,
        marker="x",
        color="#b00020",
        label=f"wrong ({int((~right).sum())})",
    )
    ax.set(
        title="Case uncertainty (out of fold)",
        xlabel="calibrated case probability",
        ylabel="spread of the five base models",
        xlim=(0, 1),
        ylim=(0, max(0.05, float(np.max(uncertainty, initial=0.0)) * 1.1)),
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
