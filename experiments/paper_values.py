"""Numbers printed in the paper (arXiv 2503.05431), transcribed for side-by-side tables.

Only printed values live here; nothing is derived. Metric per GLUE task as in AdaLoRA's tables:
SST-2/RTE/MRPC accuracy, CoLA Matthews correlation, STS-B Pearson (all × 100).
"""

from __future__ import annotations

GLUE_TASKS = ("sst2", "cola", "rte", "mrpc", "stsb")
GLUE_METRIC = {"sst2": "val/acc", "cola": "val/mcc", "rte": "val/acc", "mrpc": "val/acc", "stsb": "val/pearson"}

# Table 2: DeBERTaV3-base on GLUE dev (mean of 5 seeds). method -> (params, sst2, cola, rte, mrpc, stsb, avg)
TABLE2 = {
    "full_ft": ("184M", 95.63, 69.19, 83.75, 89.46, 91.60, 85.93),
    "bitfit": ("0.1M", 94.84, 66.96, 78.70, 87.75, 91.35, 83.92),
    "hadapter (0.61M)": ("0.61M", 95.30, 67.87, 85.56, 89.22, 91.30, 85.85),
    "padapter (0.60M)": ("0.60M", 95.53, 69.48, 84.12, 89.22, 91.52, 85.97),
    "hadapter (0.31M)": ("0.31M", 95.41, 67.65, 83.39, 89.25, 91.31, 85.40),
    "padapter (0.30M)": ("0.30M", 94.72, 69.06, 84.48, 89.71, 91.38, 85.87),
    "lora": ("0.33M", 94.95, 68.71, 85.56, 89.71, 91.68, 86.12),
    "adalora": ("0.32M", 95.80, 70.04, 87.36, 90.44, 91.63, 87.05),
    "loha": ("0.33M", 95.50, 66.52, 80.43, 89.95, 89.46, 84.37),
    "lokr": ("0.073M", 95.07, 69.46, 85.20, 89.71, 90.76, 86.04),
    "mora": ("0.49M", 95.79, 67.13, 85.19, 89.08, 90.13, 85.46),
    "quanta": ("0.093M", 95.30, 67.75, 84.48, 89.22, 91.01, 85.55),
    "quantum_peft": ("0.013M", 95.85, 67.85, 86.57, 90.78, 91.06, 86.42),
}

# Table 1: theoretical memory of PEFT on query/value.
# row -> rank -> (LoRA params, LoRA bytes, QP params, QP bytes) as printed.
TABLE1 = {
    "base": {1: ("36.9K", "0.14MB", "3.69K", "0.01MB"), 16: ("589.8K", "2.25MB", "3.98K", "0.02MB"),
             256: ("9437.2K", "36.00MB", "9.7K", "0.04MB")},
    "Llama": {1: ("8.26M", "31.51MB", "60.7K", "0.23MB"), 16: ("132.1M", "0.50GB", "64.5K", "0.25MB"),
              256: ("2188.2M", "8.35GB", "127.3K", "0.49MB")},
    "GPT-4": {1: ("36.7M", "140MB", "269.7K", "1.03MB"), 16: ("586.6M", "2.24GB", "286.4K", "1.09MB"),
              256: ("9385.6M", "35.80GB", "565.1K", "2.15MB")},
}
# Matrices adapted per row (query + value × layers) and their size N, as fitted in method.md §11.1.
TABLE1_SHAPES = {"base": (24, 768), "Llama": (252, 16384)}

# Table 8: ViT-B/16 Taylor, intrinsic rank K' -> printed #params (M).
TABLE8_PARAMS = {1: 0.037, 2: 0.074, 3: 0.111, 4: 0.147, 5: 0.184, 6: 0.221, 7: 0.257, 8: 0.294}

# Table 8 accuracies (%), intrinsic rank K' -> printed value.
TABLE8_ACC = {1: 98.38, 2: 98.52, 3: 98.76, 4: 98.74, 5: 98.63, 6: 98.79, 7: 98.81, 8: 98.87}

# Table 7: QAT of the Lie parameters (Taylor, ViT-B/16, FP32 base). Bits B (None = FP32) -> printed bits per
# parameter, and accuracy (%) with uniform and with adaptive bit loading.
TABLE7_BITS = {None: 32.0, 8: 8.25, 4: 4.25, 3: 3.25, 2: 2.25, 1: 1.25}
TABLE7_ACC = {"uniform": {None: 98.81, 8: 98.79, 4: 98.78, 3: 98.75, 2: 98.67, 1: 97.96},
              "adaptive": {None: 98.81, 8: 98.78, 4: 98.87, 3: 98.80, 2: 98.77, 1: 98.64}}

# Table 10: tensor networks (Taylor nodes), ViT-B/16 on CIFAR-10. Column -> (method config, params, accuracy %).
TABLE10 = {"CP": ("quantum_peft_tn_cp", "0.074M", 98.53), "TRD": ("quantum_peft_tn_trd", "0.147M", 98.14),
           "HTD (TTN)": ("quantum_peft_tn_htd", "0.026M", 98.11), "TD": ("quantum_peft_tn_tucker", "0.074M", 98.05),
           "TTD (MPS)": ("quantum_peft_tn_ttd", "0.111M", 98.81)}

# Table 6: ViT-B/16 on CIFAR-10 with a 3-bit base. Column -> (params, accuracy %) as printed.
TABLE6 = {"Original": ("—", 76.21), "FT": ("85.81M", 98.05), "LoRA K=1": ("0.037M", 98.14),
          "LoRA K=2": ("0.074M", 98.30), "LoRA K=4": ("0.147M", 98.39), "Quantum-PEFT": ("0.007M", 98.46)}

# Table 9: Quantum-PEFT (Pauli) on a 2-bit ViT-B/16 base, entangling layers L -> accuracy % as printed.
TABLE9_ACC = {1: 96.09, 2: 96.54, 3: 96.71, 4: 96.71, 8: 96.71, 16: 96.71, 32: 96.71}

# Table 3: GPT-2 Medium on E2E NLG (test set, final checkpoint). method -> (params, BLEU, NIST, METEOR, ROUGE-L,
# CIDEr) as printed (BLEU, METEOR and ROUGE-L x 100; NIST and CIDEr raw). FT is sourced from Zi et al. 2023.
E2E_METRICS = ("bleu", "nist", "meteor", "rouge_l", "cider")
E2E_SCALE = {"bleu": 100.0, "nist": 1.0, "meteor": 100.0, "rouge_l": 100.0, "cider": 1.0}
TABLE3 = {  # strings: the printed digits
    "full_ft": ("354.92M", "68.2", "8.62", "46.2", "71.0", "2.47"),
    "lora": ("0.39M", "66.88", "8.55", "45.48", "68.40", "2.31"),
    "adalora": ("0.38M", "64.64", "8.38", "43.49", "65.90", "2.18"),
    "loha": ("0.39M", "65.03", "8.45", "43.76", "66.54", "2.22"),
    "lokr": ("0.098M", "63.90", "8.27", "42.35", "65.22", "2.04"),
    "quantum_peft_taylor": ("0.098M", "67.46", "8.58", "45.02", "67.36", "2.31"),
}

# Table 4: GPT-2 Medium training cost on 4 A100s. method -> (ms per batch, memory ratio) as printed.
TABLE4 = {"lora": (1719.06, 4.03), "adalora": (1795.91, 4.03), "loha": (1874.04, 4.03), "lokr": (1790.24, 1.0),
          "quantum_peft_taylor": (1723.39, 1.0)}

# Table 5: Mistral-7B with a 4-bit base on GLUE dev. method -> (params, sst2, cola, rte, mrpc, stsb, avg) as printed.
TABLE5 = {
    "lora": ("3.54M", 96.21, 68.83, 87.46, 87.74, 90.70, 86.19),
    "adalora": ("3.54M", 96.90, 70.38, 87.53, 89.52, 90.96, 87.06),
    "quantum_peft": ("0.758M", 96.67, 70.61, 88.10, 89.94, 91.63, 87.39),
}
