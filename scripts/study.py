"""Where Quantum-PEFT's accuracy comes from (``make study``): learning curves and ablations on MiniLM / SST-2.

    python scripts/study.py                                   # the default grid, then the report
    python scripts/study.py --entries lora,taylor_k1 --seeds 0   # a subset
    python scripts/study.py --report-only                     # rebuild results/study/ from the records
    python scripts/study.py --entries taylor_k1 --lrs 1e-2 trainer.max_steps=50   # Hydra overrides for every run

Every run is the ``make demo`` protocol for 600 steps with the full dev set evaluated every 100 steps
(``+experiment=study_sst2_minilm``) through the harness, so it writes an ordinary run record
(``study_sst2_minilm--<method>--seed<s>--<entry>--lr<lr>.json``).  A run whose completed record exists is
skipped, so an interrupted or repeated invocation goes on where it stopped.

Learning rates: each entry runs its ``lrs`` on the first seed (and twice the largest when that one is best);
the one with the best dev accuracy (best evaluation of the run; ties go to the smaller rate) is then run on
the other seeds (``SELECTION_RULE``).
The report (``results/study/README.md``, PNG plots) is generated from the records alone (``study_report``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.cpu_runs import ROOT, compose_run, names_arg, offline_defaults  # noqa: E402

offline_defaults()  # before torch is imported

EXPERIMENT = "study_sst2_minilm"
QV = "model.target_modules=[query,value]"
SELECTION_RULE = ("per entry, the learning rate whose first-seed run has the best dev accuracy (its best "
                  "evaluation; ties: the smaller rate), then that rate on every seed; when the best is the largest "
                  "rate of the entry's list, twice that rate is tried too (once)")


@dataclass(frozen=True)
class Entry:
    """One line of the study: a method config, its overrides, its exact mapping options and learning rates."""

    method: str
    overrides: tuple[str, ...]
    lrs: tuple[float, ...]
    mapping_options: dict[str, Any] | None = field(default=None, hash=False)
    label: str = ""


def _qp(mapping_options: dict[str, Any], *extra: str, method: str = "quantum_peft_qsd",
        lrs: tuple[float, ...] = (1e-2, 2e-2), label: str = "") -> Entry:
    return Entry(method, ("method.rank=4", "method.alpha=16", QV, *extra), lrs, mapping_options, label)


PAULI_L1 = {"block": "pauli", "block_options": {"layers": 1}, "angles": "per_pair"}
#: The default grid: the demo's settings (rank 4, alpha 16 on query/value; LoRA r = 8); learning rates: the
#: demo's chosen one (tuned at 300 steps, where it beat half of it) and twice it, since 600 steps may take more.
GRID: dict[str, Entry] = {
    "lora": Entry("lora", ("method.r=8", "method.lora_alpha=16", "method.target_modules=[query,value]"),
                  (1e-3, 2e-3), label="peft LoRA r = 8"),
    "taylor_k1": _qp({"order": 18, "intrinsic_rank": 1}, method="quantum_peft_taylor", label="Taylor K' = 1"),
    "taylor_k2": _qp({"order": 18, "intrinsic_rank": 2}, method="quantum_peft_taylor", label="Taylor K' = 2"),
    "exp_k1": _qp({"intrinsic_rank": 1}, method="quantum_peft_exp", label="exact exp K' = 1"),
    "exp_k2": _qp({"intrinsic_rank": 2}, method="quantum_peft_exp", label="exact exp K' = 2"),
    "qsd_L1_pair": _qp(PAULI_L1, label="QSD-Pauli L = 1, per-pair angles"),
    "qsd_L1_single": _qp({**PAULI_L1, "angles": "single_angle"}, label="QSD-Pauli L = 1, one angle"),
    "qsd_L4_pair": _qp({**PAULI_L1, "block_options": {"layers": 4}}, label="QSD-Pauli L = 4, per-pair angles"),
    "qsd_L4_single": _qp({**PAULI_L1, "block_options": {"layers": 4}, "angles": "single_angle"},
                         label="QSD-Pauli L = 4, one angle"),
    "pad_L1": _qp({"block": "pauli", "block_options": {"layers": 1}}, method="quantum_peft_pad",
                  label="pad-Pauli L = 1"),
    # ablations of QSD-Pauli L = 1 (per-pair): what the circuit parameters buy
    "qsd_L1_lambda_only": _qp(PAULI_L1, "method.train_mappings=false", lrs=(2e-2, 5e-2),
                              label="ablation: λ only (U, V frozen at init)"),
    "qsd_L1_small_init": _qp({**PAULI_L1, "block_options": {"layers": 1, "init_std": 0.1}},
                             label="ablation: Pauli angles ~ N(0, 0.1²), not π/2"),
}


def lr_tag(entry: str, lr: float) -> str:
    return f"--{entry}--lr{lr:g}"


def compose(entry: str, lr: float, seed: int, extra: list[str]) -> Any:
    """The run config of one point, composed like ``python run.py +experiment=study_sst2_minilm ...``."""
    spec = GRID[entry]
    return compose_run([f"+experiment={EXPERIMENT}", f"method={spec.method}", *spec.overrides, f"trainer.lr={lr}",
                        f"seed={seed}", f"record_tag={lr_tag(entry, lr)}", *extra], spec.mapping_options)


def completed(path: Path | None) -> dict[str, Any] | None:
    """The record at ``path`` if it is a completed run, else ``None``."""
    if path is None or not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record["train_info"]["status"] == "completed" else None


def run_point(entry: str, lr: float, seed: int, extra: list[str]) -> dict[str, Any] | None:
    """Run one point unless its completed record exists; returns the record (``None`` if the run failed)."""
    import experiments
    from experiments.records import git_info, record_path

    cfg = compose(entry, lr, seed, extra)
    path = record_path(cfg, git_info())
    record = completed(path)
    if record is not None:
        print(f"skip {entry} lr={lr:g} seed={seed}: {path} exists", flush=True)
        return record
    print(f"run  {entry} lr={lr:g} seed={seed} -> {path}", flush=True)
    try:
        experiments.run(cfg)
    except Exception as err:  # noqa: BLE001 - a failed point is reported, the grid goes on
        logging.getLogger("study").error("%s lr=%g seed=%d failed: %r", entry, lr, seed, err)
    return completed(path)


def best_value(record: dict[str, Any] | None) -> float | None:
    """A record's best dev accuracy (``None`` for a missing or failed run): the tables' ``run_value``."""
    from experiments.selection import run_value

    return None if record is None else run_value(record, "val/acc", "best")


def select_lr(results: dict[float, dict[str, Any] | None]) -> float | None:
    """:data:`SELECTION_RULE` over the first seed's runs, ``lr -> record``."""
    scored = [(value, -lr, lr) for lr, record in results.items() if (value := best_value(record)) is not None]
    return max(scored)[2] if scored else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", default=",".join(GRID), help=f"comma-separated subset of {list(GRID)}")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds; the first one selects the rate")
    parser.add_argument("--lrs", default=None, help="comma-separated learning rates for every entry (default: each "
                        "entry's own)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from the records")
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="results folder (records, report)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. trainer.max_steps=50")
    args = parser.parse_args()
    entries = names_arg(parser, args.entries, GRID, "entries")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    lrs = None if args.lrs is None else tuple(float(v) for v in args.lrs.split(","))
    extra = [f"paths.results_dir={args.results}", *args.overrides]

    from scripts.study_report import write_report

    if not args.report_only:
        from experiments.schemas import register_configs

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        register_configs()
        for entry in entries:
            sweep = {lr: run_point(entry, lr, seeds[0], extra) for lr in (lrs or GRID[entry].lrs)}
            chosen = select_lr(sweep)
            if lrs is None and chosen == max(sweep):  # the best is at the edge of the list: look one step beyond
                sweep[2 * chosen] = run_point(entry, 2 * chosen, seeds[0], extra)
                chosen = select_lr(sweep)
            if chosen is None:
                print(f"{entry}: no completed first-seed run, no rate to carry on with", flush=True)
                continue
            for seed in seeds[1:]:
                run_point(entry, chosen, seed, extra)
    print(f"report: {write_report(args.results)}")


if __name__ == "__main__":
    main()
