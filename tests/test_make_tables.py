"""``make tables``: aggregation over seeds, paper value beside ours, and which records count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from experiments.records import new_record

ROOT = Path(__file__).resolve().parents[1]


def _write(directory: Path, experiment: str, method: str, seed: int, accs: list[float], status: str = "completed",
           model: str = "deberta_v3_base", steps: int = 10, suffix: str = ".json") -> None:
    record = new_record({"model": {"name": model}}, experiment, method, seed)
    record["train_info"].update(status=status, metrics=[{"val/acc": a, "epoch": i} for i, a in enumerate(accs)],
                                optimized_metric="val/acc", trainable_params=1234, ms_per_step=10.0,
                                adapter_bytes=5000, steps=steps)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{experiment}--{method}--seed{seed}{suffix}").write_text(json.dumps(record))


def test_tables_use_best_epoch_mean_over_seeds_and_ignore_failed_and_temporary(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _write(raw, "glue_sst2", "quantum_peft", 1, [0.90, 0.95, 0.93])
    _write(raw, "glue_sst2", "quantum_peft", 2, [0.91, 0.93])
    _write(raw, "glue_sst2", "quantum_peft", 3, [0.99], status="failed")
    _write(raw, "glue_sst2", "quantum_peft", 4, [0.99], status="diverged")
    _write(raw, "glue_sst2", "quantum_peft", 5, [0.99], steps=0)  # a 0-step "completed" run
    _write(raw, "glue_sst2", "quantum_peft", 2, [0.99], suffix=".completed.json")  # beside seed 2's record
    _write(raw, "glue_sst2", "quantum_peft", 6, [float("nan")])  # written with a NaN token: not strict JSON
    _write(tmp_path / "temporary", "glue_sst2", "lora", 1, [0.99])
    _write(raw, "demo_sst2_minilm", "lora", 0, [0.80, 0.86], model="minilm")
    out = subprocess.run([sys.executable, "scripts/make_tables.py", "--results", str(tmp_path)], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    assert "3 completed records read" in out and "skipped 5 record(s) that are not completed: " in out
    for entry in ("glue_sst2--quantum_peft--seed3.json (status failed)",
                  "glue_sst2--quantum_peft--seed4.json (status diverged)",
                  "glue_sst2--quantum_peft--seed5.json (status completed, 0 steps)",
                  "glue_sst2--quantum_peft--seed2.completed.json (beside its name's record)",
                  "glue_sst2--quantum_peft--seed6.json (unreadable: ValueError: non-strict JSON token NaN)"):
        assert entry in out, out
    table2 = (tmp_path / "tables" / "table2_glue.md").read_text()
    qp_row = next(line for line in table2.splitlines() if line.startswith("| quantum_peft"))
    assert "95.85 / 94.00 ± 1.41 (n=2, 3 seed(s) missing)" in qp_row  # best epochs 0.95 and 0.93
    lora_row = next(line for line in table2.splitlines() if line.startswith("| lora"))
    assert "94.95 / —" in lora_row  # the temporary record is ignored
    other = (tmp_path / "tables" / "other_runs.md").read_text()
    assert "| demo_sst2_minilm | minilm | lora | 1,234 | val/acc 86.00 (n=1)" in other
    assert (tmp_path / "tables" / "table1_memory.md").read_text().count("36,864") == 1
