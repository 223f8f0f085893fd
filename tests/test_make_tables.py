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


def _write_e2e(directory: Path, experiment: str, method: str, seed: int, lr: float, bleus: list[float],
               model: str = "gpt2_medium") -> None:
    record = new_record({"model": {"name": model}, "trainer": {"lr": lr}}, experiment, method, seed)
    history = [{"val/loss": 2.0 - 0.1 * i, "step": i} for i in range(len(bleus) - 1)]
    history.append({"val/loss": 1.5, "test/bleu": bleus[-1], "test/nist": 8.5, "test/meteor": 0.45,
                    "test/rouge_l": 0.68, "test/cider": 2.3, "test/num_mrs": 630.0})
    record["train_info"].update(status="completed", metrics=history, optimized_metric="val/loss",
                                trainable_params=98304, ms_per_step=1700.0, adapter_bytes=400000, steps=100)
    record["run_info"]["wall_seconds"] = 600.0
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{experiment}--{method}--seed{seed}--lr{lr}.json").write_text(json.dumps(record))


def test_table3_takes_the_final_checkpoint_and_the_best_mean_bleu_lr(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for seed, bleu in ((0, 0.66), (1, 0.68)):
        _write_e2e(raw, "e2e_gpt2m", "quantum_peft_taylor", seed, 2e-3, [0.1, bleu])
    _write_e2e(raw, "e2e_gpt2m", "quantum_peft_taylor", 0, 1e-3, [0.1, 0.50])
    _write_e2e(raw, "e2e_smollm2", "lora", 0, 1e-3, [0.40], model="smollm2")
    subprocess.run([sys.executable, "scripts/make_tables.py", "--results", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True)
    table3 = (tmp_path / "tables" / "table3_e2e.md").read_text()
    row = next(line for line in table3.splitlines() if line.startswith("| quantum_peft_taylor"))
    assert row.startswith("| quantum_peft_taylor | 0.098M / 98,304 | 67.46 / 67.00 ± 1.41 (n=2) | 8.58 / 8.50 ± 0.00 (n=2)")
    assert "lr=0.002 selected over lr=0.001: 50.00 (n=1)" in table3
    assert "| lora | 0.39M / — | 66.88 / — |" in table3 and "sourced from Zi et al. 2023" in table3
    cpu = next(line for line in table3.splitlines() if line.startswith("| lora | 98,304"))
    assert "| 40.00 (n=1) | 8.50 (n=1) | 45.00 (n=1) | 68.00 (n=1) | 2.30 (n=1) | 100 | 1700 | 10.0 | 630 |" in cpu
    assert "e2e_smollm2" not in (tmp_path / "tables" / "other_runs.md").read_text()
    tex = (tmp_path / "tables" / "table3_e2e.tex").read_text()
    assert tex.isascii() and r"\toprule" in tex


def test_table4_renders_every_bench_file_beside_the_paper(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir(parents=True)
    methods = {"lora": {"ms": 2000.0, "ratio_to_lora": 1.0, "memory_ratio_params": 4.0, "memory_ratio_file": 3.9,
                        "peak_step_bytes": 3 * 2**30},
               "quantum_peft_taylor": {"ms": 2100.0, "ratio_to_lora": 1.05, "memory_ratio_params": 1.0,
                                       "memory_ratio_file": 1.0, "peak_step_bytes": None}}
    (bench / "e2e_gpt2m_cuda.json").write_text(json.dumps({
        "command": "python scripts/bench_e2e.py --device cuda", "git": {"sha": "abcdef1234567", "dirty": False},
        "torch": "2.13.0", "device": "cuda", "gpu": "A100", "layers": 24, "batch": 8, "seq_len": 80, "warmup": 3,
        "repeats": 20, "methods": methods}))
    subprocess.run([sys.executable, "scripts/make_tables.py", "--results", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True)
    table4 = (tmp_path / "tables" / "table4_e2e_cost.md").read_text()
    assert "| lora | 1719.06 / 2000 | 1.000 / 1.000 | 4.03 / 4.00 (3.90 files) | 3072 |" in table4
    assert "| quantum_peft_taylor | 1723.39 / 2100 | 1.003 / 1.050 | 1 / 1.00 (1.00 files) | not measurable |" in table4
    assert "| adalora | 1795.91 / — |" in table4 and "abcdef1234" in table4
