"""Table 7 through the harness: the sweep ``cifar_qat_bits`` composes to Taylor K = 16, K' = 3 with QAT, its record
tags name the bits and γ, the count is Table 10's TTD 0.111M, and a run saves its adapter packed."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from experiments import run
from qpeft.packing import INDEX
from tests.cifar.test_counts import _trainable
from tests.cifar.test_train import BASE


@pytest.mark.parametrize(("bits", "gamma"), [(8, "0.0"), (1, "1.0")])
def test_sweep_point_composes_and_counts(bits: int, gamma: str, make_cfg) -> None:
    overrides = ["+experiment=cifar10_vit", "model=vit_b16", "method=quantum_peft_taylor", "+sweep=cifar_qat_bits",
                 f"method.quant_bits={bits}", f"method.quant_gamma={gamma}"]
    cfg = make_cfg(overrides)
    assert cfg.record_tag == f"--k3--int{bits}--g{gamma}"
    assert (cfg.method.rank, cfg.method.mapping_options.intrinsic_rank, cfg.method.quant_group_size) == (16, 3, 128)
    assert cfg.method.save_quantized and cfg.method.mapping_options.order == 18
    assert _trainable(make_cfg, *overrides[1:]) == 24 * (2 * (768 * 3 - 6) + 16) == 110_688


def test_a_qat_run_saves_its_adapter_packed(make_cfg, cifar_dir, tmp_path) -> None:
    cfg = make_cfg([*BASE, "method=quantum_peft_taylor", "+sweep=cifar_qat_bits", "method.quant_bits=2",
                    "method.quant_gamma=1.0", f"task.data_dir={cifar_dir}", f"paths.root_dir={tmp_path}"])
    info = run(cfg)
    assert info["status"] == "completed"
    adapter = next(tmp_path.glob("logs/**/adapter/adapter_model.safetensors"))
    tensors = load_file(adapter)
    assert INDEX in tensors and not any(k.endswith(".original") for k in tensors)
    assert info["adapter_bytes"] >= adapter.stat().st_size


def test_save_quantized_needs_quant_bits(make_cfg, cifar_dir, tmp_path) -> None:
    cfg = make_cfg([*BASE, "method=quantum_peft_taylor", "method.save_quantized=true", f"task.data_dir={cifar_dir}",
                    f"paths.root_dir={tmp_path}"])
    with pytest.raises(ValueError, match="method.save_quantized=true needs method.quant_bits"):
        run(cfg)
    assert not (tmp_path / "logs").exists()
