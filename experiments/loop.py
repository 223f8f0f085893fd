"""The one Accelerate training loop for every task and method: setup / train / save_checkpoint / cleanup.

Batch sizes are GLOBAL: ``trainer.batch_size`` samples per optimizer step, whatever the number of
processes or accumulation steps. The train loader yields global micro-batches of
``batch_size / grad_accum_steps`` and Accelerate splits each across the processes (``split_batches``),
so 1 process and N processes see the same samples in the same steps. Host syncs (``.item()``) happen
only every ``trainer.log_every`` steps and at evaluations.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration, set_seed
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from experiments.checkpoint import Progress, find_checkpoint, load_checkpoint, save_checkpoint
from experiments.methods import Method, build_method

log = logging.getLogger(__name__)


class SimulatedKill(RuntimeError):
    """Raised by ``trainer.stop_after_steps`` right after a checkpoint (tests of resume)."""


class _Limited:
    """At most ``n`` batches of ``loader`` (``trainer.max_eval_batches``)."""

    def __init__(self, loader: Iterable, n: int | None) -> None:
        self.loader, self.n = loader, n

    def __iter__(self) -> Iterator:
        return iter(self.loader) if self.n is None else itertools.islice(self.loader, self.n)


def reset_accelerate_state() -> None:
    """Forget the previous run's Accelerate singletons (several runs in one process, accelerate#1131)."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


class Trainer:
    """Owns the accelerator, task, method, data, optimizer and progress of one run."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.tc = cfg.trainer
        self.output_dir = Path(cfg.paths.output_dir)
        self.progress = Progress()
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from experiments.models import build_model
        from experiments.tasks import build_task

        tc = self.tc
        if tc.batch_size % tc.grad_accum_steps:
            raise ValueError(f"trainer.batch_size={tc.batch_size} is not divisible by grad_accum_steps={tc.grad_accum_steps}")
        if tc.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        reset_accelerate_state()
        backend = self.cfg.logger.backend
        if backend == "wandb":
            os.environ.setdefault("WANDB_MODE", self.cfg.logger.mode)  # the environment wins (tests: disabled)
        self.accelerator = acc = Accelerator(
            cpu=not torch.cuda.is_available(),  # without it a GPU-less launch stays 1 process per rank (no gloo)
            mixed_precision=tc.precision, gradient_accumulation_steps=tc.grad_accum_steps, log_with=backend,
            project_dir=str(self.output_dir),
            dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True,
                                                      data_seed=self.cfg.seed),
        )
        micro = tc.batch_size // tc.grad_accum_steps
        if micro % acc.num_processes:
            raise ValueError(f"global micro-batch {micro} is not divisible by {acc.num_processes} processes")
        set_seed(self.cfg.seed)
        self.task = task = build_task(self.cfg.task)
        with acc.main_process_first():
            model, tokenizer = build_model(self.cfg.model, task)
            data = task.build_datasets(tokenizer)
        self.batch_sampler = None
        if hasattr(task, "train_batch_sampler"):  # e.g. GLUE's length-grouped, seeded batches
            self.batch_sampler = task.train_batch_sampler(data["train"], micro, self.cfg.seed)
            train_dl = DataLoader(data["train"], batch_sampler=self.batch_sampler, collate_fn=task.collate,
                                  num_workers=tc.num_workers)
        else:
            train_dl = DataLoader(data["train"], batch_size=micro, shuffle=True, collate_fn=task.collate,
                                  num_workers=tc.num_workers)
        eval_dl = DataLoader(data["val"], batch_size=tc.eval_batch_size, collate_fn=task.collate,
                             num_workers=tc.num_workers)
        self.steps_per_epoch = math.ceil(len(train_dl) / tc.grad_accum_steps)
        self.total_steps = tc.max_steps or tc.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.method: Method = build_method(self.cfg.method, model, self.cfg.model, self.total_steps)
        optimizer = torch.optim.AdamW(self.method.param_groups(tc.weight_decay), lr=tc.lr,
                                      betas=tuple(tc.adam_betas), eps=tc.adam_eps)
        warmup = tc.warmup_steps or int(tc.warmup_ratio * self.total_steps)
        if tc.schedule == "linear":
            self.scheduler = get_linear_schedule_with_warmup(optimizer, warmup, self.total_steps)
        elif tc.schedule == "constant":
            self.scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
        else:
            raise ValueError(f"trainer.schedule={tc.schedule!r} is invalid; valid: linear, constant")
        # The scheduler is not prepared: it steps once per optimizer step, whatever the process count.
        self.model, self.optimizer, self.train_dl, self.eval_dl = acc.prepare(
            self.method.model, optimizer, train_dl, eval_dl)
        trainable, total = self.method.counts()
        self.info.update(trainable_params=trainable, total_params=total, total_steps=self.total_steps,
                         num_processes=acc.num_processes)
        log.info("output dir: %s | %d processes | %d steps | trainable %d / %d params",
                 self.output_dir, acc.num_processes, self.total_steps, trainable, total)
        if backend:
            wandb_kwargs = {"name": f"{self.cfg.experiment_name}--{self.cfg.method.name}--seed{self.cfg.seed}",
                            "group": self.cfg.experiment_name, "dir": str(self.output_dir),
                            "tags": [*self.cfg.tags, *self.cfg.logger.tags, self.cfg.method.name]}
            if self.cfg.logger.entity:
                wandb_kwargs["entity"] = self.cfg.logger.entity
            self.output_dir.mkdir(parents=True, exist_ok=True)
            acc.init_trackers(self.cfg.logger.project, config=OmegaConf.to_container(self.cfg, resolve=True),
                              init_kwargs={"wandb": wandb_kwargs})
        acc.log({"params/trainable": trainable, "params/total": total}, step=0)
        if tc.resume and (ckpt := find_checkpoint(self.output_dir)) is not None:
            self.progress = load_checkpoint(ckpt, method=self.method, optimizer=self.optimizer,
                                            scheduler=self.scheduler)
            log.info("resumed from %s at step %d", ckpt, self.progress.global_step)

    # ------------------------------------------------------------------ train
    def train(self) -> Progress:
        """Train until ``total_steps`` or early stopping; evaluates and checkpoints on the way."""
        acc, tc, p = self.accelerator, self.tc, self.progress
        bar = tqdm(total=self.total_steps, initial=p.global_step, disable=not acc.is_local_main_process,
                   desc=f"{self.cfg.experiment_name}/{self.cfg.method.name}")
        running, count = torch.zeros((), device=acc.device), 0
        self.model.train()
        while p.epoch < self.epochs and not self._done():
            self.train_dl.set_epoch(p.epoch)
            if self.batch_sampler is not None:
                self.batch_sampler.set_epoch(p.epoch)
            loader = acc.skip_first_batches(self.train_dl, p.batches_in_epoch) if p.batches_in_epoch else self.train_dl
            tick = time.perf_counter()
            for batch in loader:
                with acc.accumulate(self.model):
                    loss = self.task.compute_loss(self.model, batch)
                    acc.backward(loss)
                    running, count = running + loss.detach(), count + 1
                    if acc.sync_gradients:
                        if tc.max_grad_norm:
                            acc.clip_grad_norm_(self.model.parameters(), tc.max_grad_norm)
                        self.optimizer.step()
                        if not acc.optimizer_step_was_skipped:
                            self.scheduler.step()
                        self.method.on_step_end(p.global_step)  # 0-based index of this step (peft's convention)
                        p.global_step += 1
                        self.optimizer.zero_grad(set_to_none=True)
                p.batches_in_epoch += 1
                if not acc.sync_gradients:
                    continue
                bar.update(1)
                if p.global_step % tc.log_every == 0:
                    train_loss = acc.reduce(running / count, reduction="mean").item()
                    acc.log({"train/loss": train_loss, "train/lr": self.scheduler.get_last_lr()[0],
                             "train/epoch": p.epoch}, step=p.global_step)
                    bar.set_postfix(loss=f"{train_loss:.4f}")
                    running, count = torch.zeros((), device=acc.device), 0
                if tc.eval_every_steps and p.global_step % tc.eval_every_steps == 0:
                    p.train_seconds += time.perf_counter() - tick
                    self.evaluate_and_checkpoint()
                    tick = time.perf_counter()
                if self._done():
                    break
            p.train_seconds += time.perf_counter() - tick
            if p.batches_in_epoch >= len(self.train_dl):
                p.epoch, p.batches_in_epoch = p.epoch + 1, 0
                if not tc.eval_every_steps:
                    self.evaluate_and_checkpoint()
        if not p.history or p.history[-1]["step"] != p.global_step:
            self.evaluate_and_checkpoint()  # a run cut by max_steps or early stopping ends evaluated
        bar.close()
        return p

    def _done(self) -> bool:
        p, patience = self.progress, self.tc.patience
        return p.global_step >= self.total_steps or bool(patience and p.evals_without_improvement >= patience)

    # ------------------------------------------------------------------ evaluate / checkpoint
    def evaluate_and_checkpoint(self) -> dict[str, float]:
        """Evaluate on the dev split, update best-so-far, log, checkpoint, maybe simulate a kill."""
        acc, p = self.accelerator, self.progress
        metrics = self.task.evaluate(self.model, _Limited(self.eval_dl, self.tc.max_eval_batches), acc, "val")
        name = self.cfg.optimized_metric
        if name not in metrics:
            raise KeyError(f"optimized_metric {name!r} is not among the task's metrics {sorted(metrics)}")
        value = metrics[name]
        better = p.best is None or (value > p.best if self.task.greater_is_better else value < p.best)
        if better:
            p.best, p.best_step, p.evals_without_improvement = value, p.global_step, 0
        else:
            p.evals_without_improvement += 1
        metrics[f"{name}_best"] = p.best
        diagnostics = self.method.diagnostics()
        p.history.append({"step": p.global_step, "epoch": p.epoch, **metrics, **self.method.summary()})
        acc.log({**metrics, **diagnostics}, step=p.global_step)
        log.info("step %d: %s", p.global_step, {k: round(v, 4) for k, v in metrics.items()})
        if self.tc.checkpoint:
            self.save_checkpoint()
        if self.tc.stop_after_steps and p.global_step >= self.tc.stop_after_steps:
            raise SimulatedKill(f"trainer.stop_after_steps={self.tc.stop_after_steps} reached (simulated kill)")
        return metrics

    def save_checkpoint(self) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_checkpoint(self.output_dir, method=self.method, optimizer=self.optimizer, scheduler=self.scheduler,
                            progress=self.progress, config=OmegaConf.to_container(self.cfg, resolve=True))
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ end
    def save_adapter(self) -> int:
        """Save the final adapter to ``<output_dir>/adapter``; returns its size in bytes."""
        from experiments.records import dir_bytes

        directory = self.output_dir / "adapter"
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.method.save_adapter(directory)
        self.accelerator.wait_for_everyone()
        return dir_bytes(directory)

    def cleanup(self) -> None:
        """End the trackers (always, from ``finally``)."""
        acc = getattr(self, "accelerator", None)
        if acc is not None:
            acc.end_training()
