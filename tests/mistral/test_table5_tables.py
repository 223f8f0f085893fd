"""``make tables`` renders Table 5: paper beside ours by Table 5's rule, '—' with the reason where no run exists,
the records named, and the CPU stand-in (SmolLM2-135M NF4 as Mistral) in its own section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from experiments.records import new_record

ROOT = Path(__file__).resolve().parents[2]


def _write(raw: Path, experiment: str, method: str, model: str, metric: str, values: list[float], lr: float,
           seed: int = 0, tag: str = "") -> None:
    record = new_record({"model": {"name": model}, "trainer": {"lr": lr}, "record_tag": tag}, experiment, method, seed)
    record["train_info"].update(status="completed", metrics=[{metric: v, "epoch": i} for i, v in enumerate(values)],
                                optimized_metric=metric, trainable_params=3_547_136, ms_per_step=120.0,
                                peak_memory_bytes=3 * 2**30, adapter_bytes=5000, steps=200)
    raw.mkdir(parents=True, exist_ok=True)
    (raw / f"{experiment}--{method}--seed{seed}{tag}.json").write_text(json.dumps(record))


def test_table5_best_epoch_best_lr_and_cpu_section(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _write(raw, "mistral_glue_sst2", "lora", "mistral_7b_4bit", "val/acc", [0.90, 0.95, 0.94], 1e-4, tag="--lr0.0001")
    _write(raw, "mistral_glue_sst2", "lora", "mistral_7b_4bit", "val/acc", [0.96, 0.93], 2e-4, tag="--lr0.0002")
    _write(raw, "mistral_glue_cola", "lora", "tiny_mistral_4bit", "val/mcc", [0.99], 1e-4)  # another model: no cell
    _write(raw, "mistral_smollm2_sst2", "quantum_peft", "smollm2_4bit", "val/acc", [0.81], 1e-2)
    subprocess.run([sys.executable, "scripts/make_tables.py", "--results", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    table = (tmp_path / "tables" / "table5_mistral_glue.md").read_text()
    lora = next(line for line in table.splitlines() if line.startswith("| lora"))
    assert "3.54M / 3,547,136" in lora
    assert "96.21 / 96.00 (n=1, lr=0.0002)" in lora  # the best epoch of the better learning rate
    assert "68.83 / — (no run)" in lora and "86.19 / — (4 task(s) not run)" in lora
    assert "mistral_glue_sst2--lora--seed0--lr0.0002.json" in table
    qp = next(line for line in table.splitlines() if line.startswith("| quantum_peft"))
    assert "0.758M / —" in qp
    cpu = table.split("CPU stand-in, not the paper's setting")[1]
    assert "| quantum_peft | 3,547,136 | val/acc 81.00 (n=1) | 200 | 120 | 3072 | mistral_smollm2_sst2--quantum_peft--seed0.json |" in cpu
    assert "mistral_smollm2_sst2" not in (tmp_path / "tables" / "other_runs.md").read_text()
    counts = (tmp_path / "tables" / "counts.md").read_text()
    assert "| mixed_taylor_pauli (coincidence) | count only | 758,080 | yes |" in counts
    assert "3,538,944" in counts
    assert (tmp_path / "tables" / "table5_mistral_glue.tex").read_text().isascii()
