"""Shared timing helpers of the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds over ``repeats`` calls, after one warm-up call."""
    fn()  # warm-up (allocator, lazy init)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a wall-clock interval covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def round_robin(tasks: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                warmup: int = 1) -> dict[str, dict]:
    """``warmup`` untimed rounds, then ``repeats`` timed ones, the task order rotated every round so that drift
    hits every task alike. Per task: median/min/max ms, every time, and on CUDA the peak memory one call
    allocated above what was held before it (``peak_step_bytes``, ``None`` on CPU)."""
    names = list(tasks)
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, int] = {}
    for r in range(warmup + repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                held = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            tasks[name]()
            sync(device)
            if r >= warmup:
                times[name].append(1e3 * (time.perf_counter() - start))
                if device.type == "cuda":
                    peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(device) - held)
    return {n: {"ms": statistics.median(t), "min": min(t), "max": max(t), "times_ms": t,
                "peak_step_bytes": peaks.get(n)} for n, t in times.items()}
