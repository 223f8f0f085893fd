"""The harness's unitarity guard: a factor off the manifold is warned about by name and recorded."""

from __future__ import annotations

import json
import logging

import pytest

from experiments import run
from tests.harness.conftest import fast_overrides


@pytest.mark.parametrize("method, extra, off_manifold", [
    ("quantum_peft_taylor", ["method.mapping_options.order=2"], True),   # a visibly truncated series
    ("quantum_peft_exp", [], False),
])
def test_record_keeps_the_worst_unitarity_error(method, extra, off_manifold, make_cfg, glue_dir, tmp_path,
                                                caplog) -> None:
    fast = [o for o in fast_overrides(tmp_path, glue_dir) if not o.startswith("debug=")]
    overrides = ["+experiment=glue_rte", f"method={method}", *fast, "trainer.lr=0.5", "trainer.max_steps=3",
                 "trainer.eval_every_steps=1", "trainer.max_eval_batches=1", "trainer.checkpoint=false",
                 "method.unitarity_check_every=1", "record_to=temporary", *extra]
    with caplog.at_level(logging.WARNING, logger="experiments"):
        info = run(make_cfg(overrides))
    record = json.loads(next((tmp_path / "results" / "temporary").glob("*.json")).read_text())
    worst = record["train_info"]["unitarity_error_max"]
    assert worst == info["unitarity_error_max"] == max(m["unitarity_error_max"] for m in record["train_info"]["metrics"])
    warned = [r.getMessage() for r in caplog.records if "unitarity_tolerance" in r.getMessage()]
    if off_manifold:
        assert worst > 1e-3
        assert warned and all("adapter factor " in m for m in warned)
        assert len(warned) == len(set(warned))  # once per factor
    else:
        assert worst < 1e-4 and not warned
