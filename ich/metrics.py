"""Re-exports :mod:`training.metrics` for ``training/train.py`` and ``training/oof_report.py`` only.

The metrics are training's (scikit-learn); the gateway never imports this module. Delete it once those two
import ``from training import metrics``.
"""

from training.metrics import *  # noqa: F403
from training.metrics import __all__  # noqa: F401
