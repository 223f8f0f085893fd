"""Bad values fail before anything is built or written, naming the field and the allowed values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import experiments.models
from experiments import apply_debug, run
from tests.harness.conftest import fast_overrides


@pytest.fixture
def no_model(monkeypatch) -> None:
    """Building a model fails the test: everything here must be refused before."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the config was refused")

    monkeypatch.setattr(experiments.models, "build_model", refuse)


@pytest.mark.parametrize("override, message", [
    ("seed=1.5", "seed=1.5 is invalid; allowed: an integer >= 0"),
    ("trainer.grad_accum_steps=0", "trainer.grad_accum_steps=0 is invalid; allowed: an integer >= 1"),
    ("trainer.precision=fp8", "trainer.precision='fp8' is invalid; allowed: no, fp16, bf16"),
    ("task.max_length=0", "task.max_length=0 is invalid; allowed: an integer >= 1"),
    ("trainer.max_steps=-5", "trainer.max_steps=-5 is invalid; allowed: an integer >= 1, or null"),
    ("trainer.lr=0", "trainer.lr=0.0 is invalid; allowed: a finite number > 0"),
    ("trainer.schedule=cosine", "trainer.schedule='cosine' is invalid; allowed: linear, constant"),
    ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints=0 is invalid; allowed: an integer >= 1"),
    ("record_to=somewhere", "record_to='somewhere' is invalid; allowed: auto, raw, temporary, none"),
    ("trainer.batch_size=6", "trainer.batch_size=6 is invalid with trainer.grad_accum_steps=4; allowed: a multiple"),
    ("task.source=web", "task.source='web' is invalid; valid: ['auto', 'hub', 'local']"),
    ("method.rank=-1", "method.rank=-1 is invalid; allowed values: integers >= 1"),
    ("method.alpha=inf", "method.alpha=inf is invalid; allowed values: a finite number > 0"),
    ("method.dropout=1.5", "method.dropout=1.5 is invalid; allowed values: a number 0 <= dropout < 1"),
    ("model.target_modules=[1,2]", "model.target_modules=[1, 2] is invalid; allowed values: a list of module-name"),
])
def test_bad_value_is_refused_naming_the_field(override, message, make_cfg, glue_dir, tmp_path, no_model) -> None:
    extra = ["trainer.grad_accum_steps=4"] if override == "trainer.batch_size=6" else []
    overrides = ["+experiment=glue_sst2", "method=quantum_peft", *fast_overrides(tmp_path, glue_dir), *extra, override]
    with pytest.raises(ValueError, match="invalid config:\n.*" + re.escape(message)):
        run(make_cfg(overrides), overrides)  # as run.py: debug=fdr keeps the command line's values
    assert not (tmp_path / "logs").exists() and not (tmp_path / "results").exists()  # nothing written


def test_all_problems_are_listed_at_once(make_cfg, glue_dir, tmp_path, no_model) -> None:
    overrides = ["+experiment=glue_sst2", *fast_overrides(tmp_path, glue_dir), "seed=-1", "trainer.log_every=0",
                 "method.rank=0"]
    with pytest.raises(ValueError, match=r"seed=-1 is invalid.*\n.*trainer\.log_every=0 is invalid.*\n.*method\.rank=0"):
        run(make_cfg(overrides), overrides)


def test_unwritable_results_folder_is_refused_before_training(make_cfg, glue_dir, tmp_path, no_model) -> None:
    (tmp_path / "file").write_text("not a folder")
    cfg = make_cfg(["+experiment=glue_sst2", *fast_overrides(tmp_path, glue_dir), f"paths.results_dir={tmp_path}/file"])
    with pytest.raises(PermissionError, match=f"the results folder {tmp_path}/file/temporary is not writable"):
        run(cfg)


def test_header_only_tsv_names_the_file(make_cfg, glue_dir, tmp_path) -> None:
    data = tmp_path / "glue" / "SST-2"
    data.mkdir(parents=True)
    (data / "train.tsv").write_text((glue_dir / "SST-2" / "train.tsv").read_text())
    (data / "dev.tsv").write_text("sentence\tlabel\n")
    cfg = make_cfg(["+experiment=glue_sst2", *fast_overrides(tmp_path, glue_dir), f"task.data_dir={data.parent}"])
    with pytest.raises(ValueError, match=rf"{data / 'dev.tsv'}: no data rows \(only the header\)"):
        run(cfg)


def test_debug_keeps_command_line_values(make_cfg, glue_dir, tmp_path: Path) -> None:
    overrides = ["+experiment=glue_sst2", "method=lora", *fast_overrides(tmp_path, glue_dir), "trainer.max_steps=3"]
    cfg = make_cfg(overrides)
    assert apply_debug(cfg).trainer.max_steps == 1  # without the command line, debug=fdr wins over everything
    kept = apply_debug(cfg, overrides)
    assert kept.trainer.max_steps == 3 and kept.trainer.max_eval_batches == 1 and kept.record_to == "temporary"
    assert run(cfg, overrides)["steps"] == 3
