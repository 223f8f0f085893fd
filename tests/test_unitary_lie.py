"""Lie-algebra mappings (exp, taylor, cayley, neumann): unitarity, exactness, counts, Jacobian rank."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from qpeft.unitary import build_mapping, count_mapping_parameters
from qpeft.unitary.lie import (
    cayley_columns,
    cayley_dense,
    exp_columns,
    lie_count,
    lower_block,
    neumann_columns,
    skew_dense,
    taylor_columns,
    taylor_dense,
)
from tests.unitary_helpers import adam_steps, ortho_error

LIE = ("exp", "taylor", "cayley", "neumann")
SHAPES_SMALL = [(n, k) for n in (2, 8, 64) for k in (1, 3, 16) if k <= n]
SHAPES_LARGE = [(n, k) for n in (768, 1024) for k in (1, 3, 16)]
F64 = torch.float64


LR = {"exp": 1e-2, "taylor": 1e-2, "cayley": 1e-2, "neumann": 1e-3}


@pytest.mark.parametrize("name", LIE)
@pytest.mark.parametrize("n, k", SHAPES_SMALL)
def test_orthonormal_small(name: str, n: int, k: int) -> None:
    module = build_mapping(name, n, k)
    assert max(adam_steps(module, LR[name])) < 1e-5


@pytest.mark.parametrize("name", LIE)
@pytest.mark.parametrize("n, k", SHAPES_LARGE)
def test_orthonormal_large(name: str, n: int, k: int) -> None:
    module = build_mapping(name, n, k)
    assert max(adam_steps(module, LR[name])) < 1e-5


@pytest.mark.parametrize("n", (768, 1024))
def test_exp_large_float32_matches_taylor_at_small_norm(n: int) -> None:
    # At the initial ‖S‖₂ ≈ 0.4, Taylor P = 18 is exact to float32 rounding: the two maps agree.
    module = build_mapping("exp", n, 16)
    with torch.no_grad():
        u = module()
        assert ortho_error(u) < 1e-5
        assert (u - taylor_columns(module.theta_block(), 16, 18)).abs().max() < 1e-5


def test_init_std_zero_gives_identity_columns() -> None:
    for name in LIE:
        u = build_mapping(name, 9, 4, init_std=0.0)()
        assert torch.equal(u, torch.eye(9, 4))


def test_taylor_converges_to_exp() -> None:
    theta = torch.randn(10, 3, dtype=F64) * 0.3
    exact = exp_columns(theta, 3)
    gaps, errors = [], []
    for order in (2, 4, 8, 12, 18):
        u = taylor_columns(theta, 3, order)
        gaps.append((u - exact).norm().item())
        errors.append(ortho_error(u))
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert all(a > b for a, b in zip(errors[:-1], errors[1:-1]))
    assert gaps[-1] < 1e-12 and errors[-1] < 1e-12
    assert errors[0] > 1e-2  # P = 2 is visibly non-unitary (spec: 0.70 at σ = 0.3)


def test_low_rank_taylor_equals_dense() -> None:
    theta = torch.randn(2, 3, 40, 5, dtype=F64) * 0.2  # batched, K' = 5 < K = 7
    for order in (1, 4, 18):
        low = taylor_columns(theta, 7, order)
        assert low.shape == (2, 3, 40, 7)
        assert torch.allclose(low, taylor_dense(theta, 7, order), atol=1e-14, rtol=0)


def test_cayley_woodbury_equals_dense_solve() -> None:
    theta = torch.randn(4, 50, 3, dtype=F64)
    assert torch.allclose(cayley_columns(theta, 6), cayley_dense(theta, 6), atol=1e-12, rtol=0)
    assert ortho_error(cayley_columns(theta, 6)) < 1e-12


def test_batched_cores_equal_per_item() -> None:
    theta = torch.randn(3, 12, 2, dtype=F64) * 0.2
    for fn in (lambda t: taylor_columns(t, 4, 10), lambda t: neumann_columns(t, 4, 10),
               lambda t: cayley_columns(t, 4), lambda t: exp_columns(t, 4)):
        batched = fn(theta)
        for i in range(3):
            assert torch.allclose(batched[i], fn(theta[i]), atol=1e-14, rtol=0)


def test_neumann_accuracy_is_what_the_docstring_says() -> None:
    theta = torch.randn(30, 4, dtype=F64)
    s_norm = torch.linalg.matrix_norm(skew_dense(theta), 2)
    small = theta * (0.5 / s_norm)  # ‖S‖₂ = 0.5: converges to Cayley as P grows
    gaps = [(neumann_columns(small, 4, p) - cayley_dense(small, 4)).norm().item() for p in (2, 6, 12, 24)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-6
    large = theta * (1.5 / s_norm)  # ‖S‖₂ = 1.5: the series diverges
    errs = [ortho_error(neumann_columns(large, 4, p)) for p in (2, 6, 12, 24)]
    assert all(a < b for a, b in zip(errs, errs[1:])) and errs[-1] > 1.0


def exp_jacobian(values: torch.Tensor, n: int, k: int, kp: int) -> torch.Tensor:
    """d exp(S)[:, :k] / dθ exactly, from exp([[S, E], [0, S]]) = [[e^S, D_E e^S], [0, e^S]].

    (Autograd through float64 matrix_exp is slow on CPU; this batches all directions at once.)
    """
    m = values.numel()
    s = skew_dense(lower_block(values, n, kp))
    directions = skew_dense(lower_block(torch.eye(m, dtype=values.dtype), n, kp))  # [m, n, n]
    block = torch.zeros(m, 2 * n, 2 * n, dtype=values.dtype)
    block[:, :n, :n] = s
    block[:, n:, n:] = s
    block[:, :n, n:] = directions
    return torch.linalg.matrix_exp(block)[:, :n, n:][..., :k].permute(1, 2, 0)


@pytest.mark.parametrize("name", LIE)
@pytest.mark.parametrize("kp, rank", [(3, 24), (2, 17), (1, 9)])
def test_jacobian_full_rank(name: str, kp: int, rank: int) -> None:
    n, k = 10, 3
    values = torch.randn(lie_count(n, kp), dtype=F64) * 0.3
    if name == "exp":
        jac = exp_jacobian(values, n, k, kp)
    else:
        core = {
            "taylor": lambda t: taylor_columns(t, k, 30),
            "cayley": lambda t: cayley_columns(t, k),
            "neumann": lambda t: neumann_columns(t, k, 60),
        }[name]
        jac = jacobian(lambda v: core(lower_block(v, n, kp)), values)
    assert jac.shape == (n, k, rank)
    assert torch.linalg.matrix_rank(jac.reshape(n * k, rank)).item() == rank


def test_exp_jacobian_helper_matches_autograd() -> None:
    values = torch.randn(lie_count(4, 2), dtype=F64) * 0.3
    auto = jacobian(lambda v: exp_columns(lower_block(v, 4, 2), 2), values)
    assert torch.allclose(exp_jacobian(values, 4, 2, 2), auto, atol=1e-13, rtol=0)


@pytest.mark.parametrize("name", LIE)
def test_num_parameters_matches_numel(name: str) -> None:
    for n, k in [(1, 1), (2, 1), (2, 2), (5, 5), (10, 3), (64, 16), (768, 16)]:
        for kp in sorted({None, 1, k, max(1, k // 2)}, key=lambda v: v or 0):
            module = build_mapping(name, n, k, intrinsic_rank=kp)
            numel = sum(p.numel() for p in module.parameters() if p.requires_grad)
            assert numel == count_mapping_parameters(name, n, k, intrinsic_rank=kp) == lie_count(n, kp or k)
            assert list(module.state_dict()) == ["theta"]  # index buffers are not persistent


def test_table8_counts() -> None:
    printed = [0.037, 0.074, 0.111, 0.147, 0.184, 0.221, 0.257, 0.294]
    strict = [24 * (2 * (768 * kp - kp * (kp + 1) // 2) + 16) for kp in range(1, 9)]
    assert strict[0] == 37_200 and strict[-1] == 293_568
    assert [round(c / 1e6, 3) for c in strict] == printed
    # Variant (b), tril with the diagonal (dead entries counted), matches too for K in 3..13, e.g. K = 4.
    variant_b = [24 * (2 * (768 * kp - kp * (kp - 1) // 2) + 4) for kp in range(1, 9)]
    assert variant_b[0] == 36_960 and [round(c / 1e6, 3) for c in variant_b] == printed
    for kp, expected in zip(range(1, 9), strict):
        u = build_mapping("taylor", 768, 16, intrinsic_rank=kp)
        numel = sum(p.numel() for p in u.parameters() if p.requires_grad)
        assert 24 * (2 * numel + 16) == expected


def test_exp_at_n2_is_ry() -> None:
    theta = torch.tensor([[0.0], [0.7]], dtype=F64)  # S = [[0, -θ], [θ, 0]] → RY(2θ)
    u = exp_columns(theta, 2)
    c, s = torch.cos(torch.tensor(0.7, dtype=F64)), torch.sin(torch.tensor(0.7, dtype=F64))
    assert torch.allclose(u, torch.stack([torch.stack([c, -s]), torch.stack([s, c])]))


@pytest.mark.parametrize(
    "options, word",
    [
        ({"intrinsic_rank": 0}, "intrinsic_rank"),
        ({"intrinsic_rank": 4}, "intrinsic_rank"),
        ({"intrinsic_rank": 2.0}, "intrinsic_rank"),
        ({"init_std": -1.0}, "init_std"),
        ({"order": 0}, "order"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_options_raise(options: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        build_mapping("taylor", 8, 3, **options)
    with pytest.raises(ValueError, match=word):
        count_mapping_parameters("taylor", 8, 3, **options)
    with pytest.raises(ValueError, match="order"):
        build_mapping("exp", 8, 3, order=4)
