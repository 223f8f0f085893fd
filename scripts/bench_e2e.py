"""Table 4: training cost of the Table 3 rows on GPT-2 Medium (LoRA, AdaLoRA, LoHa, LoKr, Quantum-PEFT).

Every method is built exactly as a run builds it: ``+experiment=e2e_gpt2m method=<m>`` composed by Hydra
(``conf/task_method/e2e_<m>.yaml`` included), the E2E task's loss installed (``task.prepare_model``), then
``experiments.methods.build_method`` (peft rows on c_attn split into q, k, v; Quantum-PEFT on its slices).
The base is GPT-2 Medium from its config with random weights, built once; every method's model shares its
frozen tensors (``load_state_dict(assign=True)``), so memory holds one base plus the adapters.

- ms/batch: ``zero_grad`` + forward + ``loss.backward()`` + AdamW step + ``on_step_end`` (AdaLoRA's rank
  allocator), batch 8 (the paper's) of ``--seq-len`` tokens; rounds are round-robin with the method order
  rotated every round, so drift hits all alike. Median and spread (min-max) per method; ratio to LoRA.
- seq-len default: the p95 of the E2E encodings of ``--data`` (``MR + SEP + ' ' + ref + EOS``, as the task
  encodes; the task pads a batch to its longest example, and a batch of 8 has its longest at about p89).
- peak memory: CUDA ``max_memory_allocated`` during the timed steps, minus what was allocated before
  (activations, gradients, optimizer state); on CPU no per-step peak is measurable in a process that holds
  all methods (``tracemalloc`` does not see torch), so ``None``.
- adapter memory ratio (Table 4's "Memory Ratio"): trainable parameters x 4 B, and the real saved adapter
  file size (``save_adapter``), each divided by Quantum-PEFT's.

    python scripts/bench_e2e.py --data /work/shared/data/e2e/valid.txt --repeats 2    # CPU, ~4 min
    python scripts/bench_e2e.py --device cuda --repeats 20 --warmup 3
    python scripts/bench_e2e.py --layers 2 --methods lora quantum_peft_taylor         # quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import experiments.schemas  # noqa: E402,F401  (registers the config schemas)
from experiments.methods import Method, build_method  # noqa: E402
from experiments.model_assets import gpt2_tokenizer_dir  # noqa: E402
from experiments.paper_values import TABLE4  # noqa: E402
from experiments.records import dir_bytes, git_info  # noqa: E402
from experiments.tasks import build_task  # noqa: E402
from experiments.tasks.e2e import read_lora_pairs  # noqa: E402
from qpeft.io import atomic_write_text  # noqa: E402
from timing import round_robin  # noqa: E402

METHODS = ("lora", "adalora", "loha", "lokr", "quantum_peft_taylor")
PAPER_MS = {method: ms for method, (ms, _) in TABLE4.items()}
PAPER_MEMORY_RATIO = {method: ratio for method, (_, ratio) in TABLE4.items()}
REFERENCE = "quantum_peft_taylor"  # the memory ratio's denominator
FULL_RUN_STEPS = 26_290  # ceil(42,061 / 8) x 5 epochs (AdaLoRA's schedule is written for it)


def compose_e2e(method: str) -> DictConfig:
    """The run's config for ``+experiment=e2e_gpt2m method=<method>``."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["+experiment=e2e_gpt2m", f"method={method}"])


def e2e_lengths(cfg: DictConfig, data: Path) -> list[int]:
    """Token lengths of every (MR, reference) pair of ``data`` as the E2E task encodes them."""
    task = build_task(cfg.task)
    from transformers import AutoTokenizer

    task.tokenizer = AutoTokenizer.from_pretrained(str(gpt2_tokenizer_dir(Path(cfg.model.cache_dir))))
    return sorted(len(task.encode(mr, ref)["input_ids"]) for mr, ref in read_lora_pairs(data))


def percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def gpt2_medium(layers: int, state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """GPT-2 Medium (d = 1024, 16 heads) with ``layers`` blocks: random weights, or ``state``'s tensors shared."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=1024, n_layer=layers, n_head=16)
    if state is None:
        return GPT2LMHeadModel(config)
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    return model


class Runner:
    """One method's model, optimizer and batch: :meth:`step` is one training batch."""

    def __init__(self, method: Method, batch: dict[str, torch.Tensor], lr: float, weight_decay: float) -> None:
        self.method, self.batch = method, batch
        self.opt = torch.optim.AdamW(method.param_groups(weight_decay), lr=lr)
        self.global_step = 0

    def step(self) -> None:
        self.method.model.train()
        self.opt.zero_grad(set_to_none=True)
        self.method.model(**self.batch).loss.backward()
        self.opt.step()
        self.method.on_step_end(self.global_step)
        self.global_step += 1


def make_batch(batch: int, seq: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random ids; the loss on the last 60% of each row (E2E's references are ~60% of an example)."""
    ids = torch.randint(5, 50000, (batch, seq), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, : int(0.4 * seq)] = -100
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def adapter_bytes(method: Method) -> int:
    """Bytes of the adapter as a run saves it (``save_adapter``; loader files only)."""
    with tempfile.TemporaryDirectory() as tmp:
        method.save_adapter(tmp)
        return dir_bytes(Path(tmp))


def table(results: dict[str, dict]) -> str:
    lines = ["| method | trainable | ms/batch (median) | min-max | x LoRA | paper x LoRA | peak step MiB | "
             "memory ratio (params) | memory ratio (file) | paper ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        peak = "None" if r["peak_step_bytes"] is None else f"{r['peak_step_bytes'] / 2**20:.0f}"
        paper = PAPER_MS[name] / PAPER_MS["lora"]
        lines.append(f"| {name} | {r['trainable']:,} | {r['ms']:.0f} | {r['min']:.0f}-{r['max']:.0f} | "
                     f"{r.get('ratio_to_lora', float('nan')):.3f} | {paper:.3f} | {peak} | "
                     f"{r['memory_ratio_params']:.2f} | {r['memory_ratio_file']:.2f} | "
                     f"{PAPER_MEMORY_RATIO[name]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--layers", type=int, default=24, help="GPT-2 Medium has 24; fewer for a quick check")
    parser.add_argument("--batch", type=int, default=8, help="the paper's batch size")
    parser.add_argument("--seq-len", type=int, default=None, help="default: p95 of the --data encodings")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "e2e" / "valid.txt",
                        help="microsoft/LoRA's MR||reference file for the length distribution")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds (CPU: ~14 s a step at 24 layers)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="default results/bench/e2e_gpt2m_<device>.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfgs = {m: compose_e2e(m) for m in args.methods}
    first = cfgs[args.methods[0]]
    lengths = None
    if args.data.is_file():
        lengths = e2e_lengths(first, args.data)
    elif args.seq_len is None:
        parser.error(f"--data {args.data} not found: give the E2E valid.txt (MR||reference) or --seq-len")
    seq_len = args.seq_len or percentile(lengths, 0.95)

    git = git_info(ROOT)  # the tree the run starts from
    torch.manual_seed(0)
    state = gpt2_medium(args.layers).requires_grad_(False).to(device).state_dict()
    runners, results = {}, {}
    batch = make_batch(args.batch, seq_len, device)
    for name, cfg in cfgs.items():
        model = gpt2_medium(args.layers, state)
        build_task(cfg.task).prepare_model(model)  # the E2E label-smoothed completion loss, as the loop does
        method = build_method(cfg.method, model, cfg.model, FULL_RUN_STEPS, task_type="CAUSAL_LM")
        method.model.to(device)
        protocol = cfg.protocols[cfg.method.protocol]
        runners[name] = Runner(method, batch, protocol.lr, protocol.weight_decay)
        trainable, total = method.counts()
        results[name] = {"trainable": trainable, "total": total, "adapter_param_bytes": 4 * trainable,
                         "adapter_file_bytes": adapter_bytes(method)}
        print(f"built {name}: {trainable:,} trainable", flush=True)
    timed = round_robin({name: r.step for name, r in runners.items()}, args.repeats, device, args.warmup)
    ref = results.get(REFERENCE)
    for name, r in results.items():
        r.update(timed[name])
        if "lora" in timed:
            r["ratio_to_lora"] = r["ms"] / timed["lora"]["ms"]
        r["memory_ratio_params"] = r["adapter_param_bytes"] / ref["adapter_param_bytes"] if ref else float("nan")
        r["memory_ratio_file"] = r["adapter_file_bytes"] / ref["adapter_file_bytes"] if ref else float("nan")

    report = table(results)
    print(report)
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git": git, "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "layers": args.layers, "batch": args.batch, "seq_len": seq_len, "warmup": args.warmup, "repeats": args.repeats,
        "seq_len_rule": "p95 of --data encodings" if args.seq_len is None else "--seq-len",
        "e2e_lengths": None if lengths is None else {
            "file": str(args.data), "n": len(lengths), "min": lengths[0], "median": percentile(lengths, 0.5),
            "p95": percentile(lengths, 0.95), "max": lengths[-1]},
        "peak_memory_note": None if device.type == "cuda" else
        "CPU: no per-method step peak is measurable in one process holding every method (tracemalloc misses torch)",
        "paper": {"ms_per_batch": PAPER_MS, "memory_ratio": PAPER_MEMORY_RATIO, "hardware": "4 A100s"},
        "methods": results,
    }
    out = args.out or ROOT / "results" / "bench" / f"e2e_gpt2m_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(record, indent=1) + "\n")
    header = (f"# E2E GPT-2 Medium training cost (Table 4)\n\n`{record['command']}`  \ngit {git.get('sha')} "
              f"(dirty: {git.get('dirty')}), torch {torch.__version__}, {record['threads']} threads, {device}, "
              f"{args.layers} layers, batch {args.batch} x {seq_len} tokens ({record['seq_len_rule']}), "
              f"{args.warmup} warm-up + {args.repeats} timed rounds\n\n")
    atomic_write_text(out.with_suffix(".md"), header + report + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
