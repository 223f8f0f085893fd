"""The one Accelerate training loop for every task and method: start / setup / train / save_checkpoint / cleanup.

Batch sizes are GLOBAL: ``trainer.batch_size`` samples per optimizer step, whatever the number of
processes or accumulation steps. The train loader yields global micro-batches of
``batch_size / grad_accum_steps`` and Accelerate splits each across the processes (``split_batches``),
so 1 process and N processes see the same samples in the same steps. Host syncs (``.item()``) happen
only every ``trainer.log_every`` steps and at evaluations (the divergence checks ride on them,
``experiments.divergence``).

Resume is exact, mid-epoch included: data order and loader seeds are functions of (seed, epoch) only, and
each process's RNG state is restored once the data loader is positioned at the checkpoint's batch.
"""

from __future__ import annotations

import dataclasses
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
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, gather_object, set_seed
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from experiments.checkpoint import Progress, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from experiments.divergence import FiniteWatch, check_metrics, check_parameters
from experiments.kbit import enable_gradient_checkpointing
from experiments.lock import FolderLock
from experiments.methods import Method, build_method
from experiments.resume import choose_checkpoint

log = logging.getLogger(__name__)
PRECISIONS = ("no", "fp16", "bf16")
SCHEDULES = {  # (optimizer, warmup, total) -> LR scheduler
    "linear": get_linear_schedule_with_warmup,  # warmup, then linear decay to 0
    "constant": lambda optimizer, warmup, total: get_constant_schedule_with_warmup(optimizer, warmup),
}


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
    """Owns the accelerator, task, method, data, optimizer and progress of one run.

    ``start()`` (cheap: accelerator, folder lock, checkpoint choice) refuses a run before anything is built;
    then ``setup()``, ``train()``, ``cleanup()``.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.tc = cfg.trainer
        self.output_dir = Path(cfg.paths.output_dir)
        self.progress = Progress()
        self.info: dict[str, Any] = {}
        self.lock = FolderLock(self.output_dir)
        self.resume_from: tuple[Path, dict[str, Any]] | None = None
        self._pending_rng: dict[str, Any] | None = None  # this process's RNG state, restored in train()

    # ------------------------------------------------------------------ start / setup
    def start(self) -> None:
        """Accelerator, lock of the output folder, checkpoint to resume from (raises if the run is refused)."""
        tc = self.tc
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
        self._lock_output_dir()
        try:
            self.resume_from = choose_checkpoint(
                self.output_dir, OmegaConf.to_container(self.cfg, resolve=True), tc.resume, acc.num_processes,
                acc.is_main_process, acc.wait_for_everyone)
        except BaseException:
            self.cleanup()
            raise

    def _lock_output_dir(self) -> None:
        """The main process takes the folder's lock; if it cannot, every process raises its error."""
        problem = None
        if self.accelerator.is_main_process:
            try:
                self.lock.acquire()
            except (RuntimeError, OSError) as err:
                problem = err
        problem = broadcast_object_list([problem])[0]
        if problem is not None:
            raise problem

    def setup(self) -> None:
        """Task, model, data, method, optimizer and schedule; the checkpoint's state when resuming."""
        from experiments.models import build_model
        from experiments.tasks import build_task

        tc, acc = self.tc, self.accelerator
        micro = tc.batch_size // tc.grad_accum_steps
        set_seed(self.cfg.seed)
        self.task = task = build_task(self.cfg.task)
        with acc.main_process_first():
            model, tokenizer = build_model(self.cfg.model, task)
            data = task.build_datasets(tokenizer)
        task.prepare_model(model)
        # The loader's own generator (re-seeded every epoch) seeds its workers: iterating never draws from the
        # global RNG, whose state is the training's (dropout) and is checkpointed.
        self.data_generator = torch.Generator()
        self.batch_sampler = None
        if hasattr(task, "train_batch_sampler"):  # e.g. GLUE's length-grouped, seeded batches
            self.batch_sampler = task.train_batch_sampler(data["train"], micro, self.cfg.seed)
            train_dl = DataLoader(data["train"], batch_sampler=self.batch_sampler, collate_fn=task.collate,
                                  num_workers=tc.num_workers, generator=self.data_generator)
        else:
            train_dl = DataLoader(data["train"], batch_size=micro, shuffle=True, collate_fn=task.collate,
                                  num_workers=tc.num_workers, generator=self.data_generator)
        eval_dl = DataLoader(data["val"], batch_size=tc.eval_batch_size, collate_fn=task.collate,
                             num_workers=tc.num_workers)
        self.steps_per_epoch = math.ceil(len(train_dl) / tc.grad_accum_steps)
        self.total_steps = tc.max_steps or tc.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.method: Method = build_method(self.cfg.method, model, self.cfg.model, self.total_steps,
                                           task.peft_task_type)
        enable_gradient_checkpointing(self.method.model, tc.gradient_checkpointing)
        optimizer = torch.optim.AdamW(self.method.param_groups(tc.weight_decay), lr=tc.lr,
                                      betas=tuple(tc.adam_betas), eps=tc.adam_eps)
        warmup = tc.warmup_steps or int(tc.warmup_ratio * self.total_steps)
        self.scheduler = SCHEDULES[tc.schedule](optimizer, warmup, self.total_steps)
        # The scheduler is not prepared: it steps once per optimizer step, whatever the process count.
        self.model, self.optimizer, self.train_dl, self.eval_dl = acc.prepare(
            self.method.model, optimizer, train_dl, eval_dl)
        trainable, total = self.method.counts()
        self.info.update(trainable_params=trainable, total_params=total, total_steps=self.total_steps,
                         num_processes=acc.num_processes)
        log.info("output dir: %s | %d processes | %d steps | trainable %d / %d params",
                 self.output_dir, acc.num_processes, self.total_steps, trainable, total)
        backend = self.cfg.logger.backend
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
        if self.resume_from is not None:
            path, _ = self.resume_from
            self.progress, states = load_checkpoint(path, method=self.method, optimizer=self.optimizer,
                                                    scheduler=self.scheduler)
            self._pending_rng = states[acc.process_index]
            log.info("resumed from %s at step %d", path, self.progress.global_step)
        self.watch = FiniteWatch(acc.device)
        self._loss_sum = torch.tensor(self.progress.loss_sum, device=acc.device)

    # ------------------------------------------------------------------ train
    def train(self) -> Progress:
        """Train until ``total_steps`` or early stopping; evaluates and checkpoints on the way.

        Raises :class:`experiments.divergence.Diverged` at the first sync after a non-finite value.
        """
        acc, tc, p = self.accelerator, self.tc, self.progress
        bar = tqdm(total=self.total_steps, initial=p.global_step, disable=not acc.is_local_main_process,
                   desc=f"{self.cfg.experiment_name}/{self.cfg.method.name}")
        self.model.train()
        while p.epoch < self.epochs and not self._done():
            if p.batches_in_epoch >= len(self.train_dl):  # resumed from a checkpoint at an epoch's last batch
                p.epoch, p.batches_in_epoch = p.epoch + 1, 0
                continue
            self.train_dl.set_epoch(p.epoch)
            if self.batch_sampler is not None:
                self.batch_sampler.set_epoch(p.epoch)
            self.data_generator.manual_seed(self.cfg.seed + p.epoch)
            if p.batches_in_epoch == 0:
                self._restore_rng()  # checkpointed between epochs: before this epoch's loader exists
            loader = acc.skip_first_batches(self.train_dl, p.batches_in_epoch) if p.batches_in_epoch else self.train_dl
            tick = time.perf_counter()
            for batch in loader:
                self._restore_rng()  # checkpointed mid-epoch: now that the loader is positioned (else a no-op)
                with acc.accumulate(self.model):
                    loss = self.task.compute_loss(self.model, batch)
                    acc.backward(loss)
                    self.watch.observe(loss, p.global_step + 1)
                    self._loss_sum, p.loss_count = self._loss_sum + loss.detach(), p.loss_count + 1
                    if acc.sync_gradients:
                        if tc.max_grad_norm:
                            norm = acc.clip_grad_norm_(self.model.parameters(), tc.max_grad_norm)
                            if tc.precision != "fp16":  # fp16's grad scaler skips overflowing steps by design
                                self.watch.observe(norm, p.global_step + 1)
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
                    self.watch.check(acc)  # never log a non-finite loss
                    train_loss = acc.reduce(self._loss_sum / p.loss_count, reduction="mean").item()
                    acc.log({"train/loss": train_loss, "train/lr": self.scheduler.get_last_lr()[0],
                             "train/epoch": p.epoch}, step=p.global_step)
                    bar.set_postfix(loss=f"{train_loss:.4f}")
                    self._loss_sum, p.loss_count = torch.zeros((), device=acc.device), 0
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

    def _restore_rng(self) -> None:
        """Restore the checkpoint's RNG state once (resume); a no-op otherwise."""
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None

    def _done(self) -> bool:
        p, patience = self.progress, self.tc.patience
        return p.global_step >= self.total_steps or bool(patience and p.evals_without_improvement >= patience)

    # ------------------------------------------------------------------ evaluate / checkpoint
    def evaluate_and_checkpoint(self) -> dict[str, float]:
        """Evaluate on the dev split, update best-so-far, log, checkpoint, maybe simulate a kill."""
        acc, p = self.accelerator, self.progress
        self.watch.check(acc)  # nothing non-finite is evaluated, recorded or checkpointed
        check_parameters(self.method.trainable_parameters().values(), p.global_step)
        metrics = self.task.evaluate(self.model, _Limited(self.eval_dl, self.tc.max_eval_batches), acc, "val")
        if p.global_step >= self.total_steps:  # the final model: the task's end-of-training metrics join in
            metrics.update(self.task.final_evaluate(self.model, acc, self.output_dir))
        check_metrics(metrics, p.global_step)
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
        acc, p = self.accelerator, self.progress
        p.loss_sum = float(self._loss_sum)
        states = gather_object([rng_state()])  # every process's, in process order
        if acc.is_main_process:
            state = {"adapter": self.method.adapter_state_dict(), "method_extra": self.method.extra_state(),
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "rng": states, "progress": dataclasses.asdict(p)}
            meta = {"step": p.global_step, "finished": self._done(), "num_processes": acc.num_processes,
                    "config": OmegaConf.to_container(self.cfg, resolve=True)}
            save_checkpoint(self.output_dir, state, meta, self.tc.keep_checkpoints)
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
        """End the trackers and release the output folder (always, from ``finally``)."""
        acc = getattr(self, "accelerator", None)
        if acc is not None:
            acc.end_training()
        self.lock.release()
