"""Whether the bf16 autocast a run asks for is fast on the CPU it trains on.

Why: oneDNN runs bf16 natively only on CPUs with AVX512-BF16 or AMX; elsewhere (an AVX2 laptop or server)
autocast emulates it, and one step of the default base model takes several times as long as the same step
in fp32 (``bench/bench_train_step.py --amp bf16`` against ``--amp none`` prints both). A config's ``amp`` is
honoured as written, since it is part of the recipe the weights came from; the run says so once, at start.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """oneDNN's own test for bf16 kernels on this CPU (no public torch API answers it)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_if_bf16_emulated(amp: str, device: str) -> bool:
    """Log a warning when ``amp`` is bf16 on a CPU that emulates it; True when it warned."""
    if amp != "bf16" or not device.startswith("cpu") or cpu_has_native_bf16():
        return False
    logger.warning(
        "amp = \"bf16\" on a CPU without native bf16 (%s): autocast is emulated and training runs several "
        "times slower than in fp32; amp = \"none\" in [run] trains faster here, with other weights",
        torch.backends.cpu.get_cpu_capability(),
    )
    return True
