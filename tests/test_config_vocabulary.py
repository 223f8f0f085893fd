"""peft's config vocabulary means the same in ``QPeftConfig``, is validated as strictly, and the hub-side
details (base model recorded, model card, eval mode after loading, adapter-only push) are right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import TaskType
from transformers import GPT2LMHeadModel

from qpeft import QPeftConfig, QPeftModel, get_qpeft_model
from qpeft.counting import model_count
from qpeft.layers import ModulesToSave
from tests.tiny_models import MLP, randomize_adapters, tiny_deberta, tiny_gpt2


def _adapted(model: torch.nn.Module, **kwargs: object) -> dict[str, torch.nn.Module]:
    wrapped = get_qpeft_model(model, QPeftConfig(**kwargs))
    return dict(wrapped.qpeft_layers())


def test_all_linear_leaves_out_the_output_head() -> None:
    gpt2 = _adapted(tiny_gpt2(), target_modules="ALL-LINEAR", rank=2)
    assert sorted({n.split(".")[-1] for n in gpt2}) == ["c_attn", "c_fc", "c_proj"] and len(gpt2) == 8  # no lm_head
    deberta = _adapted(tiny_deberta(), target_modules="all-linear", rank=2, mapping="qsd", task_type="SEQ_CLS")
    assert "classifier" not in deberta and "pooler.dense" in deberta and len(deberta) == 2 * 8 + 1  # 8 per layer
    with_head = _adapted(tiny_deberta(), target_modules="all-linear", rank=2, mapping="qsd")
    assert "classifier" in with_head  # peft leaves the head out only for SEQ_CLS


def test_exclusions_and_layer_selection() -> None:
    names = lambda **kw: sorted(_adapted(tiny_gpt2(), rank=2, **kw))  # noqa: E731
    assert names(target_modules=["c_attn", "c_proj"], exclude_modules=["mlp.c_proj"]) == [
        "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_attn",
        "transformer.h.1.attn.c_proj"]
    assert names(target_modules="all-linear", exclude_modules=r".*\.h\.0\..*") == [
        "transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_fc",
        "transformer.h.1.mlp.c_proj"]
    assert names(target_modules=["c_attn"], layers_to_transform=1) == ["transformer.h.1.attn.c_attn"]
    assert names(target_modules=["c_attn"], layers_to_transform=[0], layers_pattern="h") == [
        "transformer.h.0.attn.c_attn"]
    model = get_qpeft_model(MLP(), QPeftConfig(target_modules=["lin0", "classifier"], modules_to_save=["classifier"]))
    assert isinstance(model.get_base_model().classifier, ModulesToSave)  # a saved module is never also adapted
    assert [n for n, _ in model.qpeft_layers()] == ["lin0"]


def test_rank_and_alpha_patterns_set_each_layer() -> None:
    base = tiny_gpt2()
    config = QPeftConfig(target_modules=["c_attn", "c_fc"], rank=2, alpha=8, mapping="taylor",
                         rank_pattern={r"h\.1\.attn\.c_attn": 4}, alpha_pattern={"c_fc": 2.0})
    predicted = sum(model_count(base, config).values())
    layers = dict(get_qpeft_model(base, config).qpeft_layers())
    assert (layers["transformer.h.0.attn.c_attn"].rank, layers["transformer.h.0.attn.c_attn"].scaling) == (2, 4.0)
    assert (layers["transformer.h.1.attn.c_attn"].rank, layers["transformer.h.1.attn.c_attn"].scaling) == (4, 2.0)
    assert (layers["transformer.h.0.mlp.c_fc"].rank, layers["transformer.h.0.mlp.c_fc"].scaling) == (2, 1.0)
    assert predicted == sum(p.numel() for layer in layers.values() for p in layer.adapter_parameters())


def test_task_type_and_inference_mode() -> None:
    config = QPeftConfig(target_modules=["lin0"], task_type=TaskType.SEQ_CLS, inference_mode=True, bias="all")
    assert config.task_type == "SEQ_CLS"
    model = get_qpeft_model(MLP(), config)
    assert model.get_nb_trainable_parameters()[0] == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(target_modules=["lin0"], task_type="seq_cls"), r"task_type='seq_cls' is invalid; allowed values: \['SEQ"),
    (dict(target_modules=["lin0"], inference_mode=1), r"inference_mode=1 is invalid; allowed values: \[False, True\]"),
    (dict(target_modules=["lin0"], exclude_modules=["lin1", 3]),
     r"exclude_modules=\['lin1', 3\] is invalid; allowed values: a regex string or a list of module-name suffixes"),
    (dict(target_modules=["lin0"], exclude_modules="("), r"exclude_modules='\(' is not a valid regex"),
    (dict(target_modules=["lin0"], layers_to_transform=[-1]), r"layers_to_transform=\[-1\] is invalid; allowed values"),
    (dict(target_modules="lin.", layers_to_transform=0), r"layers_to_transform needs target_modules as a list"),
    (dict(target_modules=["lin0"], layers_pattern="h"), r"layers_pattern needs layers_to_transform"),
    (dict(target_modules=["lin0"], rank_pattern={"lin0": 0}),
     r"rank_pattern\['lin0'\]=0 is invalid; allowed values: integers >= 1"),
    (dict(target_modules=["lin0"], alpha_pattern={"lin0": True}),
     r"alpha_pattern\['lin0'\]=True is invalid; allowed values: finite numbers > 0"),
    (dict(target_modules=["lin0"], alpha_pattern={"lin0": float("inf")}), r"alpha_pattern\['lin0'\]=inf is invalid"),
    (dict(target_modules=["lin0"], rank_pattern=[("lin0", 2)]), r"rank_pattern=.* is invalid; allowed values: a dict"),
    (dict(target_modules=["lin0"], peft_type="LORA"), r"peft_type='LORA' is invalid; allowed values: \['QPEFT'\]"),
    (dict(target_modules=["lin0"], quant_bits=True), r"quant_bits=True is invalid"),
])
def test_bad_values_name_the_field_and_the_allowed_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QPeftConfig(**kwargs)


def test_config_files_round_trip_and_old_files_still_load(tmp_path: Path) -> None:
    config = QPeftConfig(target_modules="all-linear", exclude_modules=["lin1"], rank_pattern={"lin0": 3},
                         task_type="SEQ_CLS")
    config.save(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert data["peft_type"] == "QPEFT" and data["rank_pattern"] == {"lin0": 3}
    assert QPeftConfig.from_pretrained(tmp_path) == config
    old = {"peft_type": "QPEFT", "target_modules": ["lin0"], "rank": 2}  # written before these fields existed
    (tmp_path / "adapter_config.json").write_text(json.dumps(old))
    assert QPeftConfig.from_pretrained(tmp_path).rank == 2
    (tmp_path / "adapter_config.json").write_text(json.dumps({**old, "peft_type": "LORA"}))
    with pytest.raises(ValueError, match="not a qpeft adapter; load it with peft.PeftModel.from_pretrained"):
        QPeftConfig.from_pretrained(tmp_path)


def test_saved_adapter_records_its_base_and_loads_for_inference(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tiny_gpt2().save_pretrained(tmp_path / "base")
    model = randomize_adapters(get_qpeft_model(GPT2LMHeadModel.from_pretrained(tmp_path / "base"),
                                               QPeftConfig(target_modules=["c_attn"], rank=2)))
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tmp_path / "base") and saved["inference_mode"] is True
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\nbase_model: ") and "mapping: U `taylor`" in card

    base = GPT2LMHeadModel.from_pretrained(tmp_path / "base").train()
    frozen = QPeftModel.from_pretrained(base, tmp_path / "adapter")
    assert not frozen.training and frozen.get_nb_trainable_parameters()[0] == 0  # as peft: eval, frozen
    base = GPT2LMHeadModel.from_pretrained(tmp_path / "base").train()
    trainable = QPeftModel.from_pretrained(base, tmp_path / "adapter", is_trainable=True)
    assert trainable.training and not trainable.peft_config["default"].inference_mode
    assert trainable.get_nb_trainable_parameters()[0] == model.get_nb_trainable_parameters()[0] > 0


def test_push_to_hub_uploads_the_adapter_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    uploads = []

    def upload_folder(self: object, *, repo_id: str, folder_path: str, **kwargs: object) -> str:
        uploads.append((repo_id, sorted(p.name for p in Path(folder_path).rglob("*")), kwargs))
        return "https://hub/commit"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: repo_id)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model = get_qpeft_model(tiny_gpt2(), QPeftConfig(target_modules=["c_attn"], rank=2))
    model.add_adapter("other", QPeftConfig(target_modules=["c_fc"], rank=2))
    assert model.push_to_hub("me/tiny-qpeft", commit_message="hi", private=True) == "https://hub/commit"
    repo, files, kwargs = uploads[0]
    assert repo == "me/tiny-qpeft" and kwargs["commit_message"] == "hi"
    assert files == ["README.md", "README.md", "adapter_config.json", "adapter_config.json",
                     "adapter_model.safetensors", "adapter_model.safetensors", "other"]  # root + other/, no base
