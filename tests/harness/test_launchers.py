"""Multirun, 2-process DDP on CPU, and the Slurm launcher/sbatch rendering."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from experiments.checkpoint import checkpoints
from tests.harness.conftest import ROOT, RUN_PY_LAUNCHERS, fast_overrides, subprocess_env


def _run(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_multirun_two_jobs(glue_dir, tmp_path) -> None:
    """The basic launcher runs 2 jobs in one process; each gets its own dir and record. run.py hands the command
    line to the run, so debug=fdr keeps its trainer.max_steps=2."""
    _run([sys.executable, "run.py", "--multirun", "+experiment=glue_sst2", "method=lora", "seed=0,1",
          *fast_overrides(tmp_path, glue_dir), "trainer.max_steps=2"])
    records = sorted(p.name for p in (tmp_path / "results" / "temporary").glob("*.json"))
    assert records == ["glue_sst2--lora--seed0.json", "glue_sst2--lora--seed1.json"]
    jobs = tmp_path / "logs" / "multirun" / "glue_sst2" / "lora" / "local"
    assert [p.name for p in checkpoints(jobs / "0")] == [p.name for p in checkpoints(jobs / "1")] == ["step_2", "step_1"]
    for name in records:
        info = json.loads((tmp_path / "results" / "temporary" / name).read_text())["train_info"]
        assert info["status"] == "completed" and info["steps"] == 2


DDP_ARGS = ["+experiment=glue_sst2", "model=tiny_deberta", "logger=none", "trainer.max_steps=3",
            "trainer.eval_every_steps=3", "trainer.batch_size=8", "trainer.eval_batch_size=16", "record_to=raw",
            "++model.tiny_config.hidden_dropout_prob=0.0", "++model.tiny_config.attention_probs_dropout_prob=0.0"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "quantum_peft"])
def test_ddp_two_processes_match_one(glue_dir, tmp_path, method: str) -> None:
    """accelerate launch --multi_gpu --num_processes 2 on CPU = gloo DDP; same global batch, same metrics."""
    results = {}
    for name, launcher in RUN_PY_LAUNCHERS.items():
        root = tmp_path / name
        _run([*launcher, *DDP_ARGS, f"method={method}", f"paths.root_dir={root}", f"task.data_dir={glue_dir}"],
             timeout=300)
        results[name] = json.loads((root / "results" / "raw" / f"glue_sst2--{method}--seed0.json").read_text())
    assert results["two"]["train_info"]["num_processes"] == 2 and results["one"]["train_info"]["num_processes"] == 1
    one, two = results["one"]["train_info"]["metrics"][-1], results["two"]["train_info"]["metrics"][-1]
    assert one["val/loss"] == pytest.approx(two["val/loss"], abs=1e-4)
    assert one["val/acc"] == pytest.approx(two["val/acc"])


def test_slurm_launcher_composes_and_sbatch_renders(make_cfg, tmp_path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = make_cfg(["+experiment=glue_sst2", "hydra/launcher=slurm_a100", "+hydra.launcher.partition=gpu"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1
    assert launcher.max_num_timeout == 0
    instantiate(launcher)  # constructing works without Slurm; only launching needs srun
    params = OmegaConf.to_container(launcher, resolve=True)
    script = _make_sbatch_string(command="python run.py +experiment=glue_sst2", folder=str(tmp_path), job_name="qpeft",
                                 partition=params["partition"], gpus_per_node=params["gpus_per_node"],
                                 time=params["timeout_min"], nodes=params["nodes"],
                                 ntasks_per_node=params["tasks_per_node"], cpus_per_task=params["cpus_per_task"],
                                 mem=f"{params['mem_gb']}GB", setup=params["setup"],
                                 additional_parameters=params["additional_parameters"])
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=720",
                 "#SBATCH --constraint=a100", "source .venv/bin/activate", "python run.py +experiment=glue_sst2"):
        assert line in script, line


def test_submit_script_is_valid_bash() -> None:
    script = ROOT / "scripts" / "slurm" / "submit.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "accelerate launch" in text and '--num_processes "$GPUS_PER_NODE"' in text and "--multirun" not in \
        text.split("set -euo pipefail")[1]
