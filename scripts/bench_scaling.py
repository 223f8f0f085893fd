"""U/V construction cost vs N (2^6 … 2^14) for pauli and taylor, K columns, against dense construction.

For each N: median forward+backward time of ``(U * G).sum()`` and the memory autograd keeps for the
backward (bytes of distinct saved tensors, counted by ``saved_tensors_hooks``: deterministic, no
allocator noise), for

- ``pauli``: ``pauli_columns`` (K basis columns through the circuit, O(L N K log N));
- ``pauli-dense``: the whole N×N circuit matrix (identity through the circuit), then K columns;
- ``taylor``: ``taylor_columns`` (the truncated series through the rank-2K' compression, O(N K²) at K' = K);
- ``taylor-dense``: ``taylor_dense`` (dense N×N generator S).

The exponent b of ``cost ≈ a·N^b`` is fitted by least squares on log-log, over all N and over N ≥ 2^10.

    python scripts/bench_scaling.py          # writes results/bench/scaling.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from qpeft.io import atomic_write_text  # noqa: E402
from timing import median_ms  # noqa: E402
from qpeft.unitary.lie import lie_count, lower_block, taylor_columns, taylor_dense  # noqa: E402
from qpeft.unitary.pauli import pauli_apply, pauli_columns, two_design_gate_count  # noqa: E402

DENSE_MAX = {"pauli-dense": 2**12, "taylor-dense": 2**13}  # beyond: N×N activations of several GiB


def builder(kind: str, n: int, k: int, layers: int, order: int) -> tuple[torch.Tensor, Callable[[], torch.Tensor]]:
    """``(parameters, build)`` where ``build()`` returns the ``n x k`` factor."""
    torch.manual_seed(0)
    if kind.startswith("pauli"):
        q = int(math.log2(n))
        theta = torch.randn(two_design_gate_count(q, layers)).requires_grad_()
        if kind == "pauli":
            return theta, lambda: pauli_columns(theta, q, layers, k)
        return theta, lambda: pauli_apply(theta, torch.eye(n), q, layers)[:, :k]
    theta = (0.01 * torch.randn(lie_count(n, k))).requires_grad_()
    core = taylor_columns if kind == "taylor" else taylor_dense
    return theta, lambda: core(lower_block(theta, n, k), k, order)


def saved_bytes(build: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for the backward of ``build()``."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta" and t.untyped_storage().nbytes():
            seen[(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = build()
    return sum(seen.values()) + out.numel() * out.element_size()


def fwd_bwd_ms(theta: torch.Tensor, build: Callable[[], torch.Tensor], repeats: int) -> float:
    grad = torch.randn_like(build().detach())

    def step() -> None:
        theta.grad = None
        (build() * grad).sum().backward()

    return median_ms(step, repeats)


def fit_exponent(ns: list[int], values: list[float]) -> float | None:
    """Least-squares slope of log(value) on log(N)."""
    if len(ns) < 2:
        return None
    x = torch.tensor([math.log(n) for n in ns], dtype=torch.float64)
    y = torch.tensor([math.log(v) for v in values], dtype=torch.float64)
    design = torch.stack([x, torch.ones_like(x)], 1)
    return float(torch.linalg.lstsq(design, y.unsqueeze(1)).solution[0, 0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--order", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/bench/scaling.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [2**e for e in range(6, 15)]
    rows: dict[str, list[dict]] = {}
    for kind in ("pauli", "pauli-dense", "taylor", "taylor-dense"):
        rows[kind] = []
        for n in sizes:
            if n > DENSE_MAX.get(kind, n):
                continue
            theta, build = builder(kind, n, args.k, args.layers, args.order)
            row = {"n": n, "ms": fwd_bwd_ms(theta, build, args.repeats), "saved_bytes": saved_bytes(build)}
            rows[kind].append(row)
            print(f"{kind:13s} N={n:6d}  {row['ms']:9.3f} ms  {row['saved_bytes'] / 2**20:9.2f} MiB", flush=True)
    fits = {}
    for kind, data in rows.items():
        big = [r for r in data if r["n"] >= 2**10]
        fits[kind] = {
            "time_all": fit_exponent([r["n"] for r in data], [r["ms"] for r in data]),
            "time_n_ge_1024": fit_exponent([r["n"] for r in big], [r["ms"] for r in big]),
            "memory_all": fit_exponent([r["n"] for r in data], [r["saved_bytes"] for r in data]),
        }
        print(kind, {k: None if v is None else round(v, 2) for k, v in fits[kind].items()})
    report = {"settings": vars(args) | {"out": str(args.out)}, "torch": torch.__version__, "rows": rows, "exponents": fits}
    atomic_write_text(args.out, json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
