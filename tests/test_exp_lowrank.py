"""The exact low-rank exponential (``exp``): equal to dense ``matrix_exp`` at every norm, exact gradients,
orthonormal in float32 after training at the paper's learning rates, and the guard on truncated series."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torch.autograd import gradcheck

from qpeft import QPeftConfig, get_qpeft_model
from qpeft.guard import ManifoldWarning
from qpeft.unitary import build_mapping
from qpeft.unitary.lie import exp_apply, exp_columns, exp_dense, generator_norm, phi_function, skew_dense
from tests.unitary_helpers import ortho_error

F64 = torch.float64


def _theta(n: int, kp: int, norm: float, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    """A strictly lower ``n x K'`` block scaled so that ‖S‖₂ = ``norm`` (checked against the dense S below)."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.tril(torch.randn(n, kp, generator=gen, dtype=F64), diagonal=-1)
    return (theta * (norm / generator_norm(theta))).to(dtype)


@pytest.mark.parametrize("n", (6, 100, 768))
@pytest.mark.parametrize("kp", (1, 2, 3))
def test_low_rank_exp_equals_dense_matrix_exp(n: int, kp: int) -> None:
    k = 3
    thetas = torch.stack([_theta(n, kp, norm, seed=n + kp) for norm in (0.05, 1.0, 7.0, 50.0)])
    dense = exp_dense(thetas, k)  # one batched O(n³) reference per shape
    low = exp_columns(thetas, k)
    assert low.shape == (4, n, k)
    assert (low - dense).abs().max().item() < 1e-10


def _scipy_reference(theta: np.ndarray, k: int) -> np.ndarray:
    """exp(S)[:, :k] in float64 by numpy/scipy only: an orthonormal basis P of S's range (SVD of
    [E, L[:, :K']]), T = PᵀSP with the dense S, exp(S) = I + P (expm(T) − I) Pᵀ.  Shares no code with qpeft."""
    n, kp = theta.shape
    lower = np.zeros((n, n))
    lower[:, :kp] = np.tril(theta, -1)
    s = lower - lower.T
    u, sing, _ = np.linalg.svd(np.hstack([np.eye(n)[:, :kp], lower[:, :kp]]), full_matrices=False)
    basis = u[:, sing > 1e-12 * sing.max()]
    t = basis.T @ s @ basis
    return np.eye(n)[:, :k] + basis @ ((scipy.linalg.expm(t) - np.eye(t.shape[0])) @ basis[:k].T)


@pytest.mark.parametrize("kp, norm", [(1, 50.0), (2, 10.0), (3, 0.5)])
def test_low_rank_exp_at_3072_equals_scipy_reference(kp: int, norm: float) -> None:
    theta = _theta(3072, kp, norm, seed=kp)
    ours = exp_columns(theta, 3).numpy()
    assert np.abs(ours - _scipy_reference(theta.numpy(), 3)).max() < 1e-10


def test_exp_apply_is_the_whole_orthogonal_matrix() -> None:
    theta = _theta(40, 2, 9.0, seed=1)
    x = torch.randn(40, 7, dtype=F64)
    full = torch.linalg.matrix_exp(skew_dense(theta))
    assert (exp_apply(torch.tril(theta, -1), x) - full @ x).abs().max().item() < 1e-12


def test_generator_norm_is_the_spectral_norm() -> None:
    for kp, norm in ((1, 0.3), (3, 42.0), (5, 7.0)):
        theta = _theta(200, kp, norm, seed=kp)
        assert abs(torch.linalg.matrix_norm(skew_dense(theta), ord=2).item() - norm) < 1e-9 * norm


@pytest.mark.parametrize("n, kp, k, scale", [(5, 1, 3, 1.0), (6, 2, 3, 4.0), (7, 3, 3, 0.5), (4, 2, 4, 2.0), (3, 3, 3, 1.0)])
def test_gradcheck(n: int, kp: int, k: int, scale: float) -> None:
    theta = (scale * torch.randn(n, kp, dtype=F64)).requires_grad_()
    x = torch.randn(n, 2, dtype=F64, requires_grad=True)
    assert gradcheck(lambda t: exp_columns(t, k), (theta,))
    assert gradcheck(lambda t, v: exp_apply(torch.tril(t, -1), v), (theta, x))


def test_float32_orthonormal_at_any_norm() -> None:
    for n, kp, k in ((768, 1, 2), (3072, 3, 3), (3072, 8, 16)):
        for norm in (0.1, 5.0, 50.0, 500.0):
            assert ortho_error(exp_columns(_theta(n, kp, norm, seed=n, dtype=torch.float32), k)) < 2e-5


def _nonlinear_adamw(module: nn.Module, steps: int = 50, lr: float = 0.06) -> list[float]:
    """AdamW on ``Σ sin(3·U ⊙ T)²`` (not linear in U); ‖UᵀU − I‖_F after every step."""
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(module.n, module.k, generator=gen)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.01)
    errors = []
    for _ in range(steps):
        opt.zero_grad()
        torch.sin(3 * module() * target).square().sum().backward()
        opt.step()
        errors.append(ortho_error(module().detach()))
    return errors


@pytest.mark.parametrize("n", (768, 3072))
@pytest.mark.parametrize("name, options", [("exp", {}), ("exp", {"intrinsic_rank": 1}),
                                           ("qsd", {"block": "exp", "angles": "per_pair"})])
def test_exact_mappings_stay_orthonormal_at_lr_0_06(n: int, name: str, options: dict) -> None:
    module = build_mapping(name, n, 3, **options)
    errors = _nonlinear_adamw(module)
    assert max(errors) <= 1e-4
    if name == "exp":  # the generator really grew outside Taylor P = 18's range (‖S‖₂ ≈ 4)
        assert generator_norm(module.theta_block()).item() > 5


def _mlp_pair(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768))


def _train_pair(mapping: str, options: dict, steps: int = 50, lr: float = 0.06, check_every: int = 5):
    """The issue's 768 ↔ 3072 Linear pair, K = 3, α = 32, dropout 0.1, AdamW on a nonlinear loss."""
    config = QPeftConfig(target_modules=["0", "2"], rank=3, alpha=32, mapping=mapping, mapping_options=options,
                         dropout=0.1)
    model = get_qpeft_model(_mlp_pair(), config, unitarity_check_every=check_every)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 768, generator=gen), torch.randn(16, 768, generator=gen)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.smooth_l1_loss(torch.tanh(model(x)), torch.tanh(y)).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            model(x)  # the first eval forward after training checks every factor
    return model, [w for w in caught if issubclass(w.category, ManifoldWarning)]


@pytest.mark.parametrize("mapping, options", [
    ("taylor", {"order": 18}),
    ("taylor", {"order": 18, "intrinsic_rank": 1}),
    ("qsd", {"block": "taylor", "angles": "per_pair"}),
])
def test_truncated_taylor_warns_naming_the_factor(mapping: str, options: dict) -> None:
    """Taylor stays the paper's truncated series; leaving the manifold is never silent."""
    model, caught = _train_pair(mapping, options)
    assert model.guard.max_error > 1e-3
    messages = [str(w.message) for w in caught]
    assert messages and all("left the Stiefel manifold" in m for m in messages)
    assert any(model.guard.worst in m for m in messages)
    assert any(("'exp'" in m) for m in messages)  # it names the exact alternative
    assert len(messages) == len(set(messages)) == len(model.guard.warned)  # once per factor


@pytest.mark.parametrize("mapping, options", [("exp", {"intrinsic_rank": 1}), ("qsd", {"block": "exp"})])
def test_exact_mappings_train_silently(mapping: str, options: dict) -> None:
    model, caught = _train_pair(mapping, options, check_every=1)
    assert not caught
    assert model.guard.max_error <= 1e-4


def test_neumann_warns_when_its_series_diverges() -> None:
    config = QPeftConfig(target_modules=["0"], rank=3, mapping="neumann", mapping_options={"order": 18})
    model = get_qpeft_model(nn.Sequential(nn.Linear(64, 64)), config)
    x = torch.randn(2, 64)
    model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            model(x)
    assert not [w for w in caught if issubclass(w.category, ManifoldWarning)]
    mapping = model.get_base_model()[0].qpeft_u[0]
    with torch.no_grad():
        mapping.theta.mul_(1.2 / generator_norm(mapping.theta_block()))  # ‖S‖₂ = 1.2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            model(x)
    messages = [str(w.message) for w in caught if issubclass(w.category, ManifoldWarning)]
    assert any("0.u0" in m and "‖S‖₂ = 1.2" in m and ">= 1" in m for m in messages)


@pytest.mark.parametrize("size, norm", [(2, 0.01), (8, 3.0), (32, 100.0)])
def test_phi_equals_the_block_matrix_exponential(size: int, norm: float) -> None:
    """φ(Z) by scaling and squaring = top-right block of exp([[Z, I], [0, 0]]), Z = (skew)·(PSD diagonal)."""
    a = torch.randn(3, size, size, dtype=F64)
    z = (a - a.mT) @ torch.diag_embed(torch.rand(3, size, dtype=F64))
    z = z * (norm / torch.linalg.matrix_norm(z, ord=2).amax())
    eye, zero = torch.eye(size, dtype=F64).expand_as(z), torch.zeros_like(z)
    block = torch.cat([torch.cat([z, eye], -1), torch.cat([zero, zero], -1)], -2)
    reference = torch.linalg.matrix_exp(block)[..., :size, size:]
    assert ((phi_function(z) - reference).abs().max() / reference.abs().max()).item() < 1e-13


def test_non_finite_parameters_give_nan_not_an_error() -> None:
    """A diverged run must reach a NaN loss (which the harness reports as 'diverged'), not a LinAlgError."""
    for bad in (float("nan"), float("inf")):
        theta = torch.randn(50, 2)
        theta[7, 0] = bad
        assert torch.isnan(exp_columns(theta, 3)).any()
        assert torch.isnan(phi_function(torch.full((2, 2), bad))).all()
