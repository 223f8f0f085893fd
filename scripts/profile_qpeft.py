"""Where a Quantum-PEFT training step spends its time.

DeBERTaV3-base shape (random weights), 72 adapted matrices (144 factors), 1 thread by default.

- ``--configs equal-rank`` (default): for each equal-rank mapping and ``batch_factors`` off (before) / on
  (after): median step time, U/V construction forward+backward alone, the number of aten ops of one step
  and of the construction alone (torch.profiler), and the top ops by self CPU time
  -> ``results/bench/profile.json``.
- ``--configs paper``: the Table 2 methods as shipped (LoRA r = 2, ``quantum_peft``, ``quantum_peft_taylor``,
  ``quantum_peft_exp``; see ``scripts/bench_train.py``), the frozen base beside them: step and construction
  medians, the step minus the construction, and the top ops of the step and of the construction
  -> ``results/bench/profile_paper.json``.

    python scripts/profile_qpeft.py
    python scripts/profile_qpeft.py --configs paper --seq 128
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
from bench_train import PAPER, QPEFT_MAPPINGS, Runner, adapt_equal_rank, adapt_paper, build_base, make_batches  # noqa: E402
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


def profile_paper(args: argparse.Namespace) -> dict:
    """Step, construction and their top ops for the paper's DeBERTaV3-base methods (and the frozen base)."""
    model = "deberta-v3-base"
    batches = make_batches(model, args.batch, args.seq, torch.device("cpu"))
    rows = {}
    for method in ("base", *PAPER[model][1]):
        runner = Runner(adapt_paper(build_base(model), model, method), batches)
        row = {"step_ms": median_ms(runner.step, args.repeats)}
        row["step_aten_ops"], row["step_top_ops"] = op_profile(runner.step, 15)
        if runner.is_qpeft:
            row["build_fwd_bwd_ms"] = median_ms(runner.build, args.repeats)
            row["step_minus_build_ms"] = row["step_ms"] - row["build_fwd_bwd_ms"]
            row["build_aten_ops"], row["build_top_ops"] = op_profile(runner.build, 15)
        rows[method] = row
        print(f"{method:20s} step {row['step_ms']:7.0f} ms" + (
            f" | U/V fwd+bwd {row['build_fwd_bwd_ms']:6.1f} ms | rest {row['step_minus_build_ms']:7.0f} ms"
            if "build_fwd_bwd_ms" in row else ""), flush=True)
        del runner
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", choices=("equal-rank", "paper"), default="equal-rank")
    parser.add_argument("--out", type=Path, default=None, help="default results/bench/profile.json (profile_paper.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.configs == "paper":
        out = args.out or Path("results/bench/profile_paper.json")
        report = {"settings": vars(args) | {"out": str(out)}, "methods": profile_paper(args)}
        atomic_write_text(out, json.dumps(report, indent=2))
        print(f"wrote {out}")
        return
    args.out = args.out or Path("results/bench/profile.json")
    model = "deberta-v3-base"
    batches = make_batches(model, args.batch, args.seq, torch.device("cpu"))
    report: dict = {"settings": vars(args) | {"out": str(args.out)}, "mappings": {}}
    for name in QPEFT_MAPPINGS[model]:
        runner = Runner(adapt_equal_rank(build_base(model), model, f"qpeft-{name}", args.rank, 1), batches)
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
