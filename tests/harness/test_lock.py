"""Two runs of one name at once: the second stops at once with a clear error, the first completes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import run
from experiments.lock import LOCK_FILE, RunLocked
from tests.harness.conftest import ROOT, subprocess_env
from tests.harness.test_resume_and_records import qp_overrides


def test_second_run_of_the_same_name_is_refused(make_cfg, glue_dir, tmp_path) -> None:
    overrides = qp_overrides(tmp_path, glue_dir, "trainer.max_steps=150", "trainer.eval_every_steps=150",
                             "trainer.log_every=50")
    cfg = make_cfg(overrides)
    lock = Path(cfg.paths.output_dir) / LOCK_FILE
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, "run.py", *overrides], cwd=ROOT, env=subprocess_env(),
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while f"pid {first.pid} " not in (lock.read_text() if lock.exists() else ""):
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        start = time.monotonic()
        with pytest.raises(RunLocked, match=rf"is in use by another run of the same name \(pid {first.pid} on "):
            run(make_cfg(overrides))
        assert time.monotonic() - start < 10
        assert first.poll() is None  # the first was still running when the second was refused
        assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        first.kill()
    info = json.loads((tmp_path / "results" / "raw" / "glue_sst2--quantum_peft--seed0.json").read_text())["train_info"]
    assert info["status"] == "completed" and info["steps"] == 150
    run(make_cfg([*overrides, "trainer.max_steps=2", "record_replace=true"]))  # free again once the first ended
