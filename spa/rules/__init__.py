"""The registry of per-operator rules: one `Rule` instance per ONNX operator type.

A new operator is one class in one of the rule modules, registered with `@register("OpType")`.
Operators from other domains (com.microsoft, custom ones) and operators with no rule block every
channel that reaches them: SPA never assumes an unknown operator passes channels through.
"""
from __future__ import annotations

from .base import Approximate, Block, Link, NodeView, Requires, Role, Rule, Summed, Unknown

_REGISTRY: dict[str, Rule] = {}


def register(*op_types: str):
    def add(cls):
        instance = cls()
        for op_type in op_types:
            if op_type in _REGISTRY:
                raise ValueError(f"two rules for {op_type}")
            _REGISTRY[op_type] = instance
        return cls

    return add


def rule_for(node) -> Rule | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    return _REGISTRY.get(node.op_type)


def supported_operators() -> list[str]:
    return sorted(_REGISTRY)


from . import attention, elementwise, linear, normalization, pooling, quantization, recurrent, shape  # noqa: E402,F401  (fill the registry)

__all__ = ["Approximate", "Block", "Link", "NodeView", "Requires", "Role", "Rule", "Summed", "Unknown", "register", "rule_for", "supported_operators"]
