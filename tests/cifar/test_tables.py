"""``make tables`` renders Tables 6, 8 and 9: paper beside ours, '—' with the reason, cells naming records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from experiments.records import new_record

ROOT = Path(__file__).resolve().parents[2]


def _write(raw: Path, experiment: str, method: str, tag: str, model: str, accs: list[float], params: int) -> str:
    config = {"model": {"name": model}, "record_tag": tag, "trainer": {"lr": 1e-3}}
    record = new_record(config, experiment, method, 0)
    record["train_info"].update(status="completed", metrics=[{"val/acc": a, "epoch": i} for i, a in enumerate(accs)],
                                optimized_metric="val/acc", trainable_params=params, ms_per_step=10.0,
                                adapter_bytes=5000, steps=10)
    raw.mkdir(parents=True, exist_ok=True)
    name = f"{experiment}--{method}--{model}--seed0{tag}.json"
    (raw / name).write_text(json.dumps(record))
    return name


def test_tables_6_8_9(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    lora = _write(raw, "cifar10_vit", "lora", "--r2", "vit_b16_3bit", [0.97, 0.981, 0.975], 73_728)
    _write(raw, "cifar10_vit", "lora", "--r2", "vit_b16", [0.99], 73_728)  # another model: not Table 6's
    taylor = _write(raw, "cifar10_vit", "quantum_peft_taylor", "--k3", "vit_b16", [0.98, 0.9876], 110_784)
    pauli = _write(raw, "cifar10_vit_2bit", "quantum_peft_pad", "--L3", "vit_b16_2bit", [0.95, 0.966], 7_000)
    subprocess.run([sys.executable, "scripts/make_tables.py", "--results", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True)
    tables = tmp_path / "tables"
    t6 = (tables / "table6_cifar10_vit.md").read_text()
    assert "| LoRA K=2 | 0.074M / 73,728 | 98.30 / 98.10 (n=1, lr=0.001) |" in t6 and lora in t6
    assert "| LoRA K=1 | 0.037M / — | 98.14 / — (no run) |" in t6
    assert "| Original | — / — | 76.21 / — (no run) |" in t6
    assert "| Quantum-PEFT (Taylor, K=4, K'=1) | — / — | — (not in the paper) / — (no run) |" in t6
    t8 = (tables / "table8_intrinsic_rank.md").read_text()
    assert "| K'=3 | 0.111M / 110,784 | 98.76 / 98.76 (n=1, lr=0.001) |" in t8 and taylor in t8
    t9 = (tables / "table9_layers.md").read_text()
    assert "| L=3 | — / 7,000 | 96.71 / 96.60 (n=1, lr=0.001) |" in t9 and pauli in t9
    assert "| L=32 | — / — | 96.71 / — (no run) |" in t9
    other = (tables / "other_runs.md").read_text()
    assert "vit_b16 |" in other and lora not in other and taylor not in other
    assert (tables / "table9_layers.tex").read_text().count(r"\toprule") == 1


def test_table7_columns_by_bits_and_loading(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    fp32 = _write(raw, "cifar10_vit", "quantum_peft_taylor", "--k3", "vit_b16", [0.98, 0.9881], 110_688)
    int2 = _write(raw, "cifar10_vit", "quantum_peft_taylor", "--k3--int2--g1.0", "vit_b16", [0.9877], 110_688)
    _write(raw, "cifar10_vit", "quantum_peft_taylor", "--k3--int2--g1.0", "vit_b16_3bit", [0.5], 110_688)  # 3-bit base
    demo = _write(raw, "demo_sst2_minilm", "quantum_peft_taylor", "--int1--g0.0", "minilm", [0.8], 10_010)
    subprocess.run([sys.executable, "scripts/make_tables.py", "--results", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True)
    t7 = (tmp_path / "tables" / "table7_qat.md").read_text()
    assert "| bits per parameter (paper / ours) | 32 / 32 | 8.25 / 8.25 | 4.25 / 4.25 | 3.25 / 3.25 | 2.25 / 2.25 | 1.25 / 1.25 |" in t7
    assert ("| accuracy, adaptive bit loading (paper / ours) | 98.81 / 98.81 (n=1, lr=0.001) | 98.78 / — (no run) | "
            "98.87 / — (no run) | 98.80 / — (no run) | 98.77 / 98.77 (n=1, lr=0.001) | 98.64 / — (no run) |") in t7
    assert "| accuracy, uniform bit loading (paper / ours) | 98.81 / 98.81 (n=1, lr=0.001) | 98.79 / — (no run) |" in t7
    assert fp32 in t7 and int2 in t7 and "vit_b16_3bit" not in t7
    assert "| dev accuracy, uniform | — | — | — | — | — | 80.00 (n=1) |" in t7 and demo in t7  # the CPU stand-in


def test_table10_rows_per_network(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    cp = _write(raw, "cifar10_vit", "quantum_peft_tn_cp", "", "vit_b16", [0.97, 0.9853], 30_336)
    demo = _write(raw, "demo_sst2_minilm", "quantum_peft_tn_htd", "", "minilm", [0.8108], 7_202)
    subprocess.run([sys.executable, "scripts/make_tables.py", "--results", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True)
    t10 = (tmp_path / "tables" / "table10_tensor_networks.md").read_text()
    assert "| CP | 0.074M / 30,336 | 98.53 / 98.53 (n=1, lr=0.001) |" in t10 and cp in t10
    assert "| TTD (MPS) | 0.111M / — | 98.81 / — (no run) |" in t10
    assert "| TTD (MPS) | plain U diag(λ) Vᵀ" in t10 and "| 110,688 | 0.111M |" in t10
    assert f"| HTD (TTN) | 7,202 | 81.08 (n=1) | 10 | 5,000 | {demo} |" in t10  # the CPU stand-in section
    assert (tmp_path / "tables" / "table10_tensor_networks.tex").read_text().isascii()
