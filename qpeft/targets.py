"""Which modules an adapter config targets, and with which rank and alpha: peft's matching rules.

* a list entry matches a module name exactly or as a dotted suffix (``"query"`` matches ``"...attention.self.query"``);
  a string is a regex matched against the whole name; ``"all-linear"`` means every supported linear layer
  except the model's output head (peft's shorthand);
* ``exclude_modules`` uses the same rules and always wins; modules under ``modules_to_save`` are never targeted;
* ``layers_to_transform`` keeps targets whose first numbered segment (``layer.3.``, or ``<layers_pattern>.3.``)
  is one of the given indices;
* ``rank_pattern`` / ``alpha_pattern`` keys are regexes matched as a name suffix, ``(.*\\.)?(key)$``; the first
  key that matches gives the module's rank / alpha.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from qpeft.config import QPeftConfig

#: Classifier-head names peft leaves out of ``"all-linear"`` for sequence classification.
SEQ_CLS_HEADS = ("classifier", "score")


def suffix_match(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def name_matches(name: str, spec: list[str] | str) -> bool:
    """A regex string matches ``name`` in full; a list matches it exactly or as a dotted suffix."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(suffix_match(name, s) for s in spec)


def layer_index(name: str, layers_pattern: list[str] | str | None) -> int | None:
    """The index of the first numbered segment of ``name`` (after one of ``layers_pattern`` when given)."""
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        match = next((m for p in patterns if (m := re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", name))), None)
    return None if match is None else int(match.group("idx"))


def in_layers(name: str, config: QPeftConfig) -> bool:
    """Whether ``name`` lies in one of ``config.layers_to_transform`` (always true when it is unset)."""
    if config.layers_to_transform is None:
        return True
    wanted = config.layers_to_transform
    index = layer_index(name, config.layers_pattern)
    return index is not None and (index == wanted if isinstance(wanted, int) else index in wanted)


def pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """The value of the first key of ``patterns`` matching ``name`` as a suffix regex, else ``default``."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def rank_and_alpha(name: str, config: QPeftConfig) -> tuple[int, float]:
    """``(K, α)`` of module ``name``: ``rank_pattern`` / ``alpha_pattern`` override ``rank`` / ``alpha``."""
    rank = pattern_value(config.rank_pattern, name, config.rank)
    return rank, pattern_value(config.alpha_pattern, name, config.alpha)


def head_names(model: nn.Module, config: QPeftConfig) -> set[str]:
    """What ``"all-linear"`` leaves out: the output embedding (LM head), else for ``SEQ_CLS`` the classifier."""
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if output is not None:
        return {name for name, module in model.named_modules() if module is output}
    if config.task_type == "SEQ_CLS":
        return {name for name in SEQ_CLS_HEADS if isinstance(getattr(model, name, None), nn.Module)}
    return set()
