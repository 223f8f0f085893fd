"""Tensor-network Quantum-PEFT (paper A.3, Table 10): CP, TRD, HTD, TD (tucker), TTD behind the adapter contract.

Float64 wherever the math gives exactness: orthonormal sides, each network's ΔW against an independent
construction (torch.kron / einsum of its nodes), merge/unmerge, save/load, the LoRA export, the counts.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from qpeft import QPeftConfig, QPeftModel, get_qpeft_model
from qpeft.counting import TABLE10, TABLE10_METHODS, model_count, module_count, table10_counts
from qpeft.unitary import build_mapping, count_mapping_parameters
from qpeft.unitary.network import balanced_factors
from tests.tiny_models import tiny_gpt2

NETWORKS = ("ttd", "cp", "tucker", "htd", "trd")
NODE = {"mapping": "taylor", "mapping_options": {"intrinsic_rank": 2}}
EYE_TOL = 1e-10


def _randomize(module: nn.Module, std: float = 0.3, seed: int = 7) -> nn.Module:
    """Every trainable tensor ~ N(0, std²) (seeded): non-small node parameters and a nonzero core."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=g, dtype=param.dtype) * std)
    return module


class Net(nn.Module):
    """60 -> 48 -> 60: out and in sides of both sizes (60 = 6 x 10, 48 = 6 x 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(60, 48)
        self.lin1 = nn.Linear(48, 60)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.tanh(self.lin0(x)))


def _config(network: str, **kwargs) -> QPeftConfig:
    return QPeftConfig(**{"target_modules": ["lin0", "lin1"], "rank": 4, "alpha": 8.0, "network": network,
                          **NODE, **kwargs})


def _model(network: str, seed: int = 0, dtype: torch.dtype = torch.float64, **kwargs) -> tuple[nn.Module, QPeftModel]:
    torch.manual_seed(seed)
    base = Net().to(dtype)
    return copy.deepcopy(base), get_qpeft_model(base, _config(network, **kwargs)).to(dtype).eval()


X = torch.randn(5, 60, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


# ---------------------------------------------------------------- the side mappings
SIDES = [  # (mapping, n, k, options): d = 2 and d = 3 folds
    ("cp", 48, 5, {}), ("tucker", 48, 6, {}), ("htd", 48, 5, {}), ("trd", 48, 4, {}),
    ("cp", 60, 3, {"fold": 3}), ("tucker", 60, 4, {"fold": 3}), ("htd", 60, 5, {"fold": 3}),
    ("trd", 64, 4, {"fold": 3}), ("trd", 60, 4, {"factors": [5, 3, 4]}),
]


@pytest.mark.parametrize("name, n, k, options", SIDES, ids=[f"{s[0]}-{s[1]}-{s[2]}-{s[3]}" for s in SIDES])
def test_side_has_orthonormal_columns_and_exact_count(name, n, k, options) -> None:
    torch.manual_seed(0)
    mapping = _randomize(build_mapping(name, n, k, node_options={"intrinsic_rank": 2}, **options).double())
    u = mapping()
    assert u.shape == (n, k) and u.dtype == torch.float64
    assert torch.linalg.matrix_norm(u.T @ u - torch.eye(k, dtype=torch.float64)) < EYE_TOL
    assert u.abs().max() < 1 - 1e-3  # a visibly rotated frame, not I[:, :k]
    numel = sum(p.numel() for p in mapping.parameters())
    assert numel == count_mapping_parameters(name, n, k, node_options={"intrinsic_rank": 2}, **options)
    assert len(mapping.factors) == options.get("fold", len(options.get("factors", [0, 0])))
    assert math.prod(mapping.factors) == n
    batched = type(mapping).forward_batched([mapping, mapping])
    torch.testing.assert_close(batched[1], u, atol=1e-13, rtol=0)


def test_folding_is_the_most_balanced_factorization() -> None:
    assert balanced_factors(768, 2) == (24, 32)
    assert balanced_factors(384, 2) == (16, 24)
    assert balanced_factors(1024, 2) == (32, 32)
    assert balanced_factors(768, 3) == (8, 8, 12)
    assert balanced_factors(16, 2, low=1) == (4, 4)
    with pytest.raises(ValueError, match="fold"):
        build_mapping("cp", 7, 1)  # a prime cannot be folded
    with pytest.raises(ValueError, match="factors"):
        build_mapping("cp", 48, 2, factors=[5, 10])
    assert build_mapping("cp", 48, 2, factors=[[5, 12], [4, 12]]).factors == (4, 12)  # the list that fits


# ---------------------------------------------------------------- ΔW against independent constructions
def _layer(network: str, **kwargs):
    _, model = _model(network, **kwargs)
    _randomize(model)
    return model.base_model.model.lin1  # out 60 = (6, 10), in 48 = (6, 8)


def _nodes(mapping) -> list[torch.Tensor]:
    return [node() for node in mapping.nodes]


def test_cp_is_a_sum_of_k_rank_one_khatri_rao_terms() -> None:
    layer = _layer("cp")
    (a1, a2), (b1, b2) = _nodes(layer.qpeft_u[0]), _nodes(layer.qpeft_v[0])
    lam = layer.qpeft_lambda[0]
    expected = sum(lam[r] * torch.outer(torch.kron(a1[:, r], a2[:, r]), torch.kron(b1[:, r], b2[:, r]))
                   for r in range(4)) * layer.scaling
    delta = layer.delta_weight()
    torch.testing.assert_close(delta, expected, atol=1e-14, rtol=0)
    assert torch.linalg.matrix_rank(delta) == 4


def test_ttd_has_rank_k() -> None:
    layer = _layer("ttd")
    u, v = layer.qpeft_u[0](), layer.qpeft_v[0]()
    torch.testing.assert_close(layer.delta_weight(), layer.scaling * u @ torch.diag(layer.qpeft_lambda[0]) @ v.T,
                               atol=1e-14, rtol=0)
    assert torch.linalg.matrix_rank(layer.delta_weight()) == 4


def test_htd_is_a_kronecker_of_leaves_times_the_transfer_node() -> None:
    layer = _layer("htd")
    (a1, a2, b), (c1, c2, d) = _nodes(layer.qpeft_u[0]), _nodes(layer.qpeft_v[0])
    assert b.shape == (4, 4)  # leaf_rank 2: 2² >= K = 4
    expected = layer.scaling * torch.kron(a1, a2) @ b @ torch.diag(layer.qpeft_lambda[0]) @ (torch.kron(c1, c2) @ d).T
    torch.testing.assert_close(layer.delta_weight(), expected, atol=1e-14, rtol=0)
    assert torch.linalg.matrix_rank(layer.delta_weight()) <= 4


def test_tucker_is_kron_of_mode_factors_around_a_dense_core() -> None:
    layer = _layer("tucker")
    (a1, a2), (b1, b2) = _nodes(layer.qpeft_u[0]), _nodes(layer.qpeft_v[0])
    assert a1.shape == (6, 2) and a2.shape == (10, 2)  # mode ranks (2, 2)
    core = layer.qpeft_lambda[0]
    assert core.shape == (4, 4)
    expected = layer.scaling * torch.kron(a1, a2) @ core @ torch.kron(b1, b2).T
    torch.testing.assert_close(layer.delta_weight(), expected, atol=1e-14, rtol=0)


def test_trd_is_the_ring_contraction() -> None:
    layer = _layer("trd")
    r = 2
    g1, g2 = _nodes(layer.qpeft_u[0])  # St(6, R²), St(R·10, R)
    g3, g4 = _nodes(layer.qpeft_v[0])  # St(6, R²), St(R·8, R)
    lam = layer.qpeft_lambda[0]
    assert lam.shape == (r,)
    ring = torch.einsum("iab,bjc,kad,dlc,a->ijkl", g1.reshape(6, r, r), g2.reshape(r, 10, r),
                        g3.reshape(6, r, r), g4.reshape(r, 8, r), lam)
    expected = layer.scaling * ring.reshape(60, 48)
    torch.testing.assert_close(layer.delta_weight(), expected, atol=1e-14, rtol=0)
    assert torch.linalg.matrix_rank(layer.delta_weight()) <= r * r


# ---------------------------------------------------------------- the adapter contract
@pytest.mark.parametrize("nonlinearity", [None, "tanh"])
@pytest.mark.parametrize("network", NETWORKS)
def test_init_is_the_base_and_merge_unmerge_is_exact(network: str, nonlinearity: str | None) -> None:
    base, model = _model(network, nonlinearity=nonlinearity)
    with torch.no_grad():
        assert torch.equal(model(X), base(X))  # zero core: exactly the base
        _randomize(model)
        adapted = model(X)
        layer = model.base_model.model.lin1
        w = layer.base_layer.weight.detach().clone()
        expected = base.lin1.bias + torch.tanh(model.base_model.model.lin0(X)) @ (w + layer.delta_weight()).T
        torch.testing.assert_close(adapted, expected, atol=1e-12, rtol=0)
        assert not torch.allclose(adapted, base(X), atol=1e-3)
        model.merge_adapter()
        torch.testing.assert_close(model(X), adapted, atol=1e-12, rtol=0)
        model.unmerge_adapter()
        torch.testing.assert_close(layer.base_layer.weight, w, atol=1e-14, rtol=0)
        torch.testing.assert_close(model(X), adapted, atol=1e-12, rtol=0)


def test_tanh_is_the_outer_nonlinearity_of_the_update() -> None:
    _, linear = _model("tucker")
    _, tanh = _model("tucker", nonlinearity="tanh")
    _randomize(linear), _randomize(tanh)
    a, b = linear.base_model.model.lin1, tanh.base_model.model.lin1
    with torch.no_grad():
        torch.testing.assert_close(b.delta_weight(), b.scaling * torch.tanh(a.delta_weight() / a.scaling),
                                   atol=1e-14, rtol=0)


@pytest.mark.parametrize("network", NETWORKS)
def test_counts_equal_the_real_numel(network: str) -> None:
    torch.manual_seed(0)
    config = _config(network)
    base = Net()
    predicted = model_count(base, config)
    model = get_qpeft_model(base, config)
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(predicted.values()) == real
    assert predicted["lin1"] == module_count(60, 48, config)


@pytest.mark.parametrize("network", NETWORKS)
def test_fused_gpt2_slices_count_and_merge(network: str) -> None:
    """c_attn (96 = 3 x 32, 32 = 4 x 8) adapted on Q and V: one network and one core per slice."""
    torch.manual_seed(0)
    config = QPeftConfig(target_modules=["c_attn"], rank=4, network=network, fused_modules={"c_attn": [0, 2]},
                         **NODE)
    base = tiny_gpt2(dropout=0.0).double()
    predicted = sum(model_count(base, config).values())
    model = get_qpeft_model(base, config).double().eval()
    assert predicted == sum(p.numel() for p in model.parameters() if p.requires_grad)
    _randomize(model)
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    assert layer.qpeft_lambda.shape[0] == 2
    ids = torch.randint(1, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        delta = layer.delta_weight().T  # out x in
        assert torch.equal(delta[32:64], torch.zeros_like(delta[32:64]))  # K is not adapted
        model.merge_adapter()
        torch.testing.assert_close(model(input_ids=ids).logits, adapted, atol=1e-12, rtol=0)


def test_table10_ttd_is_exact_and_the_others_are_their_constructions() -> None:
    rows = {r["network"]: r for r in table10_counts(rank=16, intrinsic_rank=3)}
    assert [r[0] for r in TABLE10] == ["CP", "TRD", "HTD (TTN)", "TD", "TTD (MPS)"]
    assert rows["ttd"]["count"] == 24 * (2 * (768 * 3 - 6) + 16) == 110_688
    assert rows["ttd"]["rounds_to_printed"] and rows["ttd"]["printed"] == "0.111M"
    # K' = 1 (each Taylor node n_j - 1), K = 16, 768 = 24 x 32, by hand:
    rows = {r["network"]: r["count"] for r in table10_counts(rank=16, intrinsic_rank=1)}
    assert rows == {
        "cp": 24 * (2 * (23 + 31) + 16),                # A_j ∈ St(n_j, 16); λ: 16
        "trd": 24 * (2 * (23 + 127) + 4),               # St(24, 16), St(4·32, 4); ring λ: R = 4
        "htd": 24 * (2 * (23 + 31 + 15) + 16),          # leaves St(n_j, 4), transfer St(16, 16); λ: 16
        "tucker": 24 * (2 * (23 + 31) + 256),           # St(24, 4), St(32, 4); dense core 16 x 16
        "ttd": 24 * (2 * 767 + 16),
    }
    conf = {r["network"]: r["count"] for r in table10_counts(settings=TABLE10_METHODS)}
    assert conf == {"cp": 30_336, "trd": 36_096, "htd": 15_936, "tucker": 15_936, "ttd": 110_688}


# ---------------------------------------------------------------- files: save/load and the LoRA export
@pytest.mark.parametrize("network", NETWORKS)
def test_save_load_reproduces_outputs_exactly(network: str, tmp_path) -> None:
    base, model = _model(network, dtype=torch.float32)  # the dtype a fresh adapter is built in
    _randomize(model)
    with torch.no_grad():
        expected = model(X.float())
    model.save_pretrained(tmp_path)
    torch.manual_seed(1234)
    loaded = QPeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert loaded.peft_config["default"].network == network
    with torch.no_grad():
        assert torch.equal(loaded(X.float()), expected)


@pytest.mark.parametrize("network", ["tucker", "trd"])
def test_lora_export_is_exact_through_peft(network: str, tmp_path) -> None:
    from peft import PeftModel

    base, model = _model(network)
    _randomize(model)
    with torch.no_grad():
        expected = model(X)
    model.save_pretrained(tmp_path, as_lora=True)
    lora = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert type(lora.base_model).__name__ == "LoraModel"
    with torch.no_grad():
        torch.testing.assert_close(lora(X), expected, atol=1e-12, rtol=0)


def test_nonlinearity_has_no_lora_form(tmp_path) -> None:
    _, model = _model("trd", nonlinearity="tanh")
    _randomize(model)
    with pytest.raises(ValueError, match="nonlinearity='tanh'.*no exact LoRA form"):
        model.save_pretrained(tmp_path / "lora", as_lora=True)
    assert not (tmp_path / "lora" / "adapter_model.safetensors").exists()


# ---------------------------------------------------------------- QAT and batching
@pytest.mark.parametrize("network", NETWORKS)
def test_qat_reaches_every_node_and_a_step_trains_them(network: str) -> None:
    torch.manual_seed(0)
    model = get_qpeft_model(Net(), _config(network, quant_bits=2, quant_group_size=8))
    layer = model.base_model.model.lin1
    nodes = [n for m in layer.mappings() for n in (m.nodes if network != "ttd" else [m])]
    assert nodes and all(parametrize.is_parametrized(n, "theta") for n in nodes)
    with torch.no_grad():
        layer.qpeft_lambda.normal_()  # a nonzero core, so the nodes get a gradient at the first step
    before = [n.parametrizations.theta.original.detach().clone() for n in nodes]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    x = X.float()
    loss = model(x).pow(2).mean()
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert all(not torch.equal(n.parametrizations.theta.original, b) for n, b in zip(nodes, before))
    effective = nodes[0].theta.detach().flatten()[:8]  # one quantization group: <= 2² values
    assert effective.unique().numel() <= 4
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("network", ["cp", "tucker", "trd"])
def test_packed_save_reaches_the_nodes_and_reloads_bit_exactly(network: str, tmp_path) -> None:
    """``save_pretrained(quantized=True)`` stores every node's B-bit codes (nested under the network mapping)."""
    from qpeft.packing import FrozenQuantized

    base, model = _model(network, dtype=torch.float32, quant_bits=2, quant_group_size=8)
    _randomize(model)
    with torch.no_grad():
        expected = model(X.float())
    model.save_pretrained(tmp_path, quantized=True)
    loaded = QPeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    frozen = [m for m in loaded.modules() if isinstance(m, FrozenQuantized)]
    nodes = [n for _, layer in loaded.qpeft_layers() for m in layer.mappings() for n in m.nodes]
    assert len(frozen) == len(nodes) > 0
    with torch.no_grad():
        assert torch.equal(loaded(X.float()), expected)


@pytest.mark.parametrize("network", ["cp", "tucker", "htd", "trd"])
def test_batched_build_equals_per_layer(network: str) -> None:
    """Both layers' U (60 x 4 from lin1, ...) share a batch key: one batched call per node slot, same values and grads."""
    _, batched = _model(network)
    _randomize(batched)
    plain = copy.deepcopy(batched)
    plain.batch_factors = False
    results = []
    for model in (batched, plain):
        model.zero_grad(set_to_none=True)
        loss = model(X).pow(2).sum()
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-12, rtol=0)
    for name, grad in results[1][1].items():
        torch.testing.assert_close(results[0][1][name], grad, atol=1e-12, rtol=0, msg=name)
    lin0_v, lin1_u = batched.base_model.model.lin0.qpeft_v[0], batched.base_model.model.lin1.qpeft_u[0]
    assert lin0_v.batch_key() == lin1_u.batch_key()  # both 60 x 4: built together


# ---------------------------------------------------------------- config validation
@pytest.mark.parametrize("kwargs, message", [
    ({"network": "mera"}, r"QPeftConfig\.network='mera' is invalid; allowed values: \['ttd', 'cp', 'tucker'"),
    ({"network": "cp", "network_options": {"fold": 2, "folds": 3}},
     r"QPeftConfig\.network_options has unknown option\(s\) \['folds'\] for network 'cp'; allowed options"),
    ({"network": "cp", "network_options": {"leaf_rank": 2}}, r"network_options.*\['leaf_rank'\].*'cp'"),
    ({"network": "ttd", "network_options": {"fold": 2}}, r"network_options.*\['fold'\].*'ttd'"),
    ({"network": "trd", "rank": 3}, r"QPeftConfig\.rank=3 is invalid for network 'trd'; allowed values: squares"),
    ({"network": "trd", "rank": 4, "rank_pattern": {"lin1": 5}}, r"QPeftConfig\.rank=5 is invalid for network 'trd'"),
    ({"network": "cp", "rank": 7, "network_options": {"factors": [6, 8]}},
     r"QPeftConfig\.rank=7 is invalid for network 'cp'.*rank <= 6"),
    ({"network": "cp", "network_options": {"fold": 1}}, r"QPeftConfig\.network_options\['fold'\]=1 is invalid"),
    ({"nonlinearity": "relu"}, r"QPeftConfig\.nonlinearity='relu' is invalid; allowed values: \[None, 'tanh'\]"),
    ({"network": "cp", "mapping_options": {"ordr": 3}}, r"mapping_options has unknown option\(s\) \['ordr'\]"),
])
def test_bad_network_config_names_the_field(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        QPeftConfig(**{"target_modules": ["lin0"], **kwargs})


def test_shape_dependent_errors_name_the_rank_at_injection() -> None:
    with pytest.raises(ValueError, match=r"cannot adapt 'lin1'.*network 'cp' needs the rank K <= every factor.*k \(rank\) = 7"):
        get_qpeft_model(Net(), QPeftConfig(target_modules=["lin1"], rank=7, network="cp"))
    with pytest.raises(ValueError, match=r"network 'trd'.*R² = rank K = 9 <= n_1 = 6"):
        get_qpeft_model(Net(), QPeftConfig(target_modules=["lin1"], rank=9, network="trd"))
    with pytest.raises(ValueError, match="fold"):
        get_qpeft_model(nn.Sequential(nn.Linear(7, 8)), QPeftConfig(target_modules=["0"], rank=1, network="cp"))


def test_aliases_and_specs() -> None:
    assert QPeftConfig(target_modules=["a"], network="TD").network == "tucker"
    assert QPeftConfig(target_modules=["a"], network="mps").network == "ttd"
    assert QPeftConfig(target_modules=["a"], network="ttn").network == "htd"
    config = QPeftConfig(target_modules=["a"], rank=4, network="htd", mapping="taylor",
                         mapping_options={"intrinsic_rank": 1}, mapping_v="exp", network_options={"leaf_rank": 3})
    assert config.factor_specs() == (
        ("u", "htd", {"node": "taylor", "node_options": {"intrinsic_rank": 1}, "leaf_rank": 3}),
        ("v", "htd", {"node": "exp", "node_options": {}, "leaf_rank": 3}),
    )
    assert [QPeftConfig(target_modules=["a"], rank=16, network=n).core_shape() for n in NETWORKS] == [
        (16,), (16,), (16, 16), (16,), (4,)]


@pytest.mark.parametrize("network", NETWORKS)
def test_method_configs_are_the_table10_settings_and_state_their_count(network: str) -> None:
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).parents[1] / "conf" / "method" / f"quantum_peft_tn_{network}.yaml"
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert (cfg["network"], cfg["mapping"], cfg["name"]) == (network, "taylor", path.stem)
    assert (cfg["rank"], cfg["mapping_options"]["intrinsic_rank"], cfg["network_options"]) == TABLE10_METHODS[network]
    count = next(r["count"] for r in table10_counts(settings=TABLE10_METHODS) if r["network"] == network)
    header = path.read_text().split("defaults:")[0]
    assert f"Q, V (24 matrices 768 x 768, qpeft.counting.table10_counts): {count:,}" in header
    assert f"python run.py +experiment=cifar10_vit model=vit_b16 method=quantum_peft_tn_{network}" in header
