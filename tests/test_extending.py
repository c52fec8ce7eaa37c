"""Extension points (README, *Extending SPA*): a user's operator rule for a custom-domain operator,
criteria as objects and callables, optimizers by registry or class, reason codes on every verdict
of every zoo, and readable groups."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa
import spa.rules
from spa.cli import main
from spa.criteria import (COMPENSATING, CRITERIA, Criterion, FunctionCriterion, ObspaCriterion, get_criterion,
                          member_arrays)
from spa.oracle import max_relative_error
from spa.reasons import OTHER, REASON_CODES, Reason, code_of
from spa.rules import Block, Link, Rule, Unary, rule_for, same

TOL = 1e-5
DOMAIN = "com.example"


# ----------------------------------------------------------------------------- a custom-domain model
def scaled_relu_model(path, channels: int = 8, seed: int = 0) -> str:
    """Conv -> com.example.ScaledRelu (alpha * relu(x), an ONNX local function onnxruntime runs)
    -> Conv -> output."""
    alpha = helper.make_node("Constant", [], ["alpha"])
    alpha.attribute.append(helper.make_attribute_ref("value_float", onnx.AttributeProto.FLOAT, ref_attr_name="alpha"))
    function = helper.make_function(DOMAIN, "ScaledRelu", ["x"], ["y"],
                                    [alpha, helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "alpha"], ["y"])],
                                    [helper.make_opsetid("", 17)], attributes=["alpha"])
    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in
               (("c1.W", (channels, 3, 3, 3)), ("c1.B", (channels,)), ("c2.W", (4, channels, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "c1.W", "c1.B"], ["h"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("ScaledRelu", ["h"], ["s"], name="act", domain=DOMAIN, alpha=0.5),
             helper.make_node("Conv", ["s", "c2.W"], ["y"], name="c2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 12, 12])], weights)
    model = helper.make_model(graph, functions=[function], ir_version=10,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    onnx.save(model, path)
    return str(path)


class ScaledRelu(Rule):
    def links(self, view, tensor, axis):
        x, y = view.inputs[0], view.outputs[0]
        return [same(y if tensor == x else x, axis, view.size(tensor, axis))]


class ShiftedScaledRelu(Rule):
    """A wrong rule: it ties channel c of x to channel c + 1 of y (wrapping around)."""

    def links(self, view, tensor, axis):
        x, y = view.inputs[0], view.outputs[0]
        n = view.size(tensor, axis)
        if axis != 1:
            return [same(y if tensor == x else x, axis, n)]
        idx = np.arange(n)
        return [Link(y, axis, idx, (idx + 1) % n)] if tensor == x else [Link(x, axis, (idx + 1) % n, idx)]


@pytest.fixture
def registered():
    """Register rules for the test, and take them out afterwards."""
    added = []

    def add(rule, op_type="ScaledRelu", domain=DOMAIN, **kw):
        spa.rules.register(op_type, domain=domain, **kw)(rule)
        added.append((op_type, domain))
        return rule

    yield add
    for op_type, domain in added:
        spa.rules.unregister(op_type, domain)


@pytest.fixture
def model(tmp_path):
    return scaled_relu_model(tmp_path / "scaled_relu.onnx")


# ----------------------------------------------------------------------------- operator rules
def test_a_custom_domain_operator_without_a_rule_blocks(model):
    group = next(g for g in spa.analyze(model).groups if g.layer == "Conv 'c1'")
    assert not group.prunable and group.blocked_codes == ["no_rule"]
    assert "ScaledRelu (domain com.example) 'act'" in group.blocked[0]


def test_a_user_rule_for_a_custom_domain_operator_prunes_exactly(model, registered):
    registered(ScaledRelu)
    analysis = spa.analyze(model)
    group = next(g for g in analysis.groups if g.layer == "Conv 'c1'")
    assert group.prunable and {(m.tensor, m.axis) for m in group.params} == {("c1.W", 0), ("c1.B", 0), ("c2.W", 1)}
    assert analysis.custom_operators == [{"node": "act", "op_type": "ScaledRelu", "domain": DOMAIN,
                                          "rule": f"{__name__}.ScaledRelu"}]
    pruned, report = spa.prune(model, ratio=0.5)
    assert [c["after"] for c in report.channels] == [4]
    assert [tuple(t.dims) for t in pruned.graph.initializer if t.name == "c2.W"] == [(4, 4, 3, 3)]
    assert max_relative_error(model, pruned, report.removed) < TOL


def test_the_zeroing_oracle_catches_a_wrong_rule(model, registered):
    registered(ShiftedScaledRelu)
    pruned, report = spa.prune(model, ratio=0.5, round_to=1)
    assert max_relative_error(model, pruned, report.removed) > 1e-2


def test_a_rule_instance_registers_and_the_default_domain_has_two_names(model, registered):
    registered(Unary(), op_type="ScaledRelu")  # an instance of SPA's own element-wise rule
    assert spa.analyze(model).prunable
    node = helper.make_node("ScaledRelu", ["a"], ["b"], domain=DOMAIN)
    assert isinstance(rule_for(node), Unary)
    relu = rule_for(helper.make_node("Relu", ["a"], ["b"]))
    assert rule_for(helper.make_node("Relu", ["a"], ["b"], domain="ai.onnx")) is relu


def test_registering_twice_raises_unless_replaced_and_unregister_restores(registered):
    registered(ScaledRelu)
    with pytest.raises(ValueError, match="two rules for com.example.ScaledRelu"):
        spa.rules.register("ScaledRelu", domain=DOMAIN)(ScaledRelu)
    registered(ShiftedScaledRelu, replace=True)
    assert isinstance(rule_for(helper.make_node("ScaledRelu", ["a"], ["b"], domain=DOMAIN)), ShiftedScaledRelu)
    builtin = rule_for(helper.make_node("Relu", ["a"], ["b"]))
    with pytest.raises(ValueError, match="two rules for Relu"):
        spa.rules.register("Relu")(ScaledRelu)
    registered(ScaledRelu, op_type="Relu", domain="", replace=True)  # a user's rule in place of SPA's
    assert isinstance(rule_for(helper.make_node("Relu", ["a"], ["b"])), ScaledRelu)
    spa.rules.unregister("Relu")
    assert rule_for(helper.make_node("Relu", ["a"], ["b"])) is builtin
    with pytest.raises(TypeError):
        spa.rules.register("Other", domain=DOMAIN)(object())
    assert "com.example.ScaledRelu" in spa.rules.supported_operators(domain=None)


def test_spa_analyze_names_the_rule_of_each_custom_node(model, registered, capsys, tmp_path):
    assert main(["analyze", model]) == 0
    assert "com.example.ScaledRelu 'act': no rule" in capsys.readouterr().out
    registered(ScaledRelu)
    assert main(["analyze", model, "-v", "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert f"com.example.ScaledRelu 'act': rule {__name__}.ScaledRelu" in out
    assert json.loads((tmp_path / "a.json").read_text())["custom_operators"][0]["rule"] == f"{__name__}.ScaledRelu"


def test_the_rule_docstring_example_runs(model):
    import textwrap

    doc = Rule.__doc__
    code = textwrap.dedent(doc[doc.index("        import spa.rules"):doc.index("    Registered before")])
    try:
        exec(code, {})
        pruned, report = spa.prune(model, ratio=0.5)
        assert report.groups_pruned == 1 and max_relative_error(model, pruned, report.removed) < TOL
    finally:
        spa.rules.unregister("ScaledRelu", DOMAIN)


def test_a_block_without_a_code_is_other(model, registered):
    class Blocking(Rule):
        def links(self, view, tensor, axis):
            return [Block("my operator mixes channels")]

    registered(Blocking)
    group = next(g for g in spa.analyze(model).groups if g.layer == "Conv 'c1'")
    assert list(zip(group.blocked_codes, group.blocked)) == [(OTHER, "my operator mixes channels")]


# ----------------------------------------------------------------------------- criteria
def first_conv_removed(report) -> list[int]:
    return next(r["indices"] for r in report.removed if r["tensor"] == "c1.W" and r["axis"] == 0)


@pytest.fixture
def relu_model(tmp_path):
    """The same model with a plain Relu: every criterion can prune it."""
    path = scaled_relu_model(tmp_path / "relu.onnx", channels=8, seed=3)
    m = onnx.load(path)
    m.graph.node[1].op_type, m.graph.node[1].domain = "Relu", ""
    del m.graph.node[1].attribute[:]
    onnx.save(m, path)
    return path


def test_a_plain_callable_chooses_the_channels(relu_model):
    seen = []

    def by_position(arrays):  # keeps the last channels: the first ones go
        seen.append([a.shape for a in arrays])
        return np.arange(len(arrays[0]), dtype=float)

    _, l1 = spa.prune(relu_model, ratio=0.5, round_to=1)
    pruned, report = spa.prune(relu_model, ratio=0.5, round_to=1, criterion=by_position)
    assert seen == [[(8, 27), (8, 1), (8, 36)]]  # c1.W, c1.B, c2.W: one row per channel
    assert first_conv_removed(report) == [0, 1, 2, 3] != first_conv_removed(l1)
    assert report.criterion == "by_position"
    assert max_relative_error(relu_model, pruned, report.removed) < TOL


def test_a_criterion_object_chooses_the_channels(relu_model):
    class Reversed(Criterion):  # keeps the first channels: the last ones go
        name = "reversed"

        def scores(self, analysis, groups, context):
            return {g.id: -np.arange(g.units, dtype=float) for g in groups}

    _, l1 = spa.prune(relu_model, ratio=0.5, round_to=1)
    for criterion in (Reversed(), Reversed):  # an instance, or the class
        pruned, report = spa.prune(relu_model, ratio=0.5, round_to=1, criterion=criterion)
        assert first_conv_removed(report) == [4, 5, 6, 7] != first_conv_removed(l1)
        assert report.criterion == "reversed"
        assert max_relative_error(relu_model, pruned, report.removed) < TOL


def test_member_arrays_hold_each_channels_slices(relu_model):
    analysis = spa.analyze(relu_model)
    group = analysis.prunable[0]
    arrays = member_arrays(group, analysis.graph)
    w2 = analysis.graph.value("c2.W")
    np.testing.assert_array_equal(arrays[2][5], w2[:, 5].ravel())


def test_bad_criteria_are_refused(relu_model):
    with pytest.raises(spa.SpaError, match="must return 8 finite scores"):
        spa.prune(relu_model, ratio=0.5, criterion=lambda arrays: np.ones(3))
    with pytest.raises(spa.SpaError, match="unknown criterion 'nonsense'.*obspa"):
        spa.prune(relu_model, ratio=0.5, criterion="nonsense")
    with pytest.raises(spa.SpaError, match="a criterion is a name"):
        spa.prune(relu_model, ratio=0.5, criterion=42)
    with pytest.raises(spa.SpaError, match="unknown aggregation"):
        spa.prune(relu_model, ratio=0.5, criterion=lambda arrays: arrays[0][:, 0], aggregate="median")


def test_a_compensating_criterion_gives_new_weights_through_one_protocol(relu_model):
    class Halving(Criterion):
        """Ranks like l1 and halves the next layer's weight: compensation of a kind."""

        name = "halving"
        compensates = True

        def scores(self, analysis, groups, context):
            context.state["closed"] = Closer()
            return CRITERIA["l1"].scores(analysis, groups, context)

        def compensation(self, analysis, chosen, context):
            context.notes.append("halved c2.W")
            return {"c2.W": analysis.graph.value("c2.W") / 2}

    class Closer:
        closed = False

        def close(self):
            Closer.closed = True

    pruned, report = spa.prune(relu_model, ratio=0.5, criterion=Halving())
    removed = first_conv_removed(report)
    kept = [c for c in range(8) if c not in removed]
    new = numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == "c2.W"))
    np.testing.assert_allclose(new, onnx.numpy_helper.to_array(
        next(t for t in onnx.load(relu_model).graph.initializer if t.name == "c2.W"))[:, kept] / 2)
    assert "halved c2.W" in report.notes and Closer.closed
    with pytest.raises(spa.SpaError, match="--criterion halving prunes in one step"):
        spa.prune(relu_model, ratio=0.5, criterion=Halving(), steps=2)
    with pytest.raises(spa.SpaError, match="--criterion obspa prunes in one step"):
        spa.prune(relu_model, ratio=0.5, criterion="obspa", steps=2)


def test_the_built_in_criteria_are_criteria():
    assert all(isinstance(c, Criterion) for c in [*CRITERIA.values(), *COMPENSATING.values()])
    assert isinstance(get_criterion("obspa"), ObspaCriterion) and get_criterion("obspa").compensates
    assert get_criterion("l1") is CRITERIA["l1"] and not CRITERIA["l1"].uses_data and CRITERIA["taylor"].uses_data
    assert isinstance(get_criterion(np.sum), FunctionCriterion)


# ----------------------------------------------------------------------------- optimizers
@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    import torch

    from frontends.torch import export
    from models_zoo import digits

    return export(digits.build("mlp"), torch.zeros(2, 1, 8, 8), tmp_path_factory.mktemp("mlp") / "mlp.onnx",
                  training=True)


@pytest.fixture(scope="module")
def digits_data():
    from models_zoo import digits

    data = digits.load(0)
    return {"input": data.x_train[:384], "labels": data.y_train[:384]}


def magnitude_optimizer():
    import torch

    from spa.train import GroupSparseOptimizer

    class Magnitude(GroupSparseOptimizer):
        """From start_step on, the groups of smallest norm go to zero (within the target)."""

        name = "magnitude"

        def update_rows(self, xs, norms, ds, trials, lrs):
            if self.steps > self.start_step:
                threshold = torch.quantile(torch.cat(norms), self.target_sparsity)
                small = [(norm > 0) & (norm <= threshold) for norm in norms]
                self.project(xs, norms, trials, small, self.budget(self.target_sparsity, norms))
            return trials

    return Magnitude


def test_a_user_optimizer_class_trains_and_prunes(mlp, digits_data):
    from spa.train import train

    pruned, report = train(mlp, digits_data, optimizer=magnitude_optimizer(), target_sparsity=0.5, epochs=2,
                           log=None)
    assert report.optimizer == "magnitude"
    assert report.group_sparsity == pytest.approx(0.5, abs=0.02)
    assert report.max_relative_error <= 1e-5 and report.params_after < 0.7 * report.params_before


def test_optimizers_are_looked_up_in_one_table(mlp, digits_data):
    import spa.train as training

    assert set(training.OPTIMIZERS) >= {"dhspg", "hspg"}
    assert all(issubclass(c, training.GroupSparseOptimizer) for c in training.OPTIMIZERS.values())
    Magnitude = magnitude_optimizer()
    try:
        training.register_optimizer()(Magnitude)
        assert training.get_optimizer("magnitude") == ("magnitude", Magnitude)
        with pytest.raises(ValueError, match="registered already"):
            training.register_optimizer()(magnitude_optimizer())
    finally:
        training.OPTIMIZERS.pop("magnitude", None)
    with pytest.raises(spa.SpaError, match="unknown optimizer 'adamw'"):
        training.train(mlp, digits_data, optimizer="adamw", log=None)
    with pytest.raises(spa.SpaError, match="GroupSparseOptimizer"):
        training.train(mlp, digits_data, optimizer=dict, log=None)


def test_target_flops_without_the_flops_model_is_refused_not_ignored(mlp, digits_data):
    import torch

    from spa.train import DHSPG, HSPG

    weight = torch.nn.Parameter(torch.ones(3, 2))
    groups = [[(weight, 0, [row])] for row in range(3)]
    for cls in (DHSPG, HSPG, magnitude_optimizer()):
        with pytest.raises(spa.SpaError, match="target_flops needs the groups' FLOPs model"):
            cls([weight], groups, lr=0.1, target_flops=0.5)
    assert HSPG([weight], groups, lr=0.1, target_sparsity=0.3).max_sparsity == 0.3  # the same target argument


# ----------------------------------------------------------------------------- reason codes on the zoos
def assert_every_reason_has_a_known_code(analysis, where: str):
    for g in analysis.groups:
        for text, code in [*zip(g.blocked, g.blocked_codes), *zip(g.approximate, g.approximate_codes)]:
            assert code in REASON_CODES and code != OTHER, f"{where}, group {g.id}: {code!r} for {text!r}"
    d = analysis.to_dict()
    assert all(len(g["blocked"]) == len(g["blocked_codes"]) for g in d["groups"])
    assert sum(v["blocked"] for v in d["reasons"].values()) >= len(analysis.blocked)


def torch_zoo_cases():
    from models_zoo.torch_models import TORCH_ZOO

    return [pytest.param(name, exporter, id=f"{name}-{exporter}") for name in TORCH_ZOO
            for exporter in ("dynamo", "torchscript")]


@pytest.mark.parametrize("name, exporter", torch_zoo_cases())
def test_reason_codes_torch_zoo(exports, name, exporter):
    path = exports.get(name, exporter)
    assert_every_reason_has_a_known_code(spa.analyze(path), f"{name} ({exporter})")
    assert_every_reason_has_a_known_code(spa.analyze(path, carrier="inner"), f"{name} ({exporter}, inner)")


def transformer_cases():
    from models_zoo.transformer_models import TRANSFORMER_ZOO

    cases = []
    for name, entry in TRANSFORMER_ZOO.items():
        marks = [pytest.mark.slow, pytest.mark.skipif(not _has("transformers"), reason="transformers is not installed")] \
            if entry.hf else []
        cases += [pytest.param(name, exporter, id=f"{name}-{exporter}", marks=marks) for exporter in entry.exporters]
    return cases


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.filterwarnings("ignore:Exporting aten..index operator:UserWarning")
@pytest.mark.parametrize("name, exporter", transformer_cases())
def test_reason_codes_transformer_zoo(tmp_path, name, exporter):
    from models_zoo.transformer_models import export_transformer

    path = export_transformer(name, tmp_path / "model.onnx", exporter=exporter)
    for carrier in ("outer", "inner"):
        assert_every_reason_has_a_known_code(spa.analyze(path, carrier=carrier), f"{name} ({exporter}, {carrier})")


def wild_names():
    from models_zoo.wild import WILD_ZOO

    return list(WILD_ZOO)


@pytest.mark.parametrize("name", wild_names())
def test_reason_codes_wild_zoo(tmp_path, name):
    from models_zoo.wild import WILD_ZOO

    path = WILD_ZOO[name].write(tmp_path / f"{name}.onnx")
    analysis = spa.analyze(path)
    assert_every_reason_has_a_known_code(analysis, name)
    kept = spa.analyze(path, keep=[analysis.graph.nodes[0].name or analysis.graph.nodes[0].output[0]])
    assert_every_reason_has_a_known_code(kept, f"{name} with --keep")
    assert any("kept" in g.blocked_codes for g in kept.groups)


def test_codes_in_the_json_and_the_report(model, tmp_path, capsys):
    assert main(["analyze", model, "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "reasons by code" in out and "[no_rule]" in out
    data = json.loads((tmp_path / "a.json").read_text())
    assert {c for g in data["groups"] for c in g["blocked_codes"]} == {"no_rule", "graph_output"}
    assert data["reasons"]["no_rule"]["blocked"] == 1
    _, report = spa.prune(model, ratio=0.5, check=False)
    assert sorted(c for b in report.blocked for c in b["codes"]) == ["graph_output", "no_rule"]
    assert all(isinstance(r, str) for b in report.to_dict()["blocked"] for r in b["reasons"])


def test_a_reason_is_its_text_with_a_code():
    r = Reason("reaches the graph output 'y'", "graph_output")
    assert r == "reaches the graph output 'y'" and "graph output" in r and code_of(r) == "graph_output"
    assert code_of("plain text") == OTHER
    import copy
    import pickle

    assert code_of(pickle.loads(pickle.dumps(r))) == "graph_output" and code_of(copy.deepcopy(r)) == "graph_output"
    assert json.dumps([r]) == '["reaches the graph output \'y\'"]'


# ----------------------------------------------------------------------------- readable groups
def test_print_group_is_its_description_and_verbose_lists_every_member(relu_model, capsys):
    analysis = spa.analyze(relu_model)
    group = analysis.prunable[0]
    print(group)
    assert capsys.readouterr().out.strip() == group.describe()
    assert group.describe().startswith("group 0: 8 channels of Conv 'c1', prunable")
    verbose = group.describe(verbose=True)
    assert "param c1.W[axis 0], 8 of 8: 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7" in verbose
    assert "activation h[axis 1], 8 of 8:" in verbose and "activation s[axis 1], 8 of 8:" in verbose
    blocked = next(g for g in analysis.groups if g.blocked)
    assert "blocked [graph_output]: reaches the graph output 'y'" in blocked.describe(verbose=True)


def test_groups_carry_their_parameters_and_flops_share(relu_model, capsys):
    analysis = spa.analyze(relu_model)
    costs = analysis.costs()
    first = analysis.prunable[0]
    assert first.cost["params"] == 8 * 27 + 8 + 4 * 8 * 9  # c1.W, c1.B and c2.W's input columns
    total = 12 * 12 * (8 * 27 + 4 * 8 * 9)  # both Convs, batch 1
    assert first.cost["flops"] == total  # removing every channel removes both convs' work on them
    second = next(g for g in analysis.groups if g.layer == "Conv 'c2'")
    assert costs[second.id] == second.cost and second.cost["flops_share"] == pytest.approx(12 * 12 * 4 * 8 * 9 / total)
    assert main(["analyze", relu_model]) == 0
    out = capsys.readouterr().out
    assert "layer" in out and "Conv 'c1'" in out and "100.0%" in out


def test_the_layer_is_the_node_not_a_bias(exports):
    analysis = spa.analyze(exports.get("resnet_basic", "dynamo", training=True))
    for g in analysis.prunable:
        assert g.layer.split(" ")[0] in {"Conv", "Gemm", "MatMul"}, (g.layer, g.describe())
