"""Entry point: ``python run.py +experiment=glue_sst2 [method=lora] [seed=1] [debug=fdr]``.

Multi-process: ``accelerate launch --multi_gpu --num_processes 2 run.py +experiment=...`` (also CPU/gloo).
Sweeps: ``python run.py --multirun ... +sweep=seeds`` (never --multirun under accelerate launch/torchrun).
Returns the best value of ``cfg.optimized_metric`` so that Hydra sweepers (Optuna, ...) can use it.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import experiments
from experiments.schemas import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    with open_dict(cfg):  # Hydra's own run/sweep dir: deterministic, and distinct per multirun job
        cfg.paths.output_dir = HydraConfig.get().runtime.output_dir
    return experiments.run(cfg, HydraConfig.get().overrides.task)["best"]


if __name__ == "__main__":
    main()
