"""Fig. 6: unitarity error and forward+backward time of every unitary mapping vs N, in one run.

For each mapping and N (2^4 … 2^12, plus 768 and 3072), rank K = min(K, N):
- unitarity error: mean over seeds of ‖UᵀU − I‖_F in float32, parameters drawn by the mapping's
  own initialisation (``--init-std`` overrides it for every mapping that has one);
- time: median forward+backward of ``(U * G).sum()``, after a warm-up call.
Mappings that need a power of two (pauli, node) are run at 768/3072 through ``qsd`` and ``pad``.
Then two side-by-side ratios: Pauli K-column construction vs the dense N×N circuit matrix, and
low-rank vs dense Taylor, both at N = ``--ratio-n``.  Last, the exact exponential three ways at
N = 768 … 4096 (``--exp-sizes``), for K' = 1 and K' = K (and K = 3, K' = 1, the Lie method configs): the low-rank ``exp`` (``exp_columns``), Taylor at
P = 18 (``taylor_columns``) and the dense ``torch.linalg.matrix_exp`` (``exp_dense``, only up to
``--dense-max-n``, 2048 by default: its forward+backward takes ~4 min at N = 4096 on one core), with the ratios
dense/low-rank and Taylor/low-rank measured in this run.

    python scripts/bench_mappings.py            # writes results/bench/mappings.{json,png}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from qpeft.io import atomic_write, atomic_write_text  # noqa: E402
from timing import median_ms  # noqa: E402
from qpeft.unitary import build_mapping, mapping_class  # noqa: E402
from qpeft.unitary.lie import exp_columns, exp_dense, taylor_columns, taylor_dense  # noqa: E402
from qpeft.unitary.pauli import pauli_columns  # noqa: E402

FIG6_MAPPINGS = ("exp", "cayley", "householder", "givens", "taylor", "neumann", "pauli", "rademacher", "qsd", "pad")
SIZES = [2**e for e in range(4, 13)] + [768, 3072]


def fwd_bwd(mapping: torch.nn.Module, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        mapping.zero_grad(set_to_none=True)
        (mapping() * grad).sum().backward()

    return step


def options_for(name: str, init_std: float | None) -> dict:
    options = {}
    if init_std is not None and "init_std" in mapping_class(name).option_names():
        options["init_std"] = init_std
    return options


def bench_one(name: str, n: int, k: int, seeds: int, repeats: int, init_std: float | None) -> dict:
    errors = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        errors.append(float(build_mapping(name, n, k, **options_for(name, init_std)).unitarity_error()))
    torch.manual_seed(0)
    mapping = build_mapping(name, n, k, **options_for(name, init_std))
    if not any(p.requires_grad for p in mapping.parameters()):
        ms = median_ms(mapping, repeats)
    else:
        ms = median_ms(fwd_bwd(mapping, torch.randn(n, k)), repeats)
    return {"mapping": name, "n": n, "k": k, "unitarity_error": statistics.mean(errors), "ms": ms,
            "params": sum(p.numel() for p in mapping.parameters() if p.requires_grad)}


def side_by_side(n: int, k: int, repeats: int) -> dict:
    """The two construction ratios of the core-library issue, measured in this run."""
    torch.manual_seed(0)
    pauli = build_mapping("pauli", n, k)
    theta = pauli.theta.detach().requires_grad_(True)
    n_qubits, layers = pauli.n_qubits, pauli.layers

    def pauli_k() -> None:
        pauli_columns(theta, n_qubits, layers, k).sum().backward()

    def pauli_full() -> None:
        pauli_columns(theta, n_qubits, layers, n)[:, :k].sum().backward()

    lie = build_mapping("taylor", n, k, init_std=0.01)
    block = lie.theta_block().detach().requires_grad_(True)

    def taylor_low() -> None:
        taylor_columns(block, k, lie.order).sum().backward()

    def taylor_full() -> None:
        taylor_dense(block, k, lie.order).sum().backward()

    times = {name: median_ms(fn, repeats) for name, fn in
             [("pauli_k_columns", pauli_k), ("pauli_dense_matrix", pauli_full),
              ("taylor_low_rank", taylor_low), ("taylor_dense", taylor_full)]}
    return {
        "n": n, "k": k, "ms": times,
        "pauli_speedup": times["pauli_dense_matrix"] / times["pauli_k_columns"],
        "taylor_speedup": times["taylor_dense"] / times["taylor_low_rank"],
        "targets": {"pauli_speedup": 50.0, "taylor_speedup": 20.0},
    }


def interleaved_ms(fns: dict[str, Callable[[], None]], rounds: int, once: set[str]) -> dict[str, float]:
    """Median ms of each function over ``rounds`` round-robin rounds (one call each per round, after a
    warm-up), so that load from other processes hits all of them alike; names in ``once`` run one round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        if name not in once:  # warm-up (a single slow call needs none)
            fn()
    for r in range(rounds):
        for name, fn in fns.items():
            if r and name in once:
                continue
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def exp_comparison(sizes: list[int], k: int, repeats: int, dense_max_n: int) -> list[dict]:
    """Forward+backward ms of the low-rank exp, Taylor P = 18 and dense exp on the same Θ, interleaved."""
    rows = []
    for k, kp in dict.fromkeys([(k, 1), (k, k), (3, 1)]):  # Fig. 6's K, and the GLUE/E2E configs' K = 3, K' = 1
        for n in sizes:
            torch.manual_seed(0)
            block = build_mapping("exp", n, k, intrinsic_rank=kp).theta_block().detach().requires_grad_(True)
            fns = {"exp_low_rank": lambda: exp_columns(block, k).sum().backward(),
                   "taylor_p18": lambda: taylor_columns(block, k, 18).sum().backward()}
            if n <= dense_max_n:
                fns["exp_dense"] = lambda: exp_dense(block, k).sum().backward()
            ms = interleaved_ms(fns, rounds=max(repeats, 11), once={"exp_dense"})
            row = {"n": n, "k": k, "intrinsic_rank": kp, "ms": ms,
                   "taylor_over_exp": ms["taylor_p18"] / ms["exp_low_rank"],
                   "dense_over_exp": ms["exp_dense"] / ms["exp_low_rank"] if "exp_dense" in ms else None}
            rows.append(row)
            dense = f"{row['dense_over_exp']:.0f}x" if row["dense_over_exp"] else f"not run (N > {dense_max_n})"
            print(f"exp N={n:5d} K={k} K'={kp}: low-rank {ms['exp_low_rank']:.2f} ms, Taylor P=18 "
                  f"{row['taylor_over_exp']:.2f}x of it, dense {dense}", flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_err, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
    for name in sorted({r["mapping"] for r in rows}):
        pts = sorted((r["n"], r["unitarity_error"], r["ms"]) for r in rows if r["mapping"] == name)
        ns = [p[0] for p in pts]
        ax_err.plot(ns, [max(p[1], 1e-16) for p in pts], marker="o", label=name)
        ax_time.plot(ns, [p[2] for p in pts], marker="o", label=name)
    for ax, label in ((ax_err, "mean ‖UᵀU − I‖_F"), (ax_time, "forward+backward (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_time.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=16, help="K (the paper's value for Fig. 6 was lost)")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--init-std", type=float, default=None, help="override every mapping's init_std")
    parser.add_argument("--max-ms", type=float, default=3000.0, help="stop growing N for a mapping slower than this")
    parser.add_argument("--ratio-n", type=int, default=4096)
    parser.add_argument("--exp-sizes", nargs="*", type=int, default=[768, 1024, 2048, 3072, 4096])
    parser.add_argument("--dense-max-n", type=int, default=2048, help="largest N for the dense matrix_exp "
                        "(one call: ~30 s at 2048, ~4 min at 4096 on one core)")
    parser.add_argument("--exp-only", action="store_true", help="only the exp comparison (updates it in --out)")
    parser.add_argument("--mappings", nargs="*", default=list(FIG6_MAPPINGS))
    parser.add_argument("--sizes", nargs="*", type=int, default=SIZES)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: this 2-core machine is shared, "
                        "and waking a second OpenMP thread dominates mid-size ops)")
    parser.add_argument("--out", type=Path, default=Path("results/bench/mappings.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.exp_only:
        record = json.loads(args.out.read_text())
        record["exp_comparison"] = exp_comparison(args.exp_sizes, args.rank, args.repeats, args.dense_max_n)
        atomic_write_text(args.out, json.dumps(record, indent=2))
        print(f"updated exp_comparison in {args.out}")
        return
    rows, skipped = [], []
    for name in args.mappings:
        too_slow = False
        for n in sorted(args.sizes):
            if too_slow:
                skipped.append({"mapping": name, "n": n, "reason": f"a smaller N took > {args.max_ms} ms"})
                continue
            try:
                row = bench_one(name, n, min(args.rank, n), args.seeds, args.repeats, args.init_std)
            except ValueError as err:  # e.g. pauli at N = 768: not a power of two
                skipped.append({"mapping": name, "n": n, "reason": str(err)})
                continue
            rows.append(row)
            too_slow = row["ms"] > args.max_ms
            print(f"{name:12s} N={n:5d} K={row['k']:3d} err={row['unitarity_error']:.2e} "
                  f"fwd+bwd={row['ms']:9.2f} ms params={row['params']}", flush=True)
    ratios = side_by_side(args.ratio_n, args.rank, args.repeats)
    print(f"\nN={ratios['n']} K={ratios['k']}: pauli K-columns vs dense circuit matrix {ratios['pauli_speedup']:.1f}x "
          f"(target >= 50x); low-rank vs dense Taylor {ratios['taylor_speedup']:.1f}x (target >= 20x)")
    exp_rows = exp_comparison(args.exp_sizes, args.rank, args.repeats, args.dense_max_n)
    record = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows, "skipped": skipped, "ratios": ratios, "exp_comparison": exp_rows,
        "exp_targets": {"taylor_over_exp": 1.0, "dense_over_exp_at_768": 100.0},
    }
    atomic_write_text(args.out, json.dumps(record, indent=2))
    plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
