"""``QPeftConfig``: everything needed to inject Quantum-PEFT adapters, validated on construction."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qpeft.quantize import ADAPTIVE_RULES
from qpeft.unitary.base import mapping_class

CONFIG_NAME = "adapter_config.json"
PEFT_TYPE = "QPEFT"
ALL_LINEAR = "all-linear"
BIAS_CHOICES = ("none", "all")
QUANT_BIT_CHOICES = (1, 2, 3, 4, 5, 6, 7, 8)
#: Tensor networks of Table 10 (paper A.3) and the adapter core each one closes with (qpeft.unitary.network).
NETWORKS = ("ttd", "cp", "tucker", "htd", "trd")
NETWORK_ALIASES = {"mps": "ttd", "td": "tucker", "ttn": "htd"}
NETWORK_CORES = {"ttd": "diagonal", "cp": "diagonal", "htd": "diagonal", "tucker": "dense", "trd": "ring"}
#: network_options each network accepts (ttd has no fold: its U, V come straight from the mapping).
NETWORK_OPTIONS = {"ttd": (), "cp": ("fold", "factors"), "trd": ("fold", "factors"),
                   "tucker": ("fold", "factors", "mode_ranks"), "htd": ("fold", "factors", "leaf_rank")}
NONLINEARITIES = (None, "tanh")
#: peft's ``TaskType`` values (kept here so that ``qpeft`` never has to import peft).
TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if not any(type(value) is type(a) and value == a for a in allowed):  # True is not 1, 0 is not False
        raise ValueError(f"QPeftConfig.{name}={value!r} is invalid; allowed values: {list(allowed)}")


def _number(name: str, value: Any, ok: Callable[[float], bool], allowed: str) -> None:
    """``value`` must be a finite real number (never a bool) for which ``ok`` holds."""
    real = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (real and ok(value)):
        raise ValueError(f"QPeftConfig.{name}={value!r} is invalid; allowed values: {allowed}")


def _names(name: str, value: Any, allowed: str) -> list[str]:
    """``value`` as a list of module-name suffixes (a set, as peft keeps them, is sorted); anything else
    (a non-string entry, ...) is an error."""
    value = sorted(value) if isinstance(value, (set, frozenset)) else value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"QPeftConfig.{name}={value!r} is invalid; allowed values: {allowed}")
    return list(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _regex(name: str, value: str) -> None:
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"QPeftConfig.{name}={value!r} is not a valid regex: {err}") from None


def _names_or_regex(name: str, value: Any) -> list[str] | str:
    """A regex string (checked) or a list of module-name suffixes."""
    if isinstance(value, str):
        _regex(name, value)
        return value
    return _names(name, value, "a regex string or a list of module-name suffixes (strings)")


def _pattern(name: str, value: Any, valid: Any, allowed: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"QPeftConfig.{name}={value!r} is invalid; allowed values: a dict regex -> {allowed}")
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"QPeftConfig.{name} key {key!r} is invalid; allowed: non-empty regex strings")
        _regex(f"{name}[{key!r}]", key)
        if not valid(item):
            raise ValueError(f"QPeftConfig.{name}[{key!r}]={item!r} is invalid; allowed values: {allowed}")
    return dict(value)


@dataclass
class QPeftConfig:
    r"""Configuration of a Quantum-PEFT adapter, :math:`\Delta W = \tfrac{\alpha}{K} U\,\mathrm{diag}(\lambda)\,V^\top`.

    ``U`` (``out x K``) and ``V`` (``in x K``) come from unitary mappings (``qpeft.unitary``);
    ``λ`` starts at zero so the adapted model equals the base model at initialisation.  With ``network``
    other than ``ttd`` U and V are tensor networks of unitary nodes (``qpeft.unitary.network``) and the core
    ``C`` between them is diagonal (cp, htd), dense ``K x K`` (tucker) or a ring of ``R = √K`` entries (trd):
    :math:`\Delta W = \tfrac{\alpha}{K}\,\sigma_o(U C V^\top)` with ``σ_o`` the identity or ``tanh``.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names to adapt: a list of name suffixes, one regex matched against the full name, "
                  "or 'all-linear' (every Linear / Conv1D / Linear4bit but the output head, as in peft)."},
    )
    rank: int = field(default=4, metadata={"help": "K: columns of U and V, entries of λ."})
    alpha: float = field(default=32.0, metadata={"help": "Scaling numerator: ΔW is multiplied by alpha / rank."})
    mapping: str = field(default="taylor", metadata={"help": "Unitary mapping of U (and of V unless mapping_v is set)."})
    mapping_options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Options of the U mapping, e.g. {'layers': 1} for pauli."}
    )
    mapping_v: str | None = field(default=None, metadata={"help": "Mapping of V; None means the same as U."})
    mapping_options_v: dict[str, Any] | None = field(
        default=None, metadata={"help": "Options of the V mapping; None means mapping_options."}
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input (LoRA-style)."})
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "Base weight is stored (in, out); set automatically for GPT-2 Conv1D."}
    )
    fused_modules: dict[str, list[int]] = field(
        default_factory=dict,
        metadata={"help": "Fused projections: name suffix -> indices of the equal output slices to adapt "
                  "(GPT-2 c_attn Q and V: {'c_attn': [0, 2]})."},
    )
    fused_num_parts: int = field(default=3, metadata={"help": "Number of equal output slices of a fused projection."})
    modules_to_save: list[str] = field(
        default_factory=list, metadata={"help": "Name suffixes of modules trained in full and saved (e.g. classifier)."}
    )
    bias: str = field(default="none", metadata={"help": f"Which biases are trained: one of {BIAS_CHOICES}."})
    train_mappings: bool = field(
        default=True, metadata={"help": "Train the intrinsic parameters of U and V; False freezes them at their "
                                "initial values, so only λ (and modules_to_save) train (an ablation)."})
    quant_bits: int | None = field(
        default=None, metadata={"help": "QAT of the adapter's intrinsic parameters: bits B (None = FP32)."}
    )
    quant_group_size: int = field(default=128, metadata={"help": "Quantization group size G."})
    quant_gamma: float = field(default=0.0, metadata={"help": "Adaptive bit loading exponent γ (0 = uniform)."})
    quant_rule: str = field(
        default="log", metadata={"help": "Adaptive bit loading rule (method.md §9, [I]): 'log', B_g = B + γ·log2(r_g/r̄) "
                                 "(primary), or 'power', B_g = B·(r_g/r̄)^γ; r̄ keeps the mean of B_g at B."})
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The base model (Hub id or path); filled in from the model when it knows it."}
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Modules never adapted: name suffixes, or one regex matched in full (peft's)."}
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Only adapt targets in these layer indices (needs target_modules as a list)."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list, e.g. 'layer' or 'h'; needs layers_to_transform."}
    )
    rank_pattern: dict[str, int] = field(
        default_factory=dict, metadata={"help": "Module-name regex (matched as a suffix, as in peft) -> rank K."}
    )
    alpha_pattern: dict[str, float] = field(
        default_factory=dict, metadata={"help": "Module-name regex (matched as a suffix, as in peft) -> alpha."}
    )
    network: str = field(
        default="ttd",
        metadata={"help": f"Tensor network of U and V (paper A.3, Table 10): one of {NETWORKS} (aliases "
                  f"{NETWORK_ALIASES}). ttd: U diag(λ) Vᵀ from the mappings; cp/tucker/htd/trd fold each side and build "
                  "it from unitary nodes of `mapping` (qpeft.unitary.network)."},
    )
    network_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Options of the network: fold (d, default 2), factors (a list, or a list of lists, one per "
                  "side size), mode_ranks (tucker), leaf_rank (htd)."},
    )
    nonlinearity: str | None = field(
        default=None,
        metadata={"help": f"Outer nonlinearity σ_o of A.2: one of {NONLINEARITIES}; 'tanh' gives ΔW = (α/K)·tanh(U C Vᵀ) "
                  "(dense forward x ΔWᵀ; no exact LoRA export)."},
    )
    task_type: str | None = field(default=None, metadata={"help": f"peft's task type: one of {TASK_TYPES} or None."})
    inference_mode: bool = field(
        default=False, metadata={"help": "Adapter tensors frozen (set when loaded for inference)."}
    )
    revision: str | None = field(default=None, metadata={"help": "Revision of the base model (peft's field)."})
    peft_type: str = field(default=PEFT_TYPE, metadata={"help": f"Always {PEFT_TYPE!r}: how peft recognises the file."})

    def __post_init__(self) -> None:
        if self.target_modules is None or (not isinstance(self.target_modules, str) and not self.target_modules):
            raise ValueError("QPeftConfig.target_modules is required: a list of module-name suffixes or a regex")
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as err:
                raise ValueError(f"QPeftConfig.target_modules={self.target_modules!r} is not a valid regex: {err}")
        else:  # a list of suffixes (or a single regex string, above)
            self.target_modules = _names(
                "target_modules", self.target_modules,
                "a list of module-name suffixes (strings) or one regex, e.g. ['query', 'value']")
        self.modules_to_save = _names(
            "modules_to_save", self.modules_to_save,
            "a list of module-name suffixes (strings), e.g. ['classifier'], not a bare string")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"QPeftConfig.rank={self.rank!r} is invalid; allowed values: integers >= 1")
        _number("alpha", self.alpha, lambda a: a > 0, "a finite number > 0")
        _number("dropout", self.dropout, lambda d: 0.0 <= d < 1.0, "a number 0 <= dropout < 1")
        _choice("bias", self.bias, BIAS_CHOICES)
        _choice("train_mappings", self.train_mappings, (True, False))
        if self.quant_bits is not None:
            _choice("quant_bits", self.quant_bits, QUANT_BIT_CHOICES)
        _number("quant_gamma", self.quant_gamma, lambda g: g >= 0, "a finite number >= 0 (0 = uniform bit loading)")
        _choice("quant_rule", self.quant_rule, ADAPTIVE_RULES)
        if not isinstance(self.quant_group_size, int) or self.quant_group_size < 1:
            raise ValueError(f"QPeftConfig.quant_group_size={self.quant_group_size!r} is invalid; allowed: integers >= 1")
        if self.fused_num_parts < 1:
            raise ValueError(f"QPeftConfig.fused_num_parts={self.fused_num_parts!r} is invalid; allowed: >= 1")
        for key, parts in self.fused_modules.items():
            bad = [p for p in parts if not 0 <= p < self.fused_num_parts]
            if bad or not parts:
                raise ValueError(
                    f"QPeftConfig.fused_modules[{key!r}]={parts!r} is invalid; allowed: a non-empty list of "
                    f"slice indices in [0, {self.fused_num_parts})"
                )
        self.mapping_options = dict(self.mapping_options)
        if self.mapping_options_v is not None:
            self.mapping_options_v = dict(self.mapping_options_v)
        for side, name, options in self._mapping_specs():
            cls = mapping_class(name)  # raises with the list of mappings
            unknown = sorted(set(options) - set(cls.option_names()))
            if unknown:
                raise ValueError(
                    f"QPeftConfig.{'mapping_options' if side == 'u' else 'mapping_options_v'} has unknown option(s) "
                    f"{unknown} for mapping {name!r}; allowed options: {sorted(cls.option_names())}"
                )
        self._check_peft_fields()
        self._check_network()

    def _check_network(self) -> None:
        """``network`` (aliases resolved), ``network_options`` (keys of that network), ``nonlinearity``, and the
        rank constraints that need no layer shape (trd: K = R²; cp with explicit factors: K <= min factor)."""
        if isinstance(self.network, str):
            self.network = NETWORK_ALIASES.get(self.network.lower(), self.network.lower())
        _choice("network", self.network, NETWORKS)
        if not isinstance(self.network_options, dict):
            raise ValueError(f"QPeftConfig.network_options={self.network_options!r} is invalid; allowed values: a dict "
                             f"with keys {list(NETWORK_OPTIONS[self.network])}")
        self.network_options = dict(self.network_options)
        allowed = NETWORK_OPTIONS[self.network]
        unknown = sorted(set(self.network_options) - set(allowed))
        if unknown:
            raise ValueError(f"QPeftConfig.network_options has unknown option(s) {unknown} for network "
                             f"{self.network!r}; allowed options: {list(allowed)}")
        for key in ("fold", "leaf_rank"):
            value = self.network_options.get(key)
            if value is not None and not (_is_int(value) and value >= (2 if key == "fold" else 1)):
                raise ValueError(f"QPeftConfig.network_options[{key!r}]={value!r} is invalid; allowed values: None or "
                                 f"an integer >= {2 if key == 'fold' else 1}")
        _choice("nonlinearity", self.nonlinearity, NONLINEARITIES)
        ranks = sorted({self.rank, *self.rank_pattern.values()})
        for rank in ranks:
            if self.network == "trd" and math.isqrt(rank) ** 2 != rank:
                raise ValueError(f"QPeftConfig.rank={rank} is invalid for network 'trd'; allowed values: squares R² "
                                 "(the ring bond R; λ has R entries)")
            factors = self.network_options.get("factors")
            if self.network == "cp" and isinstance(factors, (list, tuple)) and factors and all(
                    _is_int(f) for f in factors) and rank > min(factors):
                raise ValueError(f"QPeftConfig.rank={rank} is invalid for network 'cp' with network_options factors="
                                 f"{list(factors)}; allowed values: rank <= {min(factors)} (each node is St(n_j, K))")

    def _mapping_specs(self) -> tuple[tuple[str, str, dict[str, Any]], tuple[str, str, dict[str, Any]]]:
        """The node mappings of U and V (the plain mappings for ttd), V defaults resolved."""
        mapping_v = self.mapping_v or self.mapping
        options_v = self.mapping_options if self.mapping_options_v is None else self.mapping_options_v
        if self.mapping_v is not None and self.mapping_v != self.mapping and self.mapping_options_v is None:
            options_v = {}
        return ("u", self.mapping, dict(self.mapping_options)), ("v", mapping_v, dict(options_v))

    @property
    def core(self) -> str:
        """The adapter's core between U and V: ``diagonal`` (λ, K entries), ``dense`` (K x K) or ``ring`` (R entries)."""
        return NETWORK_CORES[self.network]

    def core_shape(self, rank: int | None = None) -> tuple[int, ...]:
        """Shape of one slice's core at rank ``K`` (default the config's): ``(K,)``, ``(K, K)`` or ``(R,)``."""
        rank = rank or self.rank
        if self.core == "dense":
            return (rank, rank)
        return (math.isqrt(rank),) if self.core == "ring" else (rank,)

    def _check_peft_fields(self) -> None:
        """The fields that mean what they mean in peft: targets, layers, patterns, task type, flags."""
        if isinstance(self.target_modules, str) and self.target_modules.lower() == ALL_LINEAR:
            self.target_modules = ALL_LINEAR
        if self.exclude_modules is not None:
            self.exclude_modules = _names_or_regex("exclude_modules", self.exclude_modules)
        self._check_layers()
        self.rank_pattern = _pattern("rank_pattern", self.rank_pattern, lambda v: _is_int(v) and v >= 1,
                                     "integers >= 1")
        self.alpha_pattern = _pattern("alpha_pattern", self.alpha_pattern,
                                      lambda v: _is_real(v) and math.isfinite(v) and v > 0, "finite numbers > 0")
        task = getattr(self.task_type, "value", self.task_type)  # peft's TaskType members are accepted too
        _choice("task_type", None if task is None else str(task), TASK_TYPES + (None,))
        self.task_type = None if task is None else str(task)
        _choice("inference_mode", self.inference_mode, (False, True))
        _choice("peft_type", self.peft_type, (PEFT_TYPE,))

    def _check_layers(self) -> None:
        layers, pattern = self.layers_to_transform, self.layers_pattern
        if layers is not None:
            values = [layers] if _is_int(layers) else layers
            if not isinstance(values, (list, tuple)) or not values or not all(_is_int(i) and i >= 0 for i in values):
                raise ValueError(f"QPeftConfig.layers_to_transform={layers!r} is invalid; allowed values: None, an "
                                 "integer >= 0 or a non-empty list of them")
            if isinstance(self.target_modules, str):
                raise ValueError("QPeftConfig.layers_to_transform needs target_modules as a list of names, got "
                                 f"{self.target_modules!r} (as in peft)")
            self.layers_to_transform = layers if _is_int(layers) else list(values)
        if pattern is not None:
            if layers is None:
                raise ValueError("QPeftConfig.layers_pattern needs layers_to_transform (as in peft)")
            self.layers_pattern = _names_or_regex("layers_pattern", pattern)

    @property
    def scaling(self) -> float:
        """The factor α/K in front of ``U diag(λ) Vᵀ``."""
        return self.alpha / self.rank

    @property
    def is_prompt_learning(self) -> bool:
        """peft's config protocol: Quantum-PEFT is not a prompt-learning method."""
        return False

    @property
    def is_adaption_prompt(self) -> bool:
        """peft's config protocol: Quantum-PEFT is not adaption prompt."""
        return False

    def factor_specs(self) -> tuple[tuple[str, str, dict[str, Any]], tuple[str, str, dict[str, Any]]]:
        """``(("u", mapping, options), ("v", mapping, options))`` with the V defaults resolved.

        For a network other than ttd each side is that network's mapping (``qpeft.unitary.network``) with
        ``{"node": mapping, "node_options": mapping options, **network_options}``.
        """
        specs = self._mapping_specs()
        if self.network == "ttd":
            return specs
        (_, map_u, opt_u), (_, map_v, opt_v) = specs
        return (("u", self.network, {"node": map_u, "node_options": opt_u, **self.network_options}),
                ("v", self.network, {"node": map_v, "node_options": opt_v, **self.network_options}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, directory: str | Path) -> None:
        """Write ``adapter_config.json`` (atomically) into ``directory``."""
        from qpeft.io import atomic_write_text

        atomic_write_text(Path(directory) / CONFIG_NAME, json.dumps(self.to_dict(), indent=2, sort_keys=True))

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """peft's name for :meth:`save` (peft's ``auto_mapping_dict`` is not needed and ignored)."""
        self.save(save_directory)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QPeftConfig:
        if data.get("peft_type", PEFT_TYPE) != PEFT_TYPE:
            raise ValueError(f"{CONFIG_NAME} has peft_type={data['peft_type']!r}, not a qpeft adapter; load it with "
                             "peft.PeftModel.from_pretrained")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown QPeftConfig field(s) {unknown}; allowed fields: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_pretrained(cls, directory: str | Path, subfolder: str | None = None, **kwargs: Any) -> QPeftConfig:
        """Read ``adapter_config.json`` from a directory or a Hub repo (``kwargs``: ``revision``, ``token``, ...).

        peft calls this through its registry with its own keyword arguments; those that are not download
        options are ignored, as peft does.
        """
        from qpeft.hub import resolve_file

        path = Path(resolve_file(directory, CONFIG_NAME, subfolder, **kwargs))
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}); the adapter config is damaged") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds a {type(data).__name__}, not a QPeftConfig object")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err
