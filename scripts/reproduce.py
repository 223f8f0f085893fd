"""``make reproduce TABLE=2 [LAUNCHER=local|submitit_local|slurm_a100] [RUN=1]``: every run a table needs.

From the table's selection rule (``experiments/selection.py``), the method configs (``protocol``: the
Quantum-PEFT protocols sweep the learning rate over ``conf/sweep/lr.yaml``, the baselines run at their
protocol's rate) and the rule's seeds, list the grid experiment × method × lr × seed, which completed
records already cover each point (the same matching ``make tables`` uses), the commands for the missing
ones and an estimate of their compute from the ms/step × steps of existing records of the same
experiment and method.  ``--run`` launches the missing runs through Hydra's launcher: one multirun per
(experiment, method, lr) over the missing seeds, i.e. one job per run, with ``trainer.resume=true``
(a killed job continues from its checkpoint); completed records are never re-run.

    python scripts/reproduce.py --table 2                              # the plan
    python scripts/reproduce.py --table 2 --launcher slurm_a100 --run  # launch what is missing
    python scripts/reproduce.py --table 2 --set model=tiny_deberta --run --limit 2   # a CPU smoke test
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from make_tables import load_records  # noqa: E402

from experiments.selection import SelectionRule, feeds, record_lr, rule_for  # noqa: E402

LAUNCHERS = {"local": [], "submitit_local": ["hydra/launcher=submitit_local"], "slurm_a100": ["hydra/launcher=slurm_a100"]}


@dataclass(frozen=True)
class Point:
    """One run of the grid; ``lr=None`` means the protocol's own learning rate (an untagged record)."""

    experiment: str
    method: str
    lr: float | None
    seed: int

    @property
    def tag(self) -> str:
        return "" if self.lr is None else f"--lr{self.lr}"


def lr_grid() -> list[float]:
    """The learning rates of ``conf/sweep/lr.yaml`` (the sweep the Quantum-PEFT protocols use)."""
    from omegaconf import OmegaConf

    values = OmegaConf.load(ROOT / "conf" / "sweep" / "lr.yaml").hydra.sweeper.params["trainer.lr"]
    return [float(v) for v in str(values).split(",")]


def method_protocol(method: str) -> str | None:
    """``protocol`` of ``conf/method/<method>.yaml`` (``baseline`` when unset), ``None`` if there is no config."""
    from omegaconf import OmegaConf

    path = ROOT / "conf" / "method" / f"{method}.yaml"
    return OmegaConf.load(path).get("protocol", "baseline") if path.is_file() else None


def plan(rule: SelectionRule) -> tuple[list[Point], list[str]]:
    """``(every point of the grid, notes on rows that cannot be planned)``."""
    points, notes = [], []
    grid = lr_grid()
    for experiment in rule.experiments:
        if not (ROOT / "conf" / "experiment" / f"{experiment}.yaml").is_file():
            notes.append(f"{experiment}: no conf/experiment/{experiment}.yaml yet (its benchmark has not landed)")
            continue
        for method in rule.methods:
            protocol = method_protocol(method)
            tags = [tag for m, tag in rule.tagged if m == method and tag]
            if tags:  # rows of a non-LR sweep (Tables 6, 8, 9): the experiment's header gives the --multirun line
                notes.append(f"{experiment} {method}: rows {', '.join(tags)} come from a sweep; run the --multirun "
                             f"line in conf/experiment/{experiment}.yaml")
                continue
            if protocol is None:
                notes.append(f"{method}: no conf/method/{method}.yaml")
                continue
            lrs = grid if protocol in rule.swept_protocols else [None]
            points += [Point(experiment, method, lr, seed) for lr in lrs for seed in rule.seeds]
    return points, notes


def covered(point: Point, records: list[dict[str, Any]], rule: SelectionRule) -> dict[str, Any] | None:
    """A completed record that feeds the rule at this point (same lr for a swept point), if any."""
    for record in records:
        if not feeds(record, rule, point.experiment, point.method) or record["run_info"]["seed"] != point.seed:
            continue
        lr = record_lr(record)
        if point.lr is None or (lr is not None and math.isclose(lr, point.lr, rel_tol=1e-9)):
            return record
    return None


def commands(missing: list[Point], launcher: str, overrides: list[str]) -> list[tuple[list[str], list[Point]]]:
    """One Hydra multirun per (experiment, method, lr) over its missing seeds: ``(argv, points)``."""
    groups: dict[tuple[str, str, float | None], list[Point]] = {}
    for p in missing:
        groups.setdefault((p.experiment, p.method, p.lr), []).append(p)
    out = []
    for (experiment, method, lr), points in groups.items():
        argv = [sys.executable, "run.py", "--multirun", f"+experiment={experiment}", f"method={method}",
                "seed=" + ",".join(str(p.seed) for p in points), "trainer.resume=true"]
        if lr is not None:
            argv += [f"trainer.lr={lr}", f"record_tag={points[0].tag}"]
        out.append((argv + LAUNCHERS[launcher] + overrides, points))
    return out


def hours_per_run(records: list[dict[str, Any]], rule: SelectionRule, experiment: str, method: str) -> float | None:
    """Median ms/step × steps of the completed runs feeding (experiment, method), in hours; ``None`` without any."""
    costs = [r["train_info"]["ms_per_step"] * r["train_info"]["steps"] / 3.6e6 for r in records
             if feeds(r, rule, experiment, method) and r["train_info"].get("ms_per_step") and r["train_info"].get("steps")]
    return statistics.median(costs) if costs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, help="the paper table, e.g. 2")
    parser.add_argument("--launcher", default="local", choices=sorted(LAUNCHERS))
    parser.add_argument("--run", action="store_true", help="launch the missing runs")
    parser.add_argument("--limit", type=int, default=None, help="launch at most this many runs")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="Hydra override added to every command; model=<name> also changes the records matched")
    args = parser.parse_args()
    try:
        rule = rule_for(args.table)
    except ValueError as err:
        parser.error(str(err))
    for override in args.set:
        if override.startswith("model="):
            rule = rule.with_model(override.split("=", 1)[1])

    records, _ = load_records(args.results / "raw")
    points, notes = plan(rule)
    missing = [p for p in points if covered(p, records, rule) is None]
    print(f"Table {rule.table}: {rule.description}.")
    print(f"model {rule.model}; seeds {list(rule.seeds)}; swept learning rates {lr_grid()} for protocols "
          f"{list(rule.swept_protocols)}; results in {args.results / 'raw'}\n")
    print("| experiment | method | runs | completed | missing | est. hours per run |\n|---|---|---|---|---|---|")
    total_hours, unknown = 0.0, 0
    for experiment in rule.experiments:
        for method in rule.methods:
            row = [p for p in points if (p.experiment, p.method) == (experiment, method)]
            if not row:
                continue
            gone = [p for p in row if p in missing]
            hours = hours_per_run(records, rule, experiment, method)
            total_hours += (hours or 0.0) * len(gone)
            unknown += len(gone) if hours is None else 0
            print(f"| {experiment} | {method} | {len(row)} | {len(row) - len(gone)} | {len(gone)} | "
                  f"{'—' if hours is None else f'{hours:.3f}'} |")
    print(f"\n{len(points)} runs needed, {len(points) - len(missing)} completed, {len(missing)} missing; "
          f"estimated compute for the missing runs: {total_hours:.1f} h from existing records"
          + (f", unknown for {unknown} runs (no completed record of their experiment × method yet)" if unknown else ""))
    for note in notes:
        print(f"not planned: {note}")
    jobs = commands(missing, args.launcher, args.set)
    if jobs:
        print("\ncommands for the missing runs (one job per seed):")
        for argv, _ in jobs:
            print("  " + shlex.join(["python", *argv[1:]]))
    if not args.run:
        return
    budget = len(missing) if args.limit is None else args.limit
    for argv, group in jobs:
        if budget <= 0:
            break
        if len(group) > budget:
            group = group[:budget]
            argv = [a if not a.startswith("seed=") else "seed=" + ",".join(str(p.seed) for p in group) for a in argv]
        budget -= len(group)
        print(f"\nlaunching {len(group)} run(s): {shlex.join(['python', *argv[1:]])}", flush=True)
        subprocess.run(argv, cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
