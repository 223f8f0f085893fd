"""Where a Quantum-PEFT training step spends its time, per-layer vs batched U/V construction.

DeBERTaV3-base shape (random weights), 72 adapted matrices (144 factors).  For each mapping and
``batch_factors`` off (before) / on (after): median step time, U/V construction forward+backward
alone, the number of aten ops of one step and of the construction alone (torch.profiler), and the
top ops by self CPU time.  The rest of the step (frozen model, adapter matmuls, optimizer) is
step − construction; the frozen floor is given by ``scripts/bench_train.py``'s ``base`` row.

    python scripts/profile_qpeft.py          # writes results/bench/profile.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import QPEFT_MAPPINGS, Runner, adapt, build_base, make_batch  # noqa: E402
from timing import median_ms  # noqa: E402
from qpeft.io import atomic_write_text  # noqa: E402


def per_layer_build(runner: Runner) -> None:
    """Forward+backward of every factor, built mapping by mapping (the path without batching)."""
    total = sum(m().sum() for _, layer in runner.net.qpeft_layers() for m in layer.mappings())
    total.backward()


def op_profile(fn: Callable[[], None], top: int) -> tuple[int, list[dict]]:
    """Number of aten ops of one call of ``fn`` and its ``top`` ops by self CPU time."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    count = sum(e.count for e in events if e.key.startswith("aten::"))
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return count, [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3} for e in ranked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/bench/profile.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = "deberta-v3-base"
    batch = make_batch(model, args.batch, args.seq, torch.device("cpu"))
    report: dict = {"settings": vars(args) | {"out": str(args.out)}, "mappings": {}}
    for name in QPEFT_MAPPINGS[model]:
        runner = Runner(adapt(build_base(model), model, f"qpeft-{name}", args.rank, 1), f"qpeft-{name}", batch)
        rows = {}
        for batched in (False, True):
            runner.net.batch_factors = batched
            build = runner.build if batched else (lambda r=runner: per_layer_build(r))
            step_ops, step_top = op_profile(runner.step, 12)
            build_ops, _ = op_profile(build, 0)
            rows["batched" if batched else "per_layer"] = {
                "step_ms": median_ms(runner.step, args.repeats),
                "build_fwd_bwd_ms": median_ms(build, args.repeats),
                "step_aten_ops": step_ops,
                "build_aten_ops": build_ops,
                "step_top_ops": step_top,
            }
            r = rows["batched" if batched else "per_layer"]
            print(f"{name:10s} {'batched' if batched else 'per-layer':9s} step {r['step_ms']:7.0f} ms | "
                  f"U/V fwd+bwd {r['build_fwd_bwd_ms']:6.1f} ms | aten ops: step {step_ops}, U/V {build_ops}", flush=True)
        report["mappings"][name] = rows
        del runner
    atomic_write_text(args.out, json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
