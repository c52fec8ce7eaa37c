"""Round-to auto, the default: channel counts at the multiples onnxruntime's kernels work in
(spa.hardware), the target winning where they conflict; round-to N forcing N; and the warning when
a pruned model runs no faster, naming the layers whose counts miss their multiple."""
from __future__ import annotations

import math

import onnx
import pytest

import spa
from models_zoo.torch_models import TORCH_ZOO
from spa.hardware import KERNEL_MULTIPLES, group_multiple, layer_kind, misaligned_layers
from spa.oracle import max_relative_error
from spa.targets import Selection, Target, check_round_to, kept_count

TOLERANCE = 1e-4
LANDING = 0.03


# ----------------------------------------------------------------------------- the rounding itself
@pytest.mark.parametrize("n, remove, multiple, kw, kept", [
    (64, 19, 16, {}, 48),                  # 45 wanted: 48 is nearest
    (64, 27, 16, {}, 32),                  # 37 wanted: 32 is nearest
    (64, 24, 16, {}, 32),                  # 40 wanted, a tie: the smaller (the target wins)
    (32, 9, 16, {}, 16),                   # 23 wanted: 16, never all 32 of a group asked to lose some
    (64, 3, 16, {}, 48),                   # its own class: one multiple goes when any is asked to
    (64, 3, 16, {"whole": True}, 64),      # among others in a class: keeping all is nearest
    (40, 12, 16, {}, 32),                  # a count that is no multiple: to a multiple below
    (16, 5, 16, {}, 16),                   # no multiple below: left whole
    (16, 5, 16, {"halve": True}, 8),       # ... unless halving: 8
    (8, 2, 16, {"halve": True}, 4),
    (3, 1, 16, {"halve": True}, 2),
    (64, 60, 16, {}, 16),                  # never to zero
    (64, 60, 16, {"least": 20}, 32),       # nor under the group's cap
    (10, 3, 1, {}, 7),                     # multiple 1: exactly as asked
    (16, 0, 8, {}, 16),                    # nothing asked: nothing goes
    (64, 19, 16, {"nearest": False}, 48),  # a given N: rounded up, never past the ratio
    (32, 9, 16, {"nearest": False}, 32),
    (16, 5, 16, {"nearest": False}, 16),
])
def test_kept_count(n, remove, multiple, kw, kept):
    assert kept_count(n, remove, multiple, **kw) == kept


@pytest.mark.parametrize("value, ok", [("auto", "auto"), (1, 1), (8, 8), (16.0, 16)])
def test_round_to_values(value, ok):
    assert check_round_to(value) == ok


@pytest.mark.parametrize("value", [0, -8, 1.5, "8", "nope", True, None])
def test_bad_round_to_is_refused(exports, value):
    with pytest.raises(spa.SpaError, match="round-to"):
        check_round_to(value)
    with pytest.raises(spa.SpaError, match="round-to"):
        spa.prune(exports.get("conv_chain", "dynamo"), ratio=0.3, round_to=value)


def test_auto_is_the_default():
    import inspect

    assert inspect.signature(spa.prune).parameters["round_to"].default == "auto"
    assert Selection(Target("ratio", 0.3)).round_to == "auto"
    from spa.cli import build_parser

    args = build_parser().parse_args(["prune", "m.onnx", "-o", "o.onnx"])
    assert args.round_to == "auto"
    assert build_parser().parse_args(["prune", "m.onnx", "-o", "o.onnx", "--round-to", "1"]).round_to == 1


# ----------------------------------------------------------------------------- the table
def test_each_group_gets_the_multiple_of_its_layers(exports):
    analysis = spa.analyze(exports.get("mobilenet_v2", "dynamo"))
    graph = analysis.graph
    kinds = {layer_kind(n) for n in graph.nodes} - {None}
    assert {"conv", "depthwise", "gemm"} <= kinds
    for g in analysis.prunable:
        ops = {layer_kind(graph.nodes[i]) for m in g.members for i in graph.tensors[m.tensor].consumers
               + ([graph.tensors[m.tensor].producer] if graph.tensors[m.tensor].producer is not None else [])}
        want = math.lcm(*[KERNEL_MULTIPLES[k] for k in ops if k]) if ops - {None} else 1
        assert group_multiple(g, graph) == want
    assert {group_multiple(g, graph) for g in analysis.prunable} >= {16}


def test_attention_heads_round_to_single_heads(exports):
    analysis = spa.analyze(exports.get("vit", "dynamo"))
    heads = [g for g in analysis.prunable if g.kind == "heads"]
    assert heads and all(group_multiple(g, analysis.graph) == 1 for g in heads)
    _, report = spa.prune(exports.get("vit", "dynamo"), ratio=0.5, head_ratio=0.5, hidden_ratio=0.0)
    pruned_heads = [ch for ch in report.channels if ch["kind"] == "heads"]
    assert pruned_heads and all(ch["after"] == ch["before"] - ch["before"] // 2 for ch in pruned_heads)


# ----------------------------------------------------------------------------- pruning with auto
def test_default_prune_keeps_multiples_and_stays_exact(exports):
    path = exports.get("mobilenet_v2", "dynamo")
    analysis = spa.analyze(path)
    pruned, report = spa.prune(path, ratio=0.3)
    assert report.round_to == "auto" and report.channels
    for ch in report.channels:
        multiple = group_multiple(analysis.groups[ch["group"]], analysis.graph)
        assert ch["after"] % multiple == 0 and ch["after"] < ch["before"], ch
        assert abs(ch["after"] - 0.7 * ch["before"]) <= multiple, ch  # the nearest multiple, or one below
    assert max_relative_error(path, pruned, report.removed) < TOLERANCE
    assert misaligned_layers(path, pruned) == []


@pytest.mark.parametrize("name", list(TORCH_ZOO))
def test_small_models_still_get_pruned(exports, name):
    """The zoo's layers have 4 to 128 channels: at the default round-to every model loses
    parameters at ratio 0.3 and 0.5 (groups too small for their multiple, when they are all
    the model has, take half of it)."""
    path = exports.get(name, "dynamo")
    for ratio in (0.3, 0.5):
        pruned, report = spa.prune(path, ratio=ratio)
        assert report.params_after < report.params_before, (name, ratio)
        if not report.approximate:
            assert max_relative_error(path, pruned, report.removed) < TOLERANCE


@pytest.mark.parametrize("name", ["conv_chain", "mobilenet_v2", "inception", "vgg"])
@pytest.mark.parametrize("scope", ["global", "local"])
def test_targets_land_with_auto(exports, name, scope):
    """Rounding never stops a FLOPs target from landing: whole multiples first, then halves of
    them, down to single channels."""
    path = exports.get(name, "dynamo")
    for fraction in (0.5, 0.7):
        _, report = spa.prune(path, target_flops=fraction, scope=scope)
        assert abs(report.flops_after / report.flops_before - fraction) <= LANDING * fraction, (fraction, report.flops_after / report.flops_before)


def test_a_given_multiple_is_kept_with_a_target(exports):
    path = exports.get("mobilenet_v2", "dynamo")
    _, report = spa.prune(path, target_flops=0.6, round_to=16)
    assert report.flops_after < report.flops_before
    assert all(ch["after"] % 16 == 0 or ch["after"] == ch["before"] for ch in report.channels)


def test_round_to_one_turns_rounding_off(exports):
    path = exports.get("resnet_basic", "dynamo")
    _, report = spa.prune(path, ratio=0.3, round_to=1)
    for ch in report.channels:
        assert ch["after"] == ch["before"] - math.floor(0.3 * ch["before"] + 1e-9)


# ----------------------------------------------------------------------------- never slower
def test_misaligned_layers_name_the_layers_most_flops_first(exports):
    path = exports.get("mobilenet_v2", "dynamo")
    pruned, _ = spa.prune(path, ratio=0.3, round_to=1)
    layers = misaligned_layers(path, pruned)
    assert layers
    names = {n.name for n in onnx.load(path).graph.node}
    assert all(layer["node"] in names and layer["op"] in ("Conv", "ConvTranspose") for layer in layers)
    assert [layer["flops"] for layer in layers] == sorted((layer["flops"] for layer in layers), reverse=True)
    for layer in layers:
        changed = [a for a, b in zip(layer["after"], layer["before"]) if a != b]
        assert any(c % layer["multiple"] for c in changed)


def test_a_slower_prune_says_so_and_names_the_layers():
    from spa.api import Report
    from spa.cli.prune import slower_warning

    report = Report(criterion="l1", ratio=0.3, scope="local", round_to=1, params_before=1, params_after=1,
                    flops_before=1, flops_after=1, size_before=1, size_after=1, groups_total=1,
                    groups_prunable=1, groups_pruned=1)
    report.latency = {"before": {"median_ms": 4.0}, "after": {"median_ms": 5.0}}
    layers = [{"node": f"conv{i}", "op": "Conv", "kind": "conv", "before": [32, 32], "after": [32, 22],
               "multiple": 16, "flops": 1000 - i} for i in range(7)]
    text = slower_warning(report, 1, layers)
    assert "SLOWER" in text and "conv0" in text and "conv4" in text and "conv5" not in text and "2 more" in text
    assert "--round-to" in text
    report.round_to = "auto"
    text = slower_warning(report, "auto", [])
    assert "SLOWER" in text and "prune more" in text
