"""scripts/bench_train.py's paper mode: the configurations it composes, its shape parsing and its tables."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_train  # noqa: E402


@pytest.mark.parametrize(("model", "method", "expected"), [
    ("deberta-v3-base", "lora", {"r": 2}),                                   # Table 2: LoRA r = 2, six matrices
    ("deberta-v3-base", "quantum_peft", {"rank": 3, "mapping": "qsd"}),
    ("deberta-v3-base", "quantum_peft_taylor", {"rank": 3, "mapping": "taylor"}),
    ("gpt2-medium", "lora", {"r": 4, "lora_dropout": 0.1}),                  # Table 3: LoRA r = 4 on Q, V
    ("gpt2-medium", "quantum_peft_taylor", {"rank": 2, "mapping": "taylor"}),  # Table 3: K = 2, K' = 1
    ("vit-b16-3bit", "quantum_peft_taylor", {"rank": 4, "mapping": "taylor"}),
])
def test_paper_mode_composes_the_shipped_configs(model: str, method: str, expected: dict) -> None:
    cfg = bench_train.compose_paper(model, method)
    assert {k: cfg.method[k] for k in expected} == expected
    if method == "quantum_peft_taylor" and model == "gpt2-medium":
        assert cfg.method.mapping_options.intrinsic_rank == 1
    assert cfg.model.name == {"deberta-v3-base": "deberta_v3_base", "gpt2-medium": "gpt2_medium",
                              "vit-b16-3bit": "vit_b16_3bit"}[model]


def test_every_paper_model_has_lora_first_and_a_table() -> None:
    for model, (_, methods) in bench_train.PAPER.items():
        assert methods[0] == "lora"
        assert model in bench_train.PAPER_TABLE


@pytest.mark.parametrize(("text", "shapes"), [("4x32,4x128", [(4, 32), (4, 128)]), ("8X512", [(8, 512)])])
def test_shapes_parse(text: str, shapes: list) -> None:
    assert bench_train.parse_shapes(text) == shapes


@pytest.mark.parametrize("text", ["4x", "4x32x2", "0x32", "a", ""])
def test_bad_shapes_are_refused_naming_the_option(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--shapes"):
        bench_train.parse_shapes(text)


def test_vit_images_match_the_token_count() -> None:
    assert bench_train.images(4, 32) == 1  # 128 tokens: one 197-token image at least
    assert bench_train.images(4, 128) == 3  # 512 tokens ≈ 2.6 images
    assert bench_train.images(8, 512) == 21


def _result(ms: float, **extra: float) -> dict:
    return {"trainable": 10, "step": {"ms": ms, "min": ms - 1, "max": ms + 1}, **extra}


def test_render_writes_the_table_and_replaces_only_the_readme_block(tmp_path: Path) -> None:
    results = {"base": _result(80.0), "lora": _result(100.0, peak_train_mib=50.0),
               "quantum_peft": _result(98.0, build={"ms": 4.0}, peak_train_mib=45.0)}
    bench_train.add_ratios(results)
    report = {"command": "python scripts/bench_train.py --configs paper", "machine": {"cpu": "CPU X", "torch": "2"},
              "settings": {"autocast": "off", "repeats": 5, "repeats_gpt2": 3, "device": "cpu"},
              "runs": [{"shape": [4, 32], "threads": 1, "models": {"deberta-v3-base": results}}]}
    path = tmp_path / "train_paper.json"
    path.write_text(json.dumps(report))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench_train.README_BEGIN}\nold table\n{bench_train.README_END}\noutro\n")
    bench_train.render(path, readme)
    table = (tmp_path / "train_paper.md").read_text()
    assert "| deberta-v3-base (Table 2) | 4 × 32 | 1 | quantum_peft | 10 | 98 (97–99) | 0.980 | 1.225 | 4.1% | 45 | 0.90 |" in table
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    assert "| 4 × 32 | 1 | lora |" in text
