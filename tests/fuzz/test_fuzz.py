"""Property-based fuzzing of SPA on random ONNX models (graphs.py draws them).

The property (test_prune_property), for a drawn model and drawn prune settings (ratio 0..0.9, scope,
round-to 1/2/4, criterion l1/l2/random, exact, reshape carrier, and also steps 1..3 and a second
prune of the pruned model): `spa.prune` either refuses with a one-line `spa.SpaError`, or
- the input model is left untouched;
- the pruned model passes the full ONNX check (strict shape inference included) and runs in
  onnxruntime with the original's input and output names and output shape, with a finite output;
- when no approximate group was pruned, it passes the zeroing oracle (relative error < 1e-4);
  with exact=True no approximate group is pruned;
- parameters did not grow (the report's count and the float parameters' elements), nothing was
  removed at ratio 0, and every `report.removed` entry names a parameter of the input model, an
  axis of it, sorted unique indices inside that axis, not all of them, and the pruned tensor has
  exactly that many fewer entries there (parameters not listed keep their shape);
- each pruned group keeps at least one unit and, with round-to N, a multiple of N channels (a
  unit can be several: a head, a slice of a channel shuffle); in global scope it loses at most
  90% (max_ratio); in local scope exactly the prunable groups lose exactly floor(r * n) units,
  fewer where needed to keep that multiple (approximate ones left whole with exact);
- the pruned model satisfies the analysis invariants and passes the same checks when pruned again.

Analysis invariants (test_analysis_invariants, and on every pruned model): `spa.analyze` gives the
same groups twice (and in another process with another PYTHONHASHSEED:
test_analysis_is_the_same_in_other_processes); within a group the units partition each member's
indices (no index in two units, all inside the axis, every unit non-empty); no element of a
dimension is in two groups; every group has a parameter member whose size is the parameter's; a
prunable group is unblocked with 2+ units.

Profiles: CI runs a bounded, derandomized number of examples (`ci`, the default: 200 per property,
about 15 s); the `long` profile draws 2000 per property, with new examples every run:

    HYPOTHESIS_PROFILE=long python -m pytest -q tests/fuzz
    HYPOTHESIS_PROFILE=long python -m pytest -q tests/fuzz --hypothesis-show-statistics  # events: refusals

A failure prints the drawn recipe (`Drawn(...)`) and a `@reproduce_failure` blob.

Examples that found bugs in SPA are kept at the end as explicit regression tests (graphs built by
hand with graphs.Net); the ones not fixed yet are marked xfail(strict=True), and the structures
that trigger them are kept out of the properties (OPEN_BUG_FEATURES, OPEN_BUG_ERRORS) so that the
fuzzer goes on finding new ones: when a bug is fixed, remove its xfail and its entry there.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, Phase, event, given, note, reject, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from onnx import numpy_helper

import spa
from spa.oracle import max_relative_error


def _load_graphs():
    """graphs.py next to this file, under a name of its own: tests/rules has a graphs.py too, and
    whichever a run imports first as `graphs` would hide the other."""
    name = "spa_fuzz_graphs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), "graphs.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_graphs = _load_graphs()
Drawn, Net, check_valid, models = _graphs.Drawn, _graphs.Net, _graphs.check_valid, _graphs.models

TOL = 1e-4
_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=_SUPPRESSED)
settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True, suppress_health_check=_SUPPRESSED)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Open bugs, each with an xfail regression test below, kept out of the properties so that they keep
# finding new ones: drop an entry when its bug is fixed and its xfail removed.
# - features the generator leaves out (graphs.FEATURES):
OPEN_BUG_FEATURES = {
}
# - internal errors (AssertionError) whose message holds one of these: the example is discarded
#   (hypothesis.reject):
OPEN_BUG_ERRORS = {
}
AVOID = frozenset(OPEN_BUG_FEATURES)


def known_bug(error: Exception) -> bool:
    return isinstance(error, AssertionError) and any(k in str(error) for k in OPEN_BUG_ERRORS)


SETTINGS = st.fixed_dictionaries({
    # mostly ratios that remove something from small groups; sometimes any ratio, 0 or 0.5
    "ratio": st.integers(0, 9).flatmap(lambda i: st.floats(0.4, 0.9) if i < 6 else st.just(0.5) if i == 6
                                       else st.floats(0.0, 0.9) if i < 9 else st.just(0.0)),
    "scope": st.sampled_from(["local", "global"]),
    "round_to": st.sampled_from([1, 1, 2, 4]),
    "criterion": st.sampled_from(["l1", "l2", "random"]),
    "exact": st.booleans(),
    "carrier": st.sampled_from(["outer", "inner"]),
    "steps": st.sampled_from([1, 1, 2, 3]),
    "again": st.booleans(),
})


# ============================================================================ the checks
def run_model(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    return y


def parameters(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers, Constant node values and Identity copies of either, by name."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def float_params(model: onnx.ModelProto) -> int:
    """Float parameter elements (an Identity copy shares its source's)."""
    copies = {n.output[0] for n in model.graph.node if n.op_type == "Identity"}
    return sum(v.size for name, v in parameters(model).items() if v.dtype.kind == "f" and name not in copies)


def analysis_signature(analysis) -> list:
    return [(g.to_dict(), [(m.tensor, m.axis, m.indices.tolist(), m.offsets.tolist()) for m in g.members])
            for g in analysis.groups]


def check_analysis(model: onnx.ModelProto, carrier: str = "outer"):
    first = spa.analyze(model, carrier=carrier)
    copy = onnx.ModelProto()
    copy.ParseFromString(model.SerializeToString())
    second = spa.analyze(copy, carrier=carrier)
    assert analysis_signature(first) == analysis_signature(second), "spa.analyze is not deterministic"
    values = parameters(model)
    owner: dict[tuple[str, int, int], int] = {}
    for g in first.groups:
        assert g.params, f"group {g.id} has no parameter member"
        for m in g.params:
            assert m.tensor in values and m.size == values[m.tensor].shape[m.axis], (g.id, m.tensor, m.axis, m.size)
        if g.prunable:
            assert not g.blocked and g.units > 1
        reached = np.zeros(g.units, dtype=bool)
        for m in g.members:
            offsets = np.asarray(m.offsets)
            assert len(offsets) == g.units + 1 and offsets[0] == 0 and offsets[-1] == len(m.indices), (g.id, m.tensor)
            assert np.all(np.diff(offsets) >= 0), (g.id, m.tensor)
            reached |= np.diff(offsets) > 0
            idx = np.asarray(m.indices)
            assert len(np.unique(idx)) == len(idx), f"group {g.id}: an index of {m.tensor}[{m.axis}] is in two units"
            assert len(idx) == 0 or (idx.min() >= 0 and idx.max() < m.size), (g.id, m.tensor, m.axis)
            for i in idx.tolist():
                key = (m.tensor, m.axis, i)
                assert owner.setdefault(key, g.id) == g.id, f"{key} is in groups {owner[key]} and {g.id}"
        assert reached.all(), f"group {g.id} has a unit with no element"
    return first


def record(message: str):
    """A hypothesis event (shown by --hypothesis-show-statistics), inside a property only."""
    try:
        event(message)
    except InvalidArgument:
        pass


def unit_width(group) -> int:
    """Channels per unit: the fewest indices a unit owns along any of the group's parameters."""
    return min(len(m.unit(u)) for m in group.params for u in range(group.units))


def rounded_kept(n: int, remove: int, round_to: int, width: int) -> int:
    """Units kept of n when `remove` are asked to go: the fewest whose channels are a multiple of
    round_to, or all n."""
    kept = max(n - remove, 1)
    while kept < n and kept * width % round_to:
        kept += 1
    return kept


def check_prune(drawn: Drawn, ratio: float, scope: str, round_to: int, criterion: str, exact: bool, carrier: str,
                steps: int = 1, again: bool = False):
    """The property (see the module doc); returns the report, or None for a clean refusal.
    `again`: then analyze the pruned model and prune it once more (at ratio 0.5), with the same checks."""
    model = drawn.model
    frozen = model.SerializeToString()
    try:
        pruned, report = spa.prune(model, ratio=ratio, scope=scope, round_to=round_to, criterion=criterion,
                                   exact=exact, carrier=carrier, steps=steps)
    except spa.SpaError as e:
        message = str(e)
        assert message and "\n" not in message, f"SpaError message is not one line: {message!r}"
        record(f"refused: {message.split(':')[0][:80]}")
        return None
    assert model.SerializeToString() == frozen, "spa.prune changed its input model"

    # The pruned model is valid and computes outputs of the original's shapes.
    onnx.checker.check_model(pruned, full_check=True)
    assert [i.name for i in pruned.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want, got = run_model(model, x), run_model(pruned, x)
    assert got.shape == want.shape, f"output shape {got.shape}, not {want.shape}"
    assert np.all(np.isfinite(got))

    # What was removed is what the report says.
    originals = parameters(model)
    after = {name: v.shape for name, v in parameters(pruned).items()}
    seen = set()
    expected_shape = {name: list(v.shape) for name, v in originals.items()}
    for entry in report.removed:
        name, axis, indices = entry["tensor"], entry["axis"], entry["indices"]
        assert name in originals, f"removed '{name}' is not a parameter of the input model"
        assert (name, axis) not in seen, f"({name}, {axis}) is listed twice"
        seen.add((name, axis))
        dims = originals[name].shape
        assert 0 <= axis < len(dims), f"{name}: axis {axis} outside rank {len(dims)}"
        assert indices, f"{name}[{axis}]: empty indices"
        assert indices == sorted(set(indices)), f"{name}[{axis}]: indices not sorted and unique"
        assert 0 <= indices[0] and indices[-1] < dims[axis], f"{name}[{axis}]: index outside 0..{dims[axis] - 1}"
        assert len(indices) < dims[axis], f"{name}[{axis}]: every index removed"
        expected_shape[name][axis] -= len(indices)
    for name, shape_ in expected_shape.items():
        if name in after:
            assert after[name] == tuple(shape_), f"{name}: pruned shape {after[name]}, expected {tuple(shape_)}"
        else:  # gone: pruned and rewritten, a shape constant folded, or the source of a pruned copy
            copies = {n.output[0] for n in model.graph.node if n.op_type == "Identity" and n.input[0] == name}
            assert any(e["tensor"] in {name} | copies for e in report.removed) or originals[name].dtype == np.int64, \
                f"parameter {name} vanished"
    if ratio == 0:
        assert not report.removed, "ratio 0 removed channels"

    # Parameters do not grow.
    assert report.params_after <= report.params_before
    assert float_params(pruned) <= float_params(model)

    # Channel counts per pruned group: local scope removes floor(ratio * n) of every prunable group
    # (rounded so that the channels kept are a multiple of round_to: a unit of a channel shuffle
    # or a head is several channels), global scope no more than floor(max_ratio * n).
    analysis = spa.analyze(model, carrier=carrier)
    for c in report.channels:
        before, left = c["before"], c["after"]
        assert 1 <= left < before, c
        if round_to > 1:
            channels = left * unit_width(analysis.groups[c["group"]])
            assert channels % round_to == 0, f"round-to {round_to}: group {c['group']} keeps {channels} channels"
        if steps == 1 and scope == "global":
            assert before - left <= math.floor(0.9 * before + 1e-9), f"group {c['group']} lost more than 90%: {c}"
    if steps == 1 and scope == "local":
        want = {g.id: rounded_kept(g.units, min(math.floor(ratio * g.units + 1e-9), g.units - 1), round_to, unit_width(g))
                for g in analysis.prunable if not (exact and g.approximate)}
        want = {g: left for g, left in want.items() if left < analysis.groups[g].units}
        assert {c["group"]: c["after"] for c in report.channels} == want, f"ratio {ratio}: {report.channels}"

    # Exactness.
    if exact:
        assert not report.approximate, "exact=True pruned an approximate group"
    if report.removed and not report.approximate:
        error = max_relative_error(model, pruned, report.removed)
        assert error < TOL, f"zeroing oracle: relative error {error:.3g}"
    record("pruned" if report.removed else "nothing removed")
    record("approximate" if report.approximate else "exact")
    if again and report.removed:
        check_analysis(pruned, carrier)
        check_prune(Drawn(pruned, drawn.opset, drawn.seed, drawn.recipe + ["(pruned once)"]), 0.5, scope, round_to,
                    criterion, exact, carrier)
    return report


# ============================================================================ the properties
@PROFILE
@given(drawn=models(avoid=AVOID), carrier=st.sampled_from(["outer", "inner"]))
def test_analysis_invariants(drawn, carrier):
    try:
        analysis = check_analysis(drawn.model, carrier)
    except AssertionError as e:
        if known_bug(e):
            reject()
        raise
    event(f"groups prunable: {min(len(analysis.prunable), 5)}{'+' if len(analysis.prunable) >= 5 else ''}")


@PROFILE
@given(drawn=models(avoid=AVOID), options=SETTINGS)
def test_prune_property(drawn, options):
    note(repr(drawn))
    try:
        check_prune(drawn, **options)
    except AssertionError as e:
        if known_bug(e):
            reject()
        raise


def drawn_models(count: int) -> list[onnx.ModelProto]:
    """The first `count` models the generator draws (derandomized: the same ones every run)."""
    found = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=_SUPPRESSED)
    @given(drawn=models(avoid=AVOID))
    def collect(drawn):
        found.append(drawn.model)

    collect()
    return found


_SIGNATURES = """
import glob, json, sys
import onnx, spa

def analysis_signature(analysis):  # as in test_fuzz.py
    return [(g.to_dict(), [(m.tensor, m.axis, m.indices.tolist(), m.offsets.tolist()) for m in g.members])
            for g in analysis.groups]

out = []
for path in sorted(glob.glob(sys.argv[1] + "/*.onnx")):
    out.append([analysis_signature(spa.analyze(onnx.load(path), carrier=c)) for c in ("outer", "inner")])
print(json.dumps(out))
"""


def test_analysis_is_the_same_in_other_processes(tmp_path):
    """spa.analyze does not depend on string hashing (sets of names iterate in another order with
    another PYTHONHASHSEED): the groups are the same in two processes with different seeds."""
    for i, model in enumerate(drawn_models(30)):
        onnx.save(model, str(tmp_path / f"m{i:03d}.onnx"))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    runs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run([sys.executable, "-c", _SIGNATURES, str(tmp_path)],
                              capture_output=True, text=True, env=env, cwd=root, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs[0] == runs[1], "spa.analyze gives other groups with another PYTHONHASHSEED"


# ============================================================================ regressions
def build(net: Net, output: str) -> Drawn:
    model = net.model(output)
    check_valid(model, net)
    return Drawn(model, net.opset, 0, net.recipe, net.shape(output))


def test_identity_copy_of_a_weight_does_not_leave_its_source_behind():
    """Regression: pruning an Identity copy of a weight kept the copy's full-size source
    initializer in the model, unread: parameters grew."""
    net = Net(17, 0)
    x = net.input((2, 4, 5, 5))
    w = net.op("Identity", [net.array(net.rng.standard_normal((8, 4, 1, 1)), "w")], (8, 4, 1, 1))
    h = net.op("Relu", [net.op("Conv", [x, w], (2, 8, 5, 5))], (2, 8, 5, 5))
    drawn = build(net, net.conv(h, 3))
    pruned, report = spa.prune(drawn.model, ratio=0.5)
    assert report.params_after < report.params_before
    assert "w" not in {t.name for t in pruned.graph.initializer}
    check_prune(drawn, 0.5, "local", 1, "l1", False, "outer")


def test_resize_that_rescales_the_channel_axis_blocks():
    """Regression: Conv channels moved to axis 2 by a Transpose meet, in an Add, a Resize that
    upsamples axis 2; the Resize tied its output axis to the input axis of another size, and
    spa.analyze crashed ('tied indices out of range') instead of blocking."""
    net = Net(17, 0)
    x = net.input((2, 3, 4, 4))
    a = net.transpose(net.conv(x, 8), (0, 2, 1, 3))  # (2, 4, 8, 4): the channels on axis 2
    r = net.op("Resize", [net.conv(x, 4), "", "", net.ints([2, 4, 8, 4])], (2, 4, 8, 4), mode="nearest")
    y = net.transpose(net.op("Add", [a, r], (2, 4, 8, 4)), (0, 2, 1, 3))
    drawn = build(net, net.conv(y, 3))
    check_analysis(drawn.model)
    group = next(g for g in spa.analyze(drawn.model).groups if any(m.tensor == "w1" for m in g.members))
    assert not group.prunable and "Resize 'resize9' rescales axis 2" in group.describe()
    check_prune(drawn, 0.5, "local", 1, "l1", False, "outer")


def flatten_round_trip(slice_channels: bool) -> Drawn:
    """Conv, Flatten, Reshape back to (N, C, H, W) [, Slice of the channels], Conv."""
    net = Net(17, 0)
    x = net.input((2, 3, 4, 4))
    f = net.op("Flatten", [net.conv(x, 4)], (2, 64), axis=1)
    y = net.reshape(f, [2, 4, 4, 4], (2, 4, 4, 4))
    if slice_channels:
        y = net.op("Slice", [y, net.ints([0]), net.ints([3]), net.ints([1])], (2, 3, 4, 4))
    return build(net, net.conv(y, 3))


def channel_groups(drawn: Drawn, carrier: str = "outer") -> list[tuple[bool, int]]:
    """(prunable, units) of the groups holding the first Conv's filters."""
    return sorted((g.prunable, g.units) for g in spa.analyze(drawn.model, carrier=carrier).groups
                  if any(m.tensor == "w1" for m in g.members))


def test_flatten_round_trip_then_channel_slice_is_prunable():
    """Regression: the Reshape after a Flatten tied the flat axis to H (the channel digit being
    sliced right after), not to the channels it came from: one unit, blocked."""
    drawn = flatten_round_trip(slice_channels=True)
    # as without the round trip: the 3 channels the Slice keeps, and the one it drops (a group of
    # one channel, which stays)
    assert channel_groups(drawn) == [(False, 1), (True, 3)]
    check_prune(drawn, 0.5, "local", 1, "l1", False, "outer")


@pytest.mark.parametrize("carrier", ["outer", "inner"])
def test_flatten_round_trip_is_prunable(carrier):
    """Regression (inner): the Reshape after a Flatten tied the flat axis to W, the inner digit."""
    drawn = flatten_round_trip(slice_channels=False)
    assert channel_groups(drawn, carrier) == [(True, 4)]
    check_prune(drawn, 0.5, "local", 1, "l1", False, carrier)


def test_pad_with_a_nonzero_value_then_a_sum_over_channels():
    """Regression: Pad with a nonzero constant value keeps removed channels nonzero (at the border),
    but the Pad rule said zero: a ReduceSum over the channels after it was called exact."""
    net = Net(17, 0)
    x = net.input((2, 3, 4, 4))
    p = net.op("Pad", [net.conv(x, 8), net.ints([0, 0, 1, 1, 0, 0, 1, 1]), net.array(np.float32(0.5), "value")],
               (2, 8, 6, 6), mode="constant")
    r = net.op("ReduceSum", [p, net.ints([1])], (2, 1, 6, 6), keepdims=1)
    drawn = build(net, net.conv(net.op("Mul", [p, r], (2, 8, 6, 6)), 3))
    check_prune(drawn, 0.5, "local", 1, "l1", False, "outer")


def test_pruning_in_steps_through_a_channel_shuffle():
    """Regression: Conv (4 channels), Relu, channel shuffle of 2 groups of 2, Conv; ratio 0.8 in 3
    steps. Once the carrier digit was down to one slice, the re-analysis made the other digit the
    units and a later step removed part of an original unit (AssertionError)."""
    net = Net(17, 0)
    x = net.input((2, 2, 4, 4))
    h = net.op("Relu", [net.conv(x, 4)], (2, 4, 4, 4))
    t = net.transpose(net.reshape(h, [2, 2, 2, 4, 4], (2, 2, 2, 4, 4)), (0, 2, 1, 3, 4))
    drawn = build(net, net.conv(net.reshape(t, [2, 4, 4, 4], (2, 4, 4, 4)), 3))
    check_prune(drawn, 0.8, "local", 1, "l1", False, "outer", steps=3)
