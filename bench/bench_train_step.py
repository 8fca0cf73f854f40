"""Benchmark one training step of a base model at several input sizes and widths.

Why: the input size is the main lever on Dice, and its cost decides what a 2-core CPU can train in the
issue's time budget; this prints the median seconds of one Adam step (forward through
``InceptionUNet.logits``, ``dice_bce_loss``, backward) on random data, per ``SIZE:WIDTH`` pair.

    .venv/bin/python -m bench.bench_train_step --pairs 128:16 160:16 192:12 192:16 --batch 16 [--amp bf16]

Like ``ich-model train`` it first keeps freed memory in the process (:mod:`training.allocator`);
``--release-memory`` leaves glibc's default, which returns large blocks to the kernel after each use, so
the two can be compared (run them as separate processes: the setting is process-wide).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from training.allocator import keep_freed_memory
from training.amp import cpu_has_native_bf16
from training.losses import dice_bce_loss
from training.networks import InceptionUNet


def step_seconds(size: int, width: int, batch: int, depth: int, repeat: int, bf16: bool = False) -> float:
    """Median wall time of one training step after one warm-up step."""
    torch.manual_seed(0)
    model = InceptionUNet(width=width, depth=depth)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 4, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.9).float()
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model.logits(x)
        loss = dice_bce_loss(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["128:16", "160:16", "192:12", "192:16"],
                        help="SIZE:WIDTH pairs")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", choices=["none", "bf16"], default="none",
                        help="bf16 autocast of the forward pass, as [run] amp trains")
    parser.add_argument("--release-memory", action="store_true",
                        help="keep glibc's default allocator policy (what training did before)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kept = False if args.release_memory else keep_freed_memory()
    print(f"allocator: freed memory {'kept in the process' if kept else 'returned to the kernel (default)'}")
    print(f"amp: {args.amp}; CPU {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 {'yes' if cpu_has_native_bf16() else 'no'}")
    base: float | None = None
    print("size  width  s/step  relative")
    for pair in args.pairs:
        size, width = (int(v) for v in pair.split(":"))
        sec = step_seconds(size, width, args.batch, args.depth, args.repeat, args.amp == "bf16")
        base = base or sec
        print(f"{size:4d}  {width:5d}  {sec:6.2f}  {sec / base:8.2f}", flush=True)


if __name__ == "__main__":
    main()
