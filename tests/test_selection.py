"""Tables follow their selection rule (best LR by mean over seeds, best vs final epoch), render
byte-identically in Markdown and LaTeX, and ``make reproduce`` plans exactly the missing runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.records import new_record
from experiments.selection import RULES, rule_for, select_cell
from tests.harness.conftest import subprocess_env, write_glue

ROOT = Path(__file__).resolve().parents[1]


def _record(experiment: str, method: str, seed: int, lr: float, values: list[float], *, tag: str | None = None,
            metric: str = "val/acc", model: str = "deberta_v3_base", status: str = "completed",
            start: str = "2026-01-01T00:00:00") -> dict:
    config = {"model": {"name": model}, "trainer": {"lr": lr}, "record_tag": f"--lr{lr}" if tag is None else tag}
    record = new_record(config, experiment, method, seed)
    record["run_info"]["start_time"] = start
    record["train_info"].update(status=status, metrics=[{metric: v, "step": i} for i, v in enumerate(values)],
                                optimized_metric=metric, trainable_params=11160, ms_per_step=250.0, steps=400,
                                adapter_bytes=4000)
    return record


def _write(raw: Path, record: dict) -> str:
    info = record["run_info"]
    name = f"{info['experiment']}--{info['method']}--seed{info['seed']}{record['run_info']['config']['record_tag']}.json"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / name).write_text(json.dumps(record))
    return name


def _loaded(records: list[dict]) -> list[dict]:
    return [{**r, "_file": f"r{i}.json"} for i, r in enumerate(records)]


def _sweep(raw: Path) -> dict[float, list[str]]:
    """2 learning rates × 3 seeds on SST-2: 0.006 has the best mean (its best epochs .95 .94 .96)."""
    names: dict[float, list[str]] = {0.001: [], 0.006: []}
    curves = {0.001: [[0.90, 0.97], [0.91, 0.92], [0.90, 0.91]],  # best epochs .97 .92 .91 -> mean .9333
              0.006: [[0.93, 0.95], [0.94, 0.93], [0.96, 0.90]]}  # best epochs .95 .94 .96 -> mean .95
    for lr, runs in curves.items():
        for seed, values in enumerate(runs):
            names[lr].append(_write(raw, _record("glue_sst2", "quantum_peft", seed, lr, values)))
    return names


def _make_tables(results: Path) -> str:
    out = subprocess.run([sys.executable, "scripts/make_tables.py", "--results", str(results)], cwd=ROOT,
                         check=True, capture_output=True, text=True)
    return out.stdout


def test_best_mean_learning_rate_selects_the_cell_and_names_its_records(tmp_path: Path) -> None:
    names = _sweep(tmp_path / "raw")
    _make_tables(tmp_path)
    table2 = (tmp_path / "tables" / "table2_glue.md").read_text()
    row = next(line for line in table2.splitlines() if line.startswith("| quantum_peft"))
    assert "95.85 / 95.00 ± 1.00 (n=3, lr=0.006, 2 seed(s) missing)" in row
    provenance = next(line for line in table2.splitlines() if line.startswith("- `quantum_peft` × SST2"))
    assert "lr=0.006 selected over lr=0.001: 93.33 (n=3)" in provenance
    assert all(name in provenance for name in names[0.006]) and not any(n in provenance for n in names[0.001])
    assert "glue_sst2--quantum_peft" not in (tmp_path / "tables" / "other_runs.md").read_text()  # fed Table 2


def test_a_missing_seed_shows_as_n_2_with_a_note(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _write(raw, _record("glue_rte", "lora", 0, 1.2e-3, [0.80, 0.85], tag=""))
    _write(raw, _record("glue_rte", "lora", 1, 1.2e-3, [0.86, 0.84], tag=""))
    _write(raw, _record("glue_rte", "lora", 2, 1.2e-3, [0.99], tag="", status="failed"))
    stdout = _make_tables(tmp_path)
    row = next(line for line in (tmp_path / "tables" / "table2_glue.md").read_text().splitlines()
               if line.startswith("| lora"))
    assert "85.56 / 85.50 ± 0.71 (n=2, lr=0.0012, 3 seed(s) missing)" in row
    assert "skipped 1 record(s) that are not completed: glue_rte--lora--seed2.json (status failed)" in stdout


def test_e2e_rule_uses_the_final_evaluation_and_glue_the_best() -> None:
    curve = [0.60, 0.70, 0.65]  # best 0.70, final 0.65
    e2e = _loaded([_record("e2e_gpt2m", "lora", 0, 2e-4, curve, metric="test/bleu", model="gpt2_medium")])
    cell = select_cell(e2e, rule_for("3"), "e2e_gpt2m", "lora")
    assert cell is not None and cell.mean == pytest.approx(0.65)
    glue = _loaded([_record("glue_sst2", "lora", 0, 8e-4, curve)])
    assert select_cell(glue, rule_for("2"), "glue_sst2", "lora").mean == pytest.approx(0.70)


def test_later_duplicate_replaces_earlier_and_other_tags_and_models_do_not_feed() -> None:
    rule = rule_for("2")
    records = _loaded([
        _record("glue_sst2", "lora", 0, 8e-4, [0.80], tag="", start="2026-01-01T00:00:00"),
        _record("glue_sst2", "lora", 0, 8e-4, [0.90], tag="", start="2026-01-02T00:00:00"),  # same lr and seed, later
        _record("glue_sst2", "lora", 1, 8e-4, [0.99], tag="--order18"),  # not an LR sweep tag
        _record("glue_sst2", "lora", 2, 8e-4, [0.99], tag="", model="minilm"),  # another model
        _record("glue_sst2", "lora", 7, 8e-4, [0.99], tag=""),  # not one of the protocol's seeds
    ])
    cell = select_cell(records, rule, "glue_sst2", "lora")
    assert (cell.mean, cell.n, cell.files, cell.duplicates) == (pytest.approx(0.90), 1, ["r1.json"], ["r0.json"])


def test_every_rule_is_consistent() -> None:
    for table, rule in RULES.items():
        assert rule.table == table and rule.epoch in ("best", "final") and rule.seeds
    with pytest.raises(ValueError, match="allowed"):
        rule_for("99")


def test_second_make_tables_is_byte_identical_in_markdown_and_latex(tmp_path: Path) -> None:
    _sweep(tmp_path / "raw")
    _write(tmp_path / "raw", _record("demo_sst2_minilm", "lora", 0, 1e-3, [0.80, 0.86], tag="", model="minilm"))
    _make_tables(tmp_path)
    first = {p.name: p.read_bytes() for p in sorted((tmp_path / "tables").iterdir())}
    _make_tables(tmp_path)
    second = {p.name: p.read_bytes() for p in sorted((tmp_path / "tables").iterdir())}
    assert first == second
    assert {"table2_glue.md", "table2_glue.tex", "other_runs.tex", "counts.tex"} <= set(first)
    tex = first["table2_glue.tex"].decode()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"95.00 $\pm$ 1.00" in tex
    assert "_" not in tex.replace(r"\_", "").split("\\begin{table}")[1].split("\\end{table}")[0]  # escaped
    real = ROOT / "results" / "tables"  # the shipped tables too: pdflatex needs no Unicode setup for any of them
    for path in [*(tmp_path / "tables").glob("*.tex"), *real.glob("*.tex")]:
        assert path.read_text().isascii(), path


def _reproduce(results: Path, *extra: str) -> str:
    out = subprocess.run([sys.executable, "scripts/reproduce.py", "--table", "2", "--results", str(results),
                          *extra], cwd=ROOT, check=True, capture_output=True, text=True, env=subprocess_env())
    return out.stdout


@pytest.mark.slow
def test_reproduce_lists_the_grid_and_two_fewer_after_running_two(tmp_path: Path) -> None:
    glue = write_glue(tmp_path / "data" / "glue")
    overrides = ["--set", "model=tiny_deberta", "--set", f"paths.root_dir={tmp_path}", "--set", f"task.data_dir={glue}",
                 "--set", "logger=none", "--set", "record_to=raw", "--set", "trainer.epochs=1",
                 "--set", "trainer.eval_batch_size=16"]
    plan = _reproduce(tmp_path / "results", *overrides)
    assert "300 runs needed, 0 completed, 300 missing" in plan
    assert "| glue_sst2 | quantum_peft | 30 | 0 | 30 |" in plan and "| glue_rte | lora | 5 | 0 | 5 |" in plan
    assert "python run.py --multirun +experiment=glue_sst2 method=quantum_peft seed=0,1,2,3,4 trainer.resume=true " \
           "trainer.lr=0.001 record_tag=--lr0.001" in plan
    _reproduce(tmp_path / "results", *overrides, "--run", "--limit", "2")
    records = sorted(p.name for p in (tmp_path / "results" / "raw").glob("*.json"))
    assert records == ["glue_sst2--full_ft--seed0.json", "glue_sst2--full_ft--seed1.json"]
    after = _reproduce(tmp_path / "results", *overrides)
    assert "300 runs needed, 2 completed, 298 missing" in after
    assert "| glue_sst2 | full_ft | 5 | 2 | 3 |" in after and "seed=2,3,4 trainer.resume=true" in after
