"""Quantum-PEFT vs peft LoRA / AdaLoRA / LoHa / LoKr: train step, peak memory, inference, checkpoint size.

Real-size DeBERTaV3-base and GPT-2 Medium built from their configs (random weights), and
DeBERTaV3-base with its 72 adapted matrices quantized to bitsandbytes nf4 (``deberta-v3-base-4bit``,
a QLoRA-style base; training step and memory only: bnb's CPU inference kernel repacks the shared
4-bit weights in place, so unmerged/merged inference is not timed for it).  All methods
of one model share the frozen base weights and are timed round-robin (method order rotated every
repeat), so drift hits all alike; the median and the spread (min-max) are reported.

- step: ``zero_grad`` + forward + ``loss.backward()`` (+ AdaLoRA's ``update_and_allocate``) + AdamW
  step.  ``base`` is the frozen model with input-embedding gradients on, no optimizer: the floor.
- inference: eval mode, ``no_grad``, steady state (after training, so Quantum-PEFT's U/V are cached);
  unmerged, then with every adapter merged (``merge_adapter``).
- peak memory: one fresh process per method; the peak over 3 steps above the memory held after the
  model is built (CPU: peak RSS, ``/proc/self/clear_refs``; CUDA: ``max_memory_allocated``).
- construction: forward+backward of all U/V factors alone (batched as in training), and its
  share of the Quantum-PEFT step.

    python scripts/bench_train.py                   # CPU: batch 4, seq 32, 1 thread -> results/bench/train.json
    python scripts/bench_train.py --device cuda --batch 8 --seq 128 --repeats 20
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from qpeft import QPeftConfig, get_qpeft_model  # noqa: E402
from qpeft.io import atomic_write_text  # noqa: E402
from timing import round_robin  # noqa: E402

DEBERTA_TARGETS = r".*\.layer\.\d+\.(attention\.self\.(query|key|value)_proj|attention\.output\.dense|intermediate\.dense|output\.dense)"
QPEFT_MAPPINGS = {  # DeBERTa sizes 768 / 3072 are not powers of two: Pauli runs through pad or qsd there
    "deberta-v3-base": {"pad-pauli": ("pad", {}), "qsd-pauli": ("qsd", {}), "taylor": ("taylor", {"order": 4})},
    "deberta-v3-base-4bit": {"pad-pauli": ("pad", {}), "qsd-pauli": ("qsd", {}), "taylor": ("taylor", {"order": 4})},
    "gpt2-medium": {"pauli": ("pauli", {"layers": 1}), "qsd-pauli": ("qsd", {}), "taylor": ("taylor", {"order": 4})},
}
PEFT_METHODS = ("lora", "adalora", "loha", "lokr")


def quantize_4bit(model: nn.Module, pattern: str) -> nn.Module:
    """Replace every ``nn.Linear`` whose name matches ``pattern`` by a bitsandbytes nf4 ``Linear4bit``."""
    import bitsandbytes as bnb

    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and re.fullmatch(pattern, name):
            q = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                  quant_type="nf4", compute_dtype=torch.float32)
            q.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False, quant_type="nf4")
            if module.bias is not None:
                q.bias = nn.Parameter(module.bias.data, requires_grad=False)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, q.to(module.weight.device))  # .to() quantizes
    model.is_loaded_in_4bit = True  # as from_pretrained(quantization_config=...) marks it: peft dispatches bnb layers
    return model


def build_base(model: str) -> nn.Module:
    """The real-size model from its config, random weights (seed 0)."""
    torch.manual_seed(0)
    if model == "deberta-v3-base-4bit":
        return quantize_4bit(build_base("deberta-v3-base"), DEBERTA_TARGETS)
    if model == "deberta-v3-base":
        from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

        cfg = DebertaV2Config(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            vocab_size=128100, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=256,
            max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True, num_labels=2,
        )
        return DebertaV2ForSequenceClassification(cfg)
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_embd=1024, n_layer=24, n_head=16, vocab_size=50257))


def methods_for(model: str) -> list[str]:
    return ["base", *PEFT_METHODS, *(f"qpeft-{m}" for m in QPEFT_MAPPINGS[model])]


def unsupported(model: str, method: str) -> str | None:
    """Why ``method`` cannot run on ``model`` (peft LoHa/LoKr have no GPT-2 Conv1D), else ``None``."""
    if model == "gpt2-medium" and method in ("loha", "lokr"):
        return "peft LyCORIS layers do not support transformers Conv1D (reference.md §1.6)"
    if model.endswith("-4bit") and method in ("loha", "lokr"):
        return "peft LyCORIS layers do not support bitsandbytes 4-bit layers (reference.md §1.11)"
    return None


def adapt(base: nn.Module, model: str, method: str, rank: int, total_step: int) -> nn.Module:
    """``base`` (already a private copy) with ``method`` injected."""
    if method == "base":
        base.requires_grad_(False)
        base.enable_input_require_grads()
        return base
    gpt2 = model == "gpt2-medium"
    targets = ["c_attn"] if gpt2 else DEBERTA_TARGETS
    if method.startswith("qpeft-"):
        mapping, options = QPEFT_MAPPINGS[model][method.removeprefix("qpeft-")]
        config = QPeftConfig(
            target_modules=targets, rank=rank, alpha=32.0, mapping=mapping, mapping_options=options,
            fused_modules={"c_attn": [0, 2]} if gpt2 else {},
        )
        return get_qpeft_model(base, config)
    import peft

    common = dict(target_modules=targets)
    config = {
        "lora": lambda: peft.LoraConfig(r=rank, lora_alpha=32, fan_in_fan_out=gpt2, **common),
        "adalora": lambda: peft.AdaLoraConfig(
            init_r=rank, target_r=rank, lora_alpha=32, tinit=10, tfinal=10, total_step=total_step,
            fan_in_fan_out=gpt2, **common,
        ),
        "loha": lambda: peft.LoHaConfig(r=rank, alpha=32, **common),
        "lokr": lambda: peft.LoKrConfig(r=rank, alpha=32, **common),
    }[method]()
    return peft.get_peft_model(base, config)


def make_batch(model: str, batch: int, seq: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50000, (batch, seq), generator=g)
    labels = torch.randint(0, 2, (batch,), generator=g) if model.startswith("deberta") else ids
    return {"input_ids": ids.to(device), "labels": labels.to(device)}


class Runner:
    """One adapted model with its optimizer: ``step``, ``infer``, ``build`` (U/V alone)."""

    def __init__(self, net: nn.Module, method: str, batch: dict[str, torch.Tensor]) -> None:
        self.net, self.method, self.batch = net, method, batch
        params = [p for p in net.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-5) if params else None
        self.global_step = 0

    def step(self) -> None:
        self.net.train()
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)
        self.net(**self.batch).loss.backward()
        if self.method == "adalora":
            self.net.base_model.update_and_allocate(self.global_step)
        if self.opt is not None:
            self.opt.step()
        self.global_step += 1

    def infer(self) -> None:
        self.net.eval()
        with torch.no_grad():
            self.net(**self.batch)

    def build(self) -> None:
        """Forward+backward of every U/V factor, built as in a training step."""
        layers = [layer for _, layer in self.net.qpeft_layers()]
        factors = self.net.base_model._batcher.build(layers)  # QPeftModel.base_model is the tuner
        sum(f.sum() for us, vs in factors for f in (*us, *vs)).backward()


# ------------------------------------------------------------------ memory / size probe (own process)
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def probe(model: str, method: str, args: argparse.Namespace) -> dict:
    """Peak training memory above the built model, trainable parameters and adapter file bytes."""
    device = torch.device(args.device)
    net = adapt(build_base(model), model, method, args.rank, args.total_step).to(device)
    runner = Runner(net, method, make_batch(model, args.batch, args.seq, device))
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
        before = _rss_kib("VmRSS") * 1024
    for _ in range(3):
        runner.step()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _rss_kib("VmHWM") * 1024
    out = {"peak_train_mib": (peak - before) / 2**20, "trainable": trainable}
    if method != "base":
        with tempfile.TemporaryDirectory() as tmp:
            net.save_pretrained(tmp)
            out["adapter_bytes"] = (Path(tmp) / "adapter_model.safetensors").stat().st_size
    return out


def run_probe(model: str, method: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--probe", model, method, "--device", args.device, "--batch", str(args.batch),
           "--seq", str(args.seq), "--rank", str(args.rank), "--total-step", str(args.total_step),
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ timing (one process, shared base)
def bench_model(model: str, args: argparse.Namespace) -> dict[str, dict]:
    device = torch.device(args.device)
    base = build_base(model).to(device)
    batch = make_batch(model, args.batch, args.seq, device)
    runners, results = {}, {}
    for method in methods_for(model):
        if reason := unsupported(model, method):
            results[method] = {"unsupported": reason}
            continue
        private = copy.deepcopy(base, memo={id(p): p for p in base.parameters()})  # frozen weights shared
        runners[method] = Runner(adapt(private, model, method, args.rank, args.total_step), method, batch)
        results[method] = {}
    repeats = args.repeats if model.startswith("deberta") else args.repeats_gpt2
    tasks: dict[str, Callable[[], None]] = {}
    for method, runner in runners.items():
        tasks[f"step/{method}"] = runner.step
        if method.startswith("qpeft-"):
            tasks[f"build/{method}"] = runner.build
    timed = round_robin(tasks, repeats, device)
    if not model.endswith("-4bit"):  # no inference timing on shared 4-bit weights (module docstring)
        timed |= round_robin({f"infer/{m}": r.infer for m, r in runners.items()}, repeats, device)  # steady eval
        for method, runner in runners.items():  # merged inference: every adapter folded in (shared W: values moot)
            if method != "base":
                runner.net.merge_adapter()
        timed |= round_robin({f"merged/{m}": r.infer for m, r in runners.items()}, repeats, device)
        for method, runner in runners.items():
            if method != "base":
                runner.net.unmerge_adapter()
    for key, value in timed.items():
        kind, method = key.split("/", 1)
        results[method][kind] = value
    if not args.skip_memory:
        for method in runners:
            results[method].update(run_probe(model, method, args))
    return results


def add_ratios(results: dict[str, dict]) -> None:
    lora, base = results["lora"], results["base"]
    for res in results.values():
        if "step" not in res:
            continue
        res["step_vs_lora"] = res["step"]["ms"] / lora["step"]["ms"]
        if "infer" in res:
            res["infer_vs_lora"] = res["infer"]["ms"] / lora["infer"]["ms"]
            res["merged_vs_base"] = res["merged"]["ms"] / base["merged"]["ms"]
        if "peak_train_mib" in res and lora.get("peak_train_mib"):
            res["peak_vs_lora"] = res["peak_train_mib"] / lora["peak_train_mib"]
        if "build" in res:
            res["build_share_of_step"] = res["build"]["ms"] / res["step"]["ms"]
        if "adapter_bytes" in res:
            res["bytes_per_4_params"] = res["adapter_bytes"] / (4 * res["trainable"])


def table(model: str, results: dict[str, dict]) -> str:
    head = ("| method | step ms (min–max) | ×LoRA | peak MiB | ×LoRA | infer ms | ×LoRA | merged ms | ×base "
            "| trainable | adapter bytes | U/V build ms (share) |")
    lines = [f"**{model}**", "", head, "|" + "---|" * 12]
    for method, r in results.items():
        if "unsupported" in r:
            lines.append(f"| {method} | unsupported | | | | | | | | | | |")
            continue
        build = f"{r['build']['ms']:.1f} ({100 * r['build_share_of_step']:.1f}%)" if "build" in r else ""
        peak = r.get("peak_train_mib")
        infer = (f"| {r['infer']['ms']:.0f} | {r['infer_vs_lora']:.3f} | {r['merged']['ms']:.0f} "
                 f"| {r['merged_vs_base']:.3f} " if "infer" in r else "| n/a | | n/a | ")
        lines.append(
            f"| {method} | {r['step']['ms']:.0f} ({r['step']['min']:.0f}–{r['step']['max']:.0f}) | {r['step_vs_lora']:.3f} "
            f"| {'' if peak is None else f'{peak:.0f}'} | {r.get('peak_vs_lora', float('nan')):.2f} "
            + infer
            + f"| {r.get('trainable', '')} | {r.get('adapter_bytes', '')} | {build} |"
        )
    return "\n".join(lines)


def machine(device: torch.device) -> dict[str, str | int]:
    info: dict[str, str | int] = {"torch": torch.__version__, "python": platform.python_version(),
                                  "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                           if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["deberta-v3-base", "gpt2-medium"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds, DeBERTa")
    parser.add_argument("--repeats-gpt2", type=int, default=3, help="timed rounds, GPT-2 Medium")
    parser.add_argument("--total-step", type=int, default=10_000, help="AdaLoRA schedule length")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: the 2-core machine is shared)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("results/bench/train.json"))
    parser.add_argument("--probe", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(probe(*args.probe, args)))
        return
    report = {"machine": machine(torch.device(args.device)),
              "settings": {k: v for k, v in vars(args).items() if k not in ("probe", "out")} | {"out": str(args.out)},
              "qpeft_mappings": QPEFT_MAPPINGS, "models": {}}
    start = time.perf_counter()
    for model in args.models:
        results = bench_model(model, args)
        add_ratios(results)
        report["models"][model] = results
        print(table(model, results), "\n", flush=True)
    report["wall_s"] = time.perf_counter() - start
    atomic_write_text(args.out, json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out} in {report['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
