"""Coupled channel groups: the closure of the per-operator ties over the whole graph.

Propagation starts from the dimensions where channels are born (each rule's `seeds`: the output
channels of Conv, Gemm, MatMul with a constant weight, embedding tables). Every dimension reached
is *live*; each operator next to a live dimension is asked for its ties. Elements of live
dimensions are the nodes of one big undirected graph whose edges are the ties; its connected
components are the *units*: the sets of parameter slices that must go together when one channel
goes. Units that run through exactly the same dimensions form a *group* (e.g. the 64 output
channels of a conv with everything they touch); a group is what a ratio is applied to.

A unit that reaches a graph output or input, an operator without a rule, or anything a rule cannot
map exactly is blocked, and the reason is kept.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .errors import SpaError
from .graph import Graph
from .reasons import Reason, code_of
from .rules import Approximate, Block, Link, NodeView, Requires, Role, Summed, Unknown, is_builtin, rule_for, rule_name
from .rules.shape import CARRIERS
from .symbols import Product


@dataclass
class Member:
    """One dimension (tensor, axis) a group runs through, with each unit's indices along it."""

    tensor: str
    axis: int
    size: int  # the dimension's size in the input model
    is_param: bool
    indices: np.ndarray  # the indices of all units, unit after unit
    offsets: np.ndarray  # unit u owns indices[offsets[u]:offsets[u + 1]]

    def unit(self, u: int) -> np.ndarray:
        return self.indices[self.offsets[u]:self.offsets[u + 1]]

    def units_indices(self, units) -> np.ndarray:
        """The indices along this dimension of the given units, sorted."""
        owner = np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))
        return np.sort(self.indices[np.isin(owner, np.fromiter(units, dtype=np.int64))])


@dataclass
class Group:
    """One coupled channel group. `blocked` and `approximate` are the reasons, each a text (a
    `str`) with a stable `.code` (spa.reasons.Reason; `blocked_codes` lists them); `layer` is the
    operator where its channels are born (the Conv whose output channels they are)."""

    id: int
    units: int  # how many channels (units) the group has
    members: list[Member]
    blocked: list[str] = field(default_factory=list)
    approximate: list[str] = field(default_factory=list)
    operators: list[str] = field(default_factory=list)
    kind: str = "channels"  # channels, heads, head_dims or hidden (see _Propagation._kind)
    layer: str = ""  # "Conv 'name'": the first operator that reads the group's weights and outputs its channels
    cost: dict | None = None  # {"params", "flops", "flops_share"} of all its channels, once Analysis.costs() ran

    @property
    def prunable(self) -> bool:
        return not self.blocked and self.units > 1

    @property
    def params(self) -> list[Member]:
        return [m for m in self.members if m.is_param]

    @property
    def blocked_codes(self) -> list[str]:
        """The code of each blocked reason (spa.reasons.REASON_CODES), in the order of `blocked`."""
        return [code_of(r) for r in self.blocked]

    @property
    def approximate_codes(self) -> list[str]:
        return [code_of(r) for r in self.approximate]

    def block(self, text: str, code: str) -> None:
        """Block the group (after the analysis: a rewrite that fails, say) for `text`, with `code`."""
        self.blocked.append(Reason(text, code))

    def __str__(self) -> str:
        return self.describe()

    def describe(self, verbose: bool = False) -> str:
        """A readable chain of what removing one unit of this group removes. verbose: every
        member, activations included, with the indices each unit owns, every operator, and each
        reason with its code."""
        state = ("blocked" + ("" if verbose else ": " + "; ".join(self.blocked)) if self.blocked
                 else "prunable" if self.prunable else "kept: one channel cannot go")
        if self.approximate and not self.blocked:
            state += " (approximate" + ("" if verbose else ": " + "; ".join(self.approximate)) + ")"
        where = f" of {self.layer}" if self.layer else ""
        lines = [f"group {self.id}: {self.units} {self._unit_word()}{where}, {state}"]
        if self.cost is not None:
            lines.append(f"  {self.cost['params']:,} parameters, {self.cost['flops_share'] * 100:.1f}% of the FLOPs")
        if verbose:
            for label, reasons in (("blocked", self.blocked), ("approximate", self.approximate)):
                lines += [f"  {label} [{code_of(r)}]: {r}" for r in reasons]
            for m in self.members:
                kind = "param" if m.is_param else "activation"
                units = " | ".join(_compact(m.unit(u)) for u in range(self.units))
                lines.append(f"  {kind} {m.tensor}[axis {m.axis}], {len(m.indices)} of {m.size}: {units}")
            if self.operators:
                lines.append("  through: " + ", ".join(self.operators))
            return "\n".join(lines)
        for m in self.params:
            per_unit = len(m.indices) // max(self.units, 1)
            lines.append(f"  {m.tensor}[axis {m.axis}]: {len(m.indices)} of {m.size}" + (f" ({per_unit} per channel)" if per_unit > 1 else ""))
        if self.operators:
            shown = ", ".join(self.operators[:8]) + (f", ... ({len(self.operators)} in all)" if len(self.operators) > 8 else "")
            lines.append(f"  through: {shown}")
        return "\n".join(lines)

    def _unit_word(self) -> str:
        return {"heads": "heads", "head_dims": "head dims", "hidden": "hidden channels"}.get(self.kind, "channels")

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "channels": self.units,
            "prunable": self.prunable,
            "blocked": [str(r) for r in self.blocked],
            "blocked_codes": self.blocked_codes,
            "approximate": [str(r) for r in self.approximate],
            "approximate_codes": self.approximate_codes,
            "kind": self.kind,
            "layer": self.layer,
            **({"params": self.cost["params"], "flops": self.cost["flops"], "flops_share": self.cost["flops_share"]}
               if self.cost is not None else {}),
            "members": [
                {"tensor": m.tensor, "axis": m.axis, "param": m.is_param, "indices": len(m.indices), "size": m.size}
                for m in self.members
            ],
            "operators": self.operators,
        }


def _compact(indices: np.ndarray) -> str:
    """Indices as runs: "0-63", "3", "0-3,8-11"."""
    values = [int(i) for i in indices]
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or "-"


@dataclass
class Analysis:
    graph: Graph
    groups: list[Group]
    carrier: str
    digits: dict = field(default_factory=dict)  # (tensor, axis) of symbolic size -> its prunable digit
    custom_operators: list = field(default_factory=list)  # nodes of other domains, or with a user's rule (see analyze)

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @property
    def blocked(self) -> list[Group]:
        return [g for g in self.groups if g.blocked]

    def reason_summary(self) -> dict[str, dict[str, int]]:
        """Per code: how many groups are blocked ("blocked") or approximate and prunable
        ("approximate") for it, and their channels."""
        summary: dict[str, dict[str, int]] = {}
        for g in self.groups:
            for label, codes in (("blocked", g.blocked_codes), ("approximate", [] if g.blocked else g.approximate_codes)):
                for code in dict.fromkeys(codes):
                    entry = summary.setdefault(code, {"blocked": 0, "approximate": 0, "channels": 0})
                    entry[label] += 1
                    entry["channels"] += g.units
        return dict(sorted(summary.items(), key=lambda kv: (-kv[1]["blocked"] - kv[1]["approximate"], kv[0])))

    def costs(self) -> list[dict]:
        """Each group's parameters and FLOPs if all its channels went (also kept on group.cost):
        `params` the parameter elements of its slices, `flops` what the operators next to its
        dimensions would no longer compute (spa.metrics on shapes with the group's axes emptied),
        and `flops_share` that as a fraction of the model's FLOPs."""
        from .metrics import count_flops, node_flops

        total = None
        for g in self.groups:
            if g.cost is not None:
                continue
            total = count_flops(self.graph) if total is None else total
            removed = {(m.tensor, m.axis): len(m.indices) for m in g.members}
            shrunk = _ShrunkView(self.graph, removed)
            nodes = set()
            for m in g.members:
                t = self.graph.tensors[m.tensor]
                nodes.update(t.consumers)
                if t.producer is not None:
                    nodes.add(t.producer)
            flops = sum(node_flops(self.graph, i) - node_flops(shrunk, i) for i in sorted(nodes))
            g.cost = {"params": _param_elements(self.graph, g), "flops": int(flops),
                      "flops_share": flops / total if total else 0.0}
        return [g.cost for g in self.groups]

    def to_dict(self) -> dict:
        self.costs()
        return {
            "groups_total": len(self.groups),
            "groups_prunable": len(self.prunable),
            "groups_blocked": len(self.blocked),
            "channels_prunable": sum(g.units for g in self.prunable),
            "reshape_carrier": self.carrier,
            "reasons": self.reason_summary(),
            "custom_operators": self.custom_operators,
            "groups": [g.to_dict() for g in self.groups],
        }


class _ShrunkView:
    """A Graph seen with some dimensions smaller by the given counts (everything else delegated)."""

    def __init__(self, graph: Graph, removed: dict[tuple[str, int], int]):
        self._graph = graph
        self._shapes: dict[str, tuple] = {}
        for (name, axis), count in removed.items():
            shape = list(self._shapes.get(name, graph.shape(name)))
            if isinstance(shape[axis], int):  # a symbolic size (pruned by a digit of it) counts as 1 either way
                shape[axis] = max(shape[axis] - count, 0)
            self._shapes[name] = tuple(shape)

    def shape(self, name: str):
        return self._shapes[name] if name in self._shapes else self._graph.shape(name)

    def __getattr__(self, name):
        return getattr(self._graph, name)


def _param_elements(graph: Graph, group: Group) -> int:
    """Parameter elements in the group's slices (as spa.metrics.count_params counts: float
    weights, a copy sharing its source's storage not counted again)."""
    from .metrics import _INDEX_TYPES

    axes: dict[str, dict[int, int]] = {}
    for m in group.params:
        axes.setdefault(m.tensor, {})[m.axis] = len(m.indices)
    total = 0
    for name, cut in axes.items():
        t = graph.tensors[name]
        if name in graph.copies or t.dtype in _INDEX_TYPES or t.shape is None or \
                not all(isinstance(d, int) for d in t.shape):
            continue
        whole = int(np.prod(t.shape))
        left = int(np.prod([d - cut.get(a, 0) for a, d in enumerate(t.shape)]))
        total += whole - left
    return total


def connected_components(src: np.ndarray, dst: np.ndarray, total: int) -> np.ndarray:
    """Component labels 0, 1, ... of the `total` nodes of an undirected graph with edges (src, dst),
    numbered in the order of each component's first node (as scipy's connected_components does;
    importing scipy.sparse costs every command a third of a second). Every node holds the lowest
    node of its component it has heard of: each round, both ends of every edge take the lower of
    their two, then every node jumps to its holder's holder, until no edge joins two labels."""
    labels = np.arange(total)
    while True:
        low = np.minimum(labels[src], labels[dst])
        new = labels.copy()
        np.minimum.at(new, src, low)
        np.minimum.at(new, dst, low)
        new = new[new]
        if np.array_equal(new, labels):
            return np.unique(labels, return_inverse=True)[1].reshape(total)
        labels = new


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique for integers by sorting: numpy 2.4's hashing unique is ~100x slower on the large
    arrays of big graphs."""
    ordered = np.sort(values)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if len(ordered) else ordered


def _row_ids(rows: np.ndarray) -> tuple[np.ndarray, int]:
    """An id per row, equal for equal rows (ids in sorted row order), and how many ids."""
    order = np.lexsort(rows.T[::-1])
    ordered = rows[order]
    new = np.concatenate(([True], np.any(ordered[1:] != ordered[:-1], axis=1)))
    ids = np.empty(len(rows), dtype=np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids, int(ids.max()) + 1


def analyze(model, keep=(), carrier: str = "outer") -> Analysis:
    """Find every coupled channel group of an ONNX model (path, ModelProto or Graph)."""
    if carrier not in CARRIERS:
        raise SpaError(f"unknown reshape carrier '{carrier}' (choose from {', '.join(CARRIERS)})")
    graph = Graph.load(model)
    propagation = _Propagation(graph, carrier)
    propagation.seed()
    propagation.run()
    propagation.flag_sums_over_nonzero()
    propagation.keep(keep)
    digits = {propagation.dims[d]: digit for d, digit in propagation.digits.items()}
    return Analysis(graph, propagation.groups(), carrier, digits, _custom_operators(graph))


def _custom_operators(graph: Graph) -> list[dict]:
    """The nodes of other domains than ONNX's, and the nodes a user's rule handles: which rule
    (None: no rule, so they block the channels reaching them)."""
    found = []
    for index, node in enumerate(graph.nodes):
        rule = rule_for(node)
        custom_domain = node.domain not in ("", "ai.onnx")
        if custom_domain or (rule is not None and not is_builtin(rule)):
            found.append({"node": graph.node_name(index), "op_type": node.op_type, "domain": node.domain or "",
                          "rule": rule_name(rule) if rule is not None else None})
    return found


class _Propagation:
    def __init__(self, graph: Graph, carrier: str):
        self.graph = graph
        self.carrier = carrier
        self.dim_ids: dict[tuple[str, int], int] = {}
        self.dims: list[tuple[str, int]] = []
        self.sizes: list[int] = []
        self.offsets: list[int] = [0]
        self.edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.blocks: list[tuple[int, np.ndarray | None, str]] = []
        self.approximations: list[tuple[int, str]] = []
        self.dim_nodes: dict[int, set[int]] = {}
        self.node_ties: dict[int, set[tuple[int, int]]] = {}  # node -> live dims tied at it
        self.sums: list[tuple[int, int, str]] = []  # (node, dim, reason): the dim is summed there
        self.roles: dict[int, set[str]] = {}  # dim -> roles operators gave it
        self.digits: dict[int, tuple[int, int]] = {}  # dim of symbolic size -> its prunable digit
        self.requirements: list[tuple[int, Requires]] = []  # (live dim, requirement) checked after the ties
        self.queue: deque[int] = deque()

    # ----------------------------------------------------------------- growing the live set
    def live(self, tensor: str, axis: int, digit: tuple[int, int] | None = None) -> int | None:
        """The id of a live dimension, making it live if needed; None when its size is unknown (or
        a symbolic axis is asked to be split two different ways)."""
        t = self.graph.tensors.get(tensor)
        if t is None or t.shape is None or not -len(t.shape) <= axis < len(t.shape):
            return None
        axis %= len(t.shape)
        key = (tensor, axis)
        if key in self.dim_ids:
            dim = self.dim_ids[key]
            return dim if digit is None or self.digits.get(dim, digit) == digit else None
        size = t.shape[axis]
        if not isinstance(size, int):
            if digit is None:
                return None
            size = digit[1]
        dim = len(self.dims)
        if digit is not None and not isinstance(t.shape[axis], int):
            self.digits[dim] = digit
        self.dim_ids[key] = dim
        self.dims.append(key)
        self.sizes.append(size)
        self.offsets.append(self.offsets[-1] + size)
        self.queue.append(dim)
        if tensor in self.graph.outputs:
            self.blocks.append((dim, None, Reason(f"reaches the graph output '{tensor}'", "graph_output")))
        if tensor in self.graph.inputs:
            self.blocks.append((dim, None, Reason(f"reaches the graph input '{tensor}'", "graph_input")))
        return dim

    def _digit_of(self, tensor: str, axis: int, live_dim: int) -> tuple[int, int] | None:
        """The prunable digit of a symbolic axis: its own if live, else the live dimension's when
        both axes have the same symbolic size (identical axes carry identical digits)."""
        shape = self.graph.shape(tensor)
        if shape is None or isinstance(shape[axis], int):
            return None
        own = self.dim_ids.get((tensor, axis % len(shape)))
        if own is not None:
            return self.digits.get(own)
        live_tensor, live_axis = self.dims[live_dim]
        if live_dim in self.digits and Product.of(shape[axis]) == Product.of(self.graph.shape(live_tensor)[live_axis]):
            return self.digits[live_dim]
        return None

    def seed(self):
        for index, node in enumerate(self.graph.nodes):
            rule = rule_for(node)
            if rule is None:
                continue
            try:
                seeds = rule.seeds(NodeView(self.graph, index, self.carrier))
            except Unknown:
                continue
            for tensor, axis in seeds:
                shape = self.graph.shape(tensor)
                if shape is not None and isinstance(shape[axis], int) and shape[axis] > 1:
                    self.live(tensor, axis)

    def run(self):
        while self.queue:
            dim = self.queue.popleft()
            tensor, axis = self.dims[dim]
            t = self.graph.tensors[tensor]
            # A parameter is a leaf: the Constant or Identity node that provides it ties nothing,
            # and an Identity copy of it is a parameter of its own (see Graph.copies).
            producer = [] if t.producer is None or self.graph.is_param(tensor) else [t.producer]
            consumers = [i for i in t.consumers if self.graph.nodes[i].output[0] not in self.graph.copies]
            for index in producer + consumers:
                self.dim_nodes.setdefault(dim, set()).add(index)
                self.visit(index, dim, tensor, axis)

    def visit(self, index: int, dim: int, tensor: str, axis: int):
        node = self.graph.nodes[index]
        view = NodeView(self.graph, index, self.carrier)
        view.is_live = lambda t, a: (t, a % max(len(self.graph.shape(t) or ()), 1)) in self.dim_ids
        view.digit_of = lambda t, a: self._digit_of(t, a, dim)
        rule = rule_for(node)
        if rule is None:
            domain = f" (domain {node.domain})" if node.domain not in ("", "ai.onnx") else ""
            self.blocks.append((dim, None, Reason(f"reaches {node.op_type}{domain} '{view.name}', which has no pruning rule",
                                                  "no_rule")))
            return
        try:
            verdicts = list(rule.links(view, tensor, axis))
            targets = [self.live(v.tensor, v.axis, v.digit or self._digit_of(v.tensor, v.axis, dim))
                       if isinstance(v, Link) else None for v in verdicts]
        except Unknown as e:
            text = str(e) if f"'{view.name}'" in str(e) else f"{e} ({node.op_type} '{view.name}')"
            self.blocks.append((dim, None, Reason(text, getattr(e, "code", "other"))))
            return
        except (ArithmeticError, ValueError, TypeError, IndexError, KeyError) as e:
            # an attribute or shape the rule cannot make sense of (a group of 0, a size that does
            # not divide): the channels stay, whatever the operator does
            self.blocks.append((dim, None, Reason(f"{node.op_type} '{view.name}' has attributes or shapes SPA cannot read "
                                                  f"({type(e).__name__})", "bad_attributes")))
            return
        for verdict, target in zip(verdicts, targets):
            if isinstance(verdict, Link):
                if target is None:
                    self.blocks.append((dim, None, Reason(f"the size of axis {verdict.axis} of '{verdict.tensor}' is unknown",
                                                          "unknown_size")))
                    continue
                if len(verdict.dst) and (verdict.dst.max() >= self.sizes[target] or verdict.src.max() >= self.sizes[dim]):
                    # shapes that disagree with each other (a stale declaration): never guess
                    self.blocks.append((dim, None, Reason(f"{node.op_type} '{view.name}' sees sizes that disagree "
                                                          f"('{verdict.tensor}' axis {verdict.axis} against '{tensor}' "
                                                          f"axis {axis})", "shapes_disagree")))
                    continue
                self.edges.append((self.offsets[dim] + verdict.src, self.offsets[target] + verdict.dst))
                self.dim_nodes.setdefault(target, set()).add(index)
                self.node_ties.setdefault(index, set()).add((dim, target))
            elif isinstance(verdict, Block):
                self.blocks.append((dim, verdict.indices, Reason(verdict.reason, verdict.code)))
            elif isinstance(verdict, Approximate):
                self.approximations.append((dim, Reason(verdict.reason, verdict.code)))
            elif isinstance(verdict, Summed):
                self.sums.append((index, dim, Reason(verdict.reason, verdict.code)))
            elif isinstance(verdict, Role):
                self.roles.setdefault(dim, set()).add(verdict.name)
            elif isinstance(verdict, Requires):
                self.requirements.append((dim, verdict))

    def flag_sums_over_nonzero(self):
        """A sum over removed channels equals the zeroed original only if, once their parameters
        are zeroed, those channels are zero there (or a factor multiplying them is). Follow that
        forward through the graph and flag every other sum as approximate."""
        zero = {d: self.graph.is_param(t) for d, (t, _) in enumerate(self.dims)}
        for index in self.graph.topological_order():
            node = self.graph.nodes[index]
            ties = self.node_ties.get(index, ())
            outputs = {d for pair in ties for d in pair if self.dims[d][0] in node.output}
            for out in outputs:
                tied = {self.dims[d]: zero[d] for pair in ties if out in pair for d in pair
                        if d != out and self.dims[d][0] in node.input}
                zero[out] = rule_for(node).zero_output(NodeView(self.graph, index, self.carrier), *self.dims[out], tied)
        for index, dim, reason in self.sums:
            factors = {dim} | {d for pair in self.node_ties.get(index, ()) if dim in pair for d in pair
                               if self.dims[d][0] in self.graph.nodes[index].input}
            if not any(zero[d] for d in factors):
                self.approximations.append((dim, Reason(f"{reason}, which are not zero there", code_of(reason))))

    def keep(self, names):
        """Block every live dimension of the named tensors, or of the named nodes' inputs and outputs."""
        by_node = {n.name: n for n in self.graph.nodes if n.name}
        for name in names:
            if name in by_node:
                tensors = [t for t in list(by_node[name].input) + list(by_node[name].output) if t]
            elif name in self.graph.tensors:
                tensors = [name]
            else:
                raise SpaError(f"--keep {name}: no node or tensor of that name in the model")
            for (tensor, _), dim in self.dim_ids.items():
                if tensor in tensors:
                    self.blocks.append((dim, None, Reason(f"kept by --keep {name}", "kept")))

    # ----------------------------------------------------------------- from elements to groups
    def groups(self) -> list[Group]:
        total = self.offsets[-1]
        if total == 0:
            return []
        n_dims = len(self.dims)
        sizes = np.array(self.sizes)
        element_dim = np.repeat(np.arange(n_dims), sizes)
        element_index = np.arange(total) - np.repeat(np.array(self.offsets[:-1]), sizes)
        labels = self._components(total)
        self._check_requirements(labels)
        n_labels = int(labels.max()) + 1
        reasons = self._reasons_by_label(labels, self.blocks)
        approximate = self._reasons_by_label(labels, [(d, None, r) for d, r in self.approximations])
        label_group, n_groups = self._group_of_label(labels, element_dim, n_dims, n_labels, reasons, approximate)

        # Units of a group are numbered in the order of their first element.
        first_element = np.full(n_labels, total)
        np.minimum.at(first_element, labels, np.arange(total))
        ordered = np.lexsort((first_element, label_group))
        group_of_ordered = label_group[ordered]
        group_starts = np.searchsorted(group_of_ordered, np.arange(n_groups))
        unit_of_label = np.empty(n_labels, dtype=np.int64)
        unit_of_label[ordered] = np.arange(n_labels) - group_starts[group_of_ordered]
        units_per_group = np.bincount(label_group, minlength=n_groups)

        # One member per (group, dimension): its elements sorted by unit, then index.
        element_group = label_group[labels]
        element_unit = unit_of_label[labels]
        order = np.lexsort((element_index, element_unit, element_dim, element_group))
        segment_key = element_group[order] * n_dims + element_dim[order]
        bounds = np.flatnonzero(np.diff(segment_key)) + 1
        members: dict[int, list[Member]] = {g: [] for g in range(n_groups)}
        member_dims: dict[int, list[int]] = {g: [] for g in range(n_groups)}
        for s, e in zip(np.concatenate([[0], bounds]).tolist(), np.concatenate([bounds, [total]]).tolist()):
            g, dim = int(element_group[order[s]]), int(element_dim[order[s]])
            offsets = np.searchsorted(element_unit[order[s:e]], np.arange(units_per_group[g] + 1))
            tensor, axis = self.dims[dim]
            members[g].append(Member(tensor, axis, self.sizes[dim], self.graph.is_param(tensor),
                                     element_index[order[s:e]], offsets))
            member_dims[g].append(dim)

        groups = []
        for g in range(n_groups):
            if not any(m.is_param for m in members[g]):
                continue  # nothing to remove: e.g. channels a Pad adds, or input-side remnants
            label = int(ordered[group_starts[g]])
            operators = sorted({i for d in member_dims[g] for i in self.dim_nodes.get(d, ())})
            groups.append(Group(
                id=len(groups), units=int(units_per_group[g]), members=self._ordered(members[g]),
                blocked=list(reasons.get(label, ())), approximate=list(approximate.get(label, ())),
                operators=[f"{self.graph.nodes[i].op_type} '{self.graph.node_name(i)}'" for i in operators],
                kind=self._kind(member_dims[g], approximate.get(label, ())),
                layer=self._layer(members[g]),
            ))
        return groups

    def _layer(self, members: list[Member]) -> str:
        """The operator the group's channels belong to: the first that reads one of its weights
        and outputs one of its activations (a Conv, not the BatchNorm after it nor the next
        layer), else the first that reads one of its weights."""
        activations = {m.tensor for m in members if not m.is_param}
        readers = sorted({i for m in members if m.is_param for i in self.graph.tensors[m.tensor].consumers})
        producing = [i for i in readers if any(o in activations for o in self.graph.nodes[i].output)]
        chosen = (producing or readers or [None])[0]
        return "" if chosen is None else f"{self.graph.nodes[chosen].op_type} '{self.graph.node_name(chosen)}'"

    def _kind(self, dims: list[int], approximate) -> str:
        """heads (or head_dims, with the inner carrier) for attention, hidden for channels that a
        normalization runs over (a transformer's hidden size), channels for the rest."""
        if any("attention" in self.roles.get(d, ()) for d in dims):
            return "heads" if self.carrier == "outer" else "head_dims"
        return "hidden" if approximate else "channels"

    def _check_requirements(self, labels: np.ndarray):
        """Block each live dimension whose Requires does not hold: some index of the axis is not
        tied to the same index of every axis it lists."""
        for dim, need in self.requirements:
            target = self.dim_ids.get((need.tensor, need.axis % len(self.graph.shape(need.tensor))))
            others = [self.dim_ids.get((t, a % len(self.graph.shape(t)))) for t, a in need.others]
            ok = target is not None and all(
                d is not None and self.sizes[d] == self.sizes[target]
                and np.array_equal(labels[self.offsets[d]:self.offsets[d + 1]], labels[self.offsets[target]:self.offsets[target + 1]])
                for d in others)
            if not ok:
                self.blocks.append((dim, None, Reason(need.reason, need.code)))

    def _components(self, total: int) -> np.ndarray:
        """The connected component of every element under the ties."""
        if self.edges:
            src = np.concatenate([e[0] for e in self.edges])
            dst = np.concatenate([e[1] for e in self.edges])
        else:
            src = dst = np.zeros(0, dtype=np.int64)
        return connected_components(src, dst, total)

    def _group_of_label(self, labels, element_dim, n_dims, n_labels, reasons, approximate) -> tuple[np.ndarray, int]:
        """Units that run through the same dimensions, blocked or approximate for the same
        reasons, form one group. A unit's set of dimensions is summarized by a sum of random 64-bit
        weights, and the grouping is then checked exactly."""
        pairs = sorted_unique(labels.astype(np.int64) * n_dims + element_dim)  # (unit, dimension), once each
        pair_label, pair_dim = pairs // n_dims, pairs % n_dims
        weights = np.random.default_rng(0).integers(1, 2**63, n_dims, dtype=np.uint64)
        signature = np.zeros(n_labels, dtype=np.uint64)
        np.add.at(signature, pair_label, weights[pair_dim])
        dim_count = np.bincount(pair_label, minlength=n_labels)
        reason_ids = {r: i for i, r in enumerate(sorted(set(reasons.values()) | set(approximate.values())), start=1)}
        blocked_id, approximate_id = np.zeros(n_labels, dtype=np.uint64), np.zeros(n_labels, dtype=np.uint64)
        for label, r in reasons.items():
            blocked_id[label] = reason_ids[r]
        for label, r in approximate.items():
            approximate_id[label] = reason_ids[r]
        keys = np.stack([signature, dim_count.astype(np.uint64), blocked_id, approximate_id], axis=1)
        label_group, n_groups = _row_ids(keys)
        # Exact check: a group whose units share k dimensions has exactly k distinct dimensions.
        distinct = np.bincount(sorted_unique(label_group[pair_label] * n_dims + pair_dim) // n_dims, minlength=n_groups)
        first = np.full(n_groups, n_labels)
        np.minimum.at(first, label_group, np.arange(n_labels))
        if not np.array_equal(distinct, dim_count[first]):
            raise AssertionError("two different sets of dimensions had the same signature")
        return label_group, n_groups

    def _reasons_by_label(self, labels: np.ndarray, marks) -> dict[int, tuple[str, ...]]:
        found: dict[int, set[str]] = {}
        for dim, indices, reason in marks:
            start = self.offsets[dim]
            elements = start + (np.arange(self.sizes[dim]) if indices is None else np.asarray(indices))
            for label in sorted_unique(labels[elements]).tolist():
                found.setdefault(label, set()).add(reason)
        return {label: tuple(sorted(r)) for label, r in found.items()}

    def _ordered(self, members: list[Member]) -> list[Member]:
        """Parameters first, in the order the model lists them; then activations."""
        return sorted(members, key=lambda m: (not m.is_param, self.graph.param_position(m.tensor), m.tensor, m.axis))
