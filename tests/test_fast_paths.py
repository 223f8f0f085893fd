"""The training step's fast paths give the reference values and gradients (float64, small sizes).

* Taylor through the rank-2K' compression (``taylor_apply``) vs the Horner series on the dense ``n x n`` S,
  at norms where the truncated series is accurate and where it is far from orthonormal.
* Pauli / node columns through the product state of the first sublayers (``two_design_columns``) vs the
  circuit applied to ``I[:, :k]`` and vs an explicit Kronecker-product reference.
* The core folded into ``U`` in the adapter forward (``(x V)(U C)ᵀ``) vs ``x ΔWᵀ`` for every core.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qpeft import QPeftConfig, get_qpeft_model
from qpeft.unitary.lie import lower_block, skew_dense, taylor_apply, taylor_columns
from qpeft.unitary.node import node_apply, node_columns
from qpeft.unitary.pauli import apply_two_design, pauli_columns, ry, two_design_gate_count
from tests.test_unitary_node import node_dense_reference
from tests.test_unitary_pauli import pauli_dense_reference

F64 = torch.float64


def horner_dense(theta: torch.Tensor, x: torch.Tensor, order: int) -> torch.Tensor:
    """Σ_{p≤P} S^p x / p! by Horner with the dense generator (the reference the compression must equal)."""
    s = skew_dense(theta)
    y = x
    for p in range(order, 0, -1):
        y = x + (s @ y) / p
    return y


def _loss(u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A nonlinear loss, so that gradients depend on every entry."""
    return (torch.sin(3 * u) * weight).sum() + (u**2).sum()


@pytest.mark.parametrize(("n", "kp", "k"), [(6, 1, 3), (10, 2, 4), (33, 3, 3), (64, 1, 16)])
@pytest.mark.parametrize("order", [1, 4, 18, 30])
@pytest.mark.parametrize("scale", [0.05, 0.5, 2.0])
def test_compressed_taylor_equals_dense_horner(n: int, kp: int, k: int, order: int, scale: float) -> None:
    torch.manual_seed(n + order)
    values = (scale * torch.randn(n * kp - kp * (kp + 1) // 2, dtype=F64)).requires_grad_()
    weight = torch.randn(n, k, dtype=F64)
    fast = taylor_columns(lower_block(values, n, kp), k, order)
    ref = horner_dense(lower_block(values, n, kp), torch.eye(n, k, dtype=F64), order)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    (g_fast,) = torch.autograd.grad(_loss(fast, weight), values)
    (g_ref,) = torch.autograd.grad(_loss(ref, weight), values)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-11)


def test_compressed_taylor_matmul_on_any_input_and_batched() -> None:
    torch.manual_seed(0)
    theta = lower_block(torch.randn(3, 20 * 2 - 3, dtype=F64), 20, 2)
    x = torch.randn(3, 20, 5, dtype=F64)
    out = taylor_apply(torch.tril(theta, -1), x, 18)
    for b in range(3):
        torch.testing.assert_close(out[b], horner_dense(theta[b], x[b], 18), rtol=1e-10, atol=1e-12)


def test_compressed_taylor_keeps_the_truncation_error() -> None:
    """Far outside the series' range (‖S‖₂ ≈ 12) the fast path is the same non-orthonormal polynomial."""
    torch.manual_seed(1)
    theta = lower_block(3.0 * torch.randn(15, dtype=F64), 16, 1)
    fast, ref = taylor_columns(theta, 3, 6), horner_dense(theta, torch.eye(16, 3, dtype=F64), 6)
    assert torch.linalg.matrix_norm(fast.mT @ fast - torch.eye(3, dtype=F64)) > 1.0
    torch.testing.assert_close(fast, ref, rtol=1e-11, atol=1e-9)


@pytest.mark.parametrize("n_qubits", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_pauli_columns_fast_path_values_and_grads(n_qubits: int, layers: int, k: int) -> None:
    n = 2**n_qubits
    k = min(k, n)
    torch.manual_seed(10 * n_qubits + layers)
    theta = torch.randn(2, two_design_gate_count(n_qubits, layers), dtype=F64, requires_grad=True)
    weight = torch.randn(2, n, k, dtype=F64)
    fast = pauli_columns(theta, n_qubits, layers, k)
    circuit = apply_two_design(ry(theta), torch.eye(n, k, dtype=F64), n_qubits, layers)
    dense = torch.stack([pauli_dense_reference(t, n_qubits, layers)[:, :k] for t in theta])
    torch.testing.assert_close(fast, circuit, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast, dense, rtol=0, atol=1e-12)
    grads = [torch.autograd.grad(_loss(u, weight), theta, retain_graph=True)[0] for u in (fast, circuit, dense)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize(("m", "q", "layers", "k"), [(3, 2, 1, 2), (3, 3, 1, 4), (4, 2, 2, 3), (5, 1, 1, 2)])
def test_node_columns_fast_path_values_and_grads(m: int, q: int, layers: int, k: int) -> None:
    torch.manual_seed(m * q)
    gates = two_design_gate_count(q, layers)
    theta = torch.randn(gates, m * (m - 1) // 2, dtype=F64, requires_grad=True)
    weight = torch.randn(m**q, k, dtype=F64)
    fast = node_columns(theta, m, q, layers, k)
    full = node_apply(theta, torch.eye(m**q, k, dtype=F64), m, q, layers)
    dense = node_dense_reference(theta, m, q, layers)[:, :k]
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast, dense, rtol=0, atol=1e-12)
    g_fast, g_dense = (torch.autograd.grad(_loss(u, weight), theta, retain_graph=True)[0] for u in (fast, dense))
    torch.testing.assert_close(g_fast, g_dense, rtol=1e-10, atol=1e-11)


class _Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 48)  # fused: three parts of 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize(("network", "rank"), [("ttd", 3), ("tucker", 4), ("trd", 4)])
def test_core_folded_into_u_equals_dense_update(network: str, rank: int) -> None:
    torch.manual_seed(0)
    config = QPeftConfig(target_modules=["a", "b"], rank=rank, mapping="exp", network=network,
                         fused_modules={"b": [0, 2]}, fused_num_parts=3)
    model = get_qpeft_model(_Two(), config).double()
    for _, layer in model.qpeft_layers():
        nn.init.normal_(layer.qpeft_lambda)
    x = torch.randn(5, 16, dtype=F64)
    layer = dict(model.qpeft_layers())
    for name, module in layer.items():
        base = module.base_layer
        inp = x if name.endswith("a") else torch.tanh(model.base_model.model.a(x))
        expected = base(inp) + inp @ module.delta_weight().T
        torch.testing.assert_close(module(inp), expected, rtol=1e-12, atol=1e-12)


class _Sizes(nn.Module):
    def __init__(self, n: int, m: int) -> None:
        super().__init__()
        self.a = nn.Linear(n, n)
        self.b = nn.Linear(n, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize(("mapping", "options", "sizes"), [
    ("pauli", {}, (32, 64)), ("qsd", {"block": "pauli"}, (24, 40)), ("exp", {}, (24, 40)), ("taylor", {}, (24, 40)),
])
def test_factors_are_built_in_full_precision_under_autocast(mapping: str, options: dict, sizes: tuple) -> None:
    """Under bf16 autocast (HF Trainer ``bf16=True``, Accelerate mixed precision) the construction's matmuls
    stay in float32: built in bf16, U would be orthonormal to ~1e-2 only."""
    from qpeft.unitary.base import orthonormality_error

    torch.manual_seed(0)
    model = get_qpeft_model(_Sizes(*sizes), QPeftConfig(target_modules=["a", "b"], rank=3, mapping=mapping,
                                                        mapping_options=options))
    layers = [layer for _, layer in model.qpeft_layers()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batched = model.base_model._batcher.build(layers)
        single = layers[0].adapter.build()
        out = model(torch.randn(4, sizes[0]))
    factors = [f for us, vs in [*batched, single] for f in (*us, *vs)]
    assert all(f.dtype == torch.float32 for f in factors)
    assert max(float(orthonormality_error(f)) for f in factors) < 1e-5
    out.float().sum().backward()
    assert all(p.grad is not None for layer in layers for p in layer.adapter_parameters())
