"""The registry of per-operator rules: one `Rule` instance per (domain, ONNX operator type).

A new operator is one class in one of the rule modules, registered with `@register("OpType")`.
From user code, before `spa.analyze` or `spa.prune`, with no edit inside spa:

    @spa.rules.register("ScaledRelu", domain="com.example")   # a class: one instance is made
    class ScaledRelu(spa.rules.Rule): ...

    spa.rules.register("MyGelu", domain="com.example")(spa.rules.Unary())   # or an instance

The default domain is "" (also written "ai.onnx"). Registering a second rule for the same
(domain, op type) raises ValueError, unless `replace=True` (a user's rule in place of SPA's own);
`unregister` takes a user's rule out again (and brings SPA's own back). Operators with no rule,
in any domain (com.microsoft, custom ones without a user rule), block every channel that reaches
them: SPA never assumes an unknown operator passes channels through.
"""
from __future__ import annotations

from .base import Approximate, Block, Link, NodeView, Requires, Role, Rule, Summed, Unknown, same, shifted

DEFAULT_DOMAIN = ""

_REGISTRY: dict[tuple[str, str], Rule] = {}
_BUILTIN: dict[tuple[str, str], Rule] = {}  # SPA's own rules, as registered by its rule modules


def _domain(domain: str | None) -> str:
    return DEFAULT_DOMAIN if domain in (None, "", "ai.onnx") else domain


def register(*op_types: str, domain: str = DEFAULT_DOMAIN, replace: bool = False):
    """Register a rule for each of `op_types` in `domain`: a decorator for a Rule subclass (one
    instance serves every node) or a call on a Rule instance. ValueError when a rule is already
    registered for one of them, unless `replace`."""
    if not op_types or not all(isinstance(op, str) and op for op in op_types):
        raise ValueError("register() needs the operator types it is for, e.g. register('MyOp', domain='com.example')")
    key_domain = _domain(domain)

    def add(rule):
        instance = rule() if isinstance(rule, type) else rule
        if not isinstance(instance, Rule):
            raise TypeError(f"a rule must be a spa.rules.Rule (subclass or instance), got {type(instance).__name__}")
        for op_type in op_types:
            key = (key_domain, op_type)
            if key in _REGISTRY and not replace:
                raise ValueError(f"two rules for {_label(key)}: {type(_REGISTRY[key]).__qualname__} is registered "
                                 "(pass replace=True to put yours in its place)")
        for op_type in op_types:
            _REGISTRY[(key_domain, op_type)] = instance
        return rule

    return add


def unregister(op_type: str, domain: str = DEFAULT_DOMAIN) -> Rule | None:
    """Take a user's rule for (domain, op_type) out; where it replaced one of SPA's own, SPA's
    comes back (SPA's own rules are never taken out). Returns the rule taken out, or None."""
    key = (_domain(domain), op_type)
    current = _REGISTRY.get(key)
    if current is None or current is _BUILTIN.get(key):
        return None
    if key in _BUILTIN:
        _REGISTRY[key] = _BUILTIN[key]
    else:
        del _REGISTRY[key]
    return current


def rule_for(node) -> Rule | None:
    """The rule for a node's (domain, op type), or None."""
    return _REGISTRY.get((_domain(node.domain), node.op_type))


def rule_name(rule: Rule) -> str:
    """How `spa analyze` names a rule: its class, with the module for rules outside spa."""
    cls = type(rule)
    return cls.__qualname__ if cls.__module__.startswith("spa.rules") else f"{cls.__module__}.{cls.__qualname__}"


def is_builtin(rule: Rule) -> bool:
    return any(rule is r for r in _BUILTIN.values())


def supported_operators(domain: str | None = DEFAULT_DOMAIN) -> list[str]:
    """The operator types with a rule in `domain` ("" by default), or "domain.Op" names for
    every domain when domain is None."""
    if domain is None:
        return sorted(_label(key) for key in _REGISTRY)
    return sorted(op for d, op in _REGISTRY if d == _domain(domain))


def _label(key: tuple[str, str]) -> str:
    domain, op_type = key
    return f"{domain}.{op_type}" if domain else op_type


from . import attention, elementwise, linear, normalization, pooling, quantization, recurrent, shape  # noqa: E402,F401  (fill the registry)
from .elementwise import Broadcast, Unary  # noqa: E402  (rules a user may register for their own operators)

_BUILTIN.update(_REGISTRY)

__all__ = ["Approximate", "Block", "Broadcast", "Link", "NodeView", "Requires", "Role", "Rule", "Summed", "Unary",
           "Unknown", "is_builtin", "register", "rule_for", "rule_name", "same", "shifted", "supported_operators",
           "unregister"]
