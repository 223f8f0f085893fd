"""The Table 5 experiments compose method.md §12.4's protocol: 4-bit NF4 base, 5 epochs, LoRA r = 3 / α = 32
(over the GLUE tasks' DeBERTaV3 settings), q/k/v/gate targets, the trained ``score`` head."""

from __future__ import annotations

import pytest

TASKS = ("sst2", "cola", "rte", "mrpc", "stsb")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", ["lora", "adalora", "quantum_peft"])
def test_mistral_glue_protocol(task: str, method: str, make_cfg) -> None:
    cfg = make_cfg([f"+experiment=mistral_glue_{task}", f"method={method}"])
    model = cfg.model
    assert (model.name, model.pretrained, model.load_in_4bit, model.bnb_4bit_quant_type) == \
        ("mistral_7b_4bit", "mistralai/Mistral-7B-v0.1", True, "nf4")
    assert model.bnb_4bit_use_double_quant and model.bnb_4bit_compute_dtype == "bfloat16" and model.kbit_prepare
    assert list(model.target_modules) == ["q_proj", "k_proj", "v_proj", "gate_proj"] and list(model.head_modules) == ["score"]
    assert cfg.trainer.epochs == 5 and cfg.trainer.gradient_checkpointing == "off"
    assert cfg.experiment_name == f"mistral_glue_{task}" and cfg.task.subtask == task
    if method == "lora":
        assert (cfg.method.r, cfg.method.lora_alpha) == (3, 32)  # not glue_sst2_lora's alpha 16
    elif method == "adalora":
        assert (cfg.method.init_r, cfg.method.target_r, cfg.method.lora_alpha, cfg.method.reference_total_step) == \
            (4, 3, 32, 1000)
    else:
        assert (cfg.method.rank, cfg.method.alpha, cfg.method.mapping, cfg.method.mapping_options.angles) == \
            (3, 32.0, "qsd", "single_angle")


@pytest.mark.parametrize("model", ["smollm2_4bit", "tiny_mistral_4bit"])
def test_stand_ins_share_the_7b_adapter_settings(model: str, make_cfg) -> None:
    lora = make_cfg(["+experiment=mistral_glue_sst2", "method=lora", f"model={model}"]).method
    adalora = make_cfg(["+experiment=mistral_glue_sst2", "method=adalora", f"model={model}"]).method
    assert (lora.r, lora.lora_alpha, adalora.init_r, adalora.target_r) == (3, 32, 4, 3)
