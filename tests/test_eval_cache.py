"""The eval cache never serves factors of stale parameters, whatever mutated them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from qpeft import QPeftConfig, get_qpeft_model

Mutation = Callable[[nn.Module], None]


def _adapter_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if "qpeft_" in n]


def _optimizer_step(model: nn.Module) -> None:
    params = _adapter_params(model)
    opt = torch.optim.SGD(params, lr=0.5)
    with torch.enable_grad():
        model(torch.randn(4, 16)).square().sum().backward()
    opt.step()


def _load_state_dict(model: nn.Module) -> None:
    state = {k: v + 0.3 for k, v in model.adapter_state_dict().items()}
    model.load_adapter_state_dict(state)


def _vector_to_parameters(model: nn.Module) -> None:
    params = _adapter_params(model)
    vec = torch.nn.utils.parameters_to_vector(params)
    torch.nn.utils.vector_to_parameters(vec + 0.3 * torch.randn_like(vec), params)


def _assign_data(model: nn.Module) -> None:
    for p in _adapter_params(model):
        p.data = p.data + 0.3


def _inplace_data(model: nn.Module) -> None:
    for p in _adapter_params(model):
        p.data.add_(0.3)


def _one_value(model: nn.Module) -> None:
    with torch.no_grad():
        model.get_base_model()[0].qpeft_v[0].theta.data[5] += 0.5  # one Lie entry of one factor


def _to_float64(model: nn.Module) -> None:
    model.to(torch.float64)


MUTATIONS: dict[str, Mutation] = {
    "optimizer_step": _optimizer_step, "load_state_dict": _load_state_dict,
    "vector_to_parameters": _vector_to_parameters, "assign_data": _assign_data, "inplace_data": _inplace_data,
    "one_value": _one_value, "to_float64": _to_float64,
}


def _model(batch_factors: bool, mapping: str) -> nn.Module:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 16))
    options = {"intrinsic_rank": 2} if mapping == "exp" else {"layers": 1}
    config = QPeftConfig(target_modules=["0", "2"], rank=3, alpha=8, mapping=mapping, mapping_options=options)
    model = get_qpeft_model(base, config, batch_factors=batch_factors)
    with torch.no_grad():
        for p in _adapter_params(model):
            p.normal_(0.0, 0.5)  # a visible update (λ is zero at init)
    return model.eval()


def _fresh(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output with factors built from the current parameters (the grad path never uses the cache)."""
    with torch.enable_grad():
        return model(x).detach()


@pytest.mark.parametrize("batch_factors", (True, False))
@pytest.mark.parametrize("mapping", ("exp", "pauli"))
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_eval_output_is_fresh_after_mutation(mutation: str, mapping: str, batch_factors: bool) -> None:
    model = _model(batch_factors, mapping)
    x = torch.randn(5, 16)
    with torch.no_grad():
        before = model(x)  # fills the eval cache
        assert torch.equal(model(x), before)  # served from the cache
    MUTATIONS[mutation](model)
    x = x.to(next(model.parameters()).dtype)
    with torch.no_grad():
        after = model(x)
    cache_dtypes = {layer._cache[1].dtype for _, layer in model.qpeft_layers()}
    fresh = _fresh(model, x)
    assert (after - fresh).abs().max().item() < 1e-6
    if mutation == "to_float64":  # same values, new dtype: the factors must be rebuilt in float64
        assert cache_dtypes == {torch.float64}
    else:
        assert (after - before).abs().max().item() > 1e-3  # the mutation did change the output


def test_cache_is_reused_while_parameters_are_unchanged() -> None:
    model = _model(True, "exp")
    x = torch.randn(3, 16)
    with torch.no_grad():
        model(x)
        caches = [layer._cache[1] for _, layer in model.qpeft_layers()]
        model(x)
    assert all(layer._cache[1] is c for (_, layer), c in zip(model.qpeft_layers(), caches))
