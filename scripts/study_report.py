"""The study's report from its run records alone: ``results/study/README.md`` and two PNG plots.

Reads ``<results>/raw/study_sst2_minilm--*.json`` (and ``temporary/``, marked as such) completed records,
groups them by study entry (the record tag ``--<entry>--lr<lr>``), applies ``study.SELECTION_RULE`` and
writes: the learning-rate sweep (first seed), the main table (trainable parameters, best and final dev
accuracy as mean ± std over seeds, ms/step, records), the two ablation comparisons, the plots (dev accuracy
against steps at each entry's selected rate, and best dev accuracy against trainable parameters), and the
hand-written reading kept in ``results/study/reading.md`` (quoted as it is, never generated).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from experiments.selection import run_value
from scripts.make_tables import load_records
from scripts.study import EXPERIMENT, GRID, SELECTION_RULE, best_value, select_lr

#: (ablation entry, the entry it changes, what the difference measures)
ABLATIONS = (("qsd_L1_lambda_only", "qsd_L1_pair", "training U and V (the circuit parameters) vs λ alone"),
             ("qsd_L1_small_init", "qsd_L1_pair", "initial angle spread N(0, 0.1²) vs N(0, (π/2)²)"))


def load(results: Path) -> dict[str, dict[float, list[dict[str, Any]]]]:
    """``entry -> lr -> completed records`` (``make_tables.load_records``; each ``_file`` relative to ``results``)."""
    out: dict[str, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for folder in ("raw", "temporary"):
        for record in load_records(results / folder)[0]:
            tag = record["run_info"]["config"].get("record_tag") or ""
            entry, _, lr = tag.removeprefix("--").rpartition("--lr")
            if record["run_info"]["experiment"] == EXPERIMENT and entry in GRID and lr:
                out[entry][float(lr)].append({**record, "_file": f"{folder}/{record['_file']}"})
    return out


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    spread = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{100 * statistics.mean(values):.2f}{spread} (n={len(values)})"


def curve(record: dict[str, Any]) -> list[tuple[int, float]]:
    return [(m["step"], m["val/acc"]) for m in record["train_info"]["metrics"] if "val/acc" in m]


def selected(runs: dict[float, list[dict[str, Any]]]) -> tuple[float | None, list[dict[str, Any]]]:
    """The rule's rate (from the first seed's runs) and every record at that rate."""
    seeds = sorted({r["run_info"]["seed"] for records in runs.values() for r in records})
    if not seeds:
        return None, []
    first = {lr: next((r for r in records if r["run_info"]["seed"] == seeds[0]), None) for lr, records in runs.items()}
    lr = select_lr(first)
    return lr, ([] if lr is None else sorted(runs[lr], key=lambda r: r["run_info"]["seed"]))


def _save(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str) -> str:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    return path.name


def _plots(rows: list[dict[str, Any]], out: Path) -> list[str]:
    """``acc_vs_steps.png`` (mean learning curve per entry) and ``acc_vs_params.png`` (best accuracy vs size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves, sizes = plt.subplots(figsize=(8, 5)), plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab20").colors
    for i, row in enumerate(rows):
        style = {"color": colors[(2 * i) % 20 + (2 * i) // 20], "label": row["label"]}  # 20 distinct colours
        steps = sorted({s for r in row["records"] for s, _ in curve(r)})
        means = [statistics.mean([a for r in row["records"] for s2, a in curve(r) if s2 == s]) for s in steps]
        dashed = "--" if row["entry"] in {a for a, _, _ in ABLATIONS} else "-"
        curves[1].plot(steps, [100 * m for m in means], marker="o", linestyle=dashed, **style)
        sizes[1].scatter(row["params"], 100 * statistics.mean(row["best"]), **style)
    sizes[1].set_xscale("log")
    names = [_save(*curves, out / "acc_vs_steps.png", "training step", "SST-2 dev accuracy (%), mean over seeds"),
             _save(*sizes, out / "acc_vs_params.png", "trainable parameters (log scale, head included)",
                   "best SST-2 dev accuracy (%), mean over seeds")]
    plt.close("all")
    return names


def write_report(results: Path) -> Path:
    """Write ``<results>/study/README.md`` (and the plots when there are runs); returns its path."""
    from qpeft.io import atomic_write_text

    runs = load(results)
    out = results / "study"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for entry, spec in GRID.items():
        lr, records = selected(runs.get(entry, {}))
        if records:
            rows.append({"entry": entry, "label": spec.label, "lr": lr, "records": records,
                         "params": records[0]["train_info"]["trainable_params"],
                         "best": [v for r in records if (v := best_value(r)) is not None],
                         "final": [v for r in records if (v := run_value(r, "val/acc", "final")) is not None],
                         "ms": statistics.median(r["train_info"]["ms_per_step"] for r in records),
                         "wall": sum(r["run_info"]["wall_seconds"] or 0 for rs in runs[entry].values() for r in rs)})
    all_records = [r for entry in runs.values() for records in entry.values() for r in records]
    wall = sum(r["run_info"]["wall_seconds"] or 0 for r in all_records)
    lines = ["# Where Quantum-PEFT's accuracy comes from: learning curves and ablations (MiniLM, SST-2)", "",
             "Generated by `python scripts/study.py --report-only` from the run records; do not edit (the reading "
             "below is `results/study/reading.md`).", "",
             "Protocol: the `make demo` protocol (real SST-2, real all-MiniLM-L6-v2, first 12,000 training sentences, "
             "length 64, batch 32, AdamW with linear decay) for 600 steps, the full dev set (872) evaluated every 100 "
             f"steps (`+experiment={EXPERIMENT}`); adapters on query and value. Learning rate: {SELECTION_RULE}.",
             f"{len(all_records)} completed records, {wall / 60:.1f} min of run wall time in total "
             "(2-core CPU machine).", ""]
    lines += ["## Results at each entry's selected learning rate", "",
              "| entry | trainable params | lr | best dev acc (%) | final dev acc (%) | ms/step | max ‖UᵀU−I‖_F | records |",
              "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        files = ", ".join(f"`{r['_file']}`" for r in row["records"])
        ortho = [r["train_info"].get("unitarity_error_max") for r in row["records"]]
        ortho_text = f"{max(ortho):.1e}" if all(v is not None for v in ortho) else "—"
        lines.append(f"| {row['label']} | {row['params']:,} | {row['lr']:g} | {_mean_std(row['best'])} | "
                     f"{_mean_std(row['final'])} | {row['ms']:.0f} | {ortho_text} | {files} |")
    missing = [GRID[e].label for e in GRID if e not in {r["entry"] for r in rows}]
    if missing:
        lines += ["", f"Not run yet: {'; '.join(missing)}."]
    lines += ["", "## Learning-rate sweep (first seed: lr → best dev accuracy %)", "", "| entry | runs |", "|---|---|"]
    for entry, spec in GRID.items():
        swept = runs.get(entry, {})
        if not swept:
            continue
        first = min(r["run_info"]["seed"] for records in swept.values() for r in records)
        cells = [f"{lr:g} → {100 * v:.2f}" for lr, records in sorted(swept.items()) for r in records
                 if r["run_info"]["seed"] == first and (v := best_value(r)) is not None]
        lines.append(f"| {spec.label} | {'; '.join(cells)} |")
    by_entry = {row["entry"]: row for row in rows}
    lines += ["", "## Ablations (best dev accuracy, mean over seeds)", ""]
    for ablation, base, what in ABLATIONS:
        if ablation in by_entry and base in by_entry:
            a, b = (statistics.mean(by_entry[e]["best"]) for e in (ablation, base))
            lines.append(f"- {what}: {GRID[ablation].label} {100 * a:.2f} vs {GRID[base].label} {100 * b:.2f} "
                         f"(difference {100 * (a - b):+.2f} points).")
        else:
            lines.append(f"- {what}: not run yet.")
    if rows:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in _plots(rows, out)]
    reading = out / "reading.md"
    lines += ["", "## Reading", "", reading.read_text().strip() if reading.exists()
              else "Not written yet: it is written by hand once the grid is complete."]
    path = out / "README.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
