"""Recurrent layers: LSTM, GRU and RNN, pruned by hidden units and by input features.

Each graph is a seed layer "l1" (a MatMul over the features, or a Conv over a 1-D signal read as a
sequence) -> the recurrent node "rnn" -> its Y (or Y_h) brought to [.., num_dir * H] the way
PyTorch exports it (Transpose, Reshape) -> a consumer MatMul "l2" -> the output.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import spa
from graphs import (Builder, assert_blocked, check_prune, group_of, init_shape, node_attr, params, units)
from spa.oracle import max_relative_error, zeroed
from spa.runtime import random_inputs

SEQ, BATCH, FEATURES, CHANNELS, H = 5, 2, 6, 8, 4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
OUTPUTS = {"LSTM": 3, "GRU": 2, "RNN": 2}


def recurrent(b: Builder, x: str, op: str = "LSTM", hidden: int = H, name: str = "rnn", direction: str = "forward",
              layout: int = 0, initial: str | None = None, seq_lens: bool = False, peephole: bool = False,
              bias: bool = True, **attrs) -> list[str]:
    """A recurrent node on x with random weights; `initial` "const" or "input" adds the initial
    states (as nonzero initializers, or as graph inputs). Returns its outputs."""
    nd, gates = (2 if direction == "bidirectional" else 1), GATES[op]
    batch = b.shape(x)[1 - layout]
    inputs = [x, b.weight(f"{name}.W", (nd, gates * hidden, b.shape(x)[-1])),
              b.weight(f"{name}.R", (nd, gates * hidden, hidden))]
    inputs.append(b.weight(f"{name}.B", (nd, 2 * gates * hidden)) if bias else "")
    lengths = np.array([SEQ - 2 * (i % 2) for i in range(batch)], np.int32)  # some sequences end early
    inputs.append(b.const(f"{name}.L", lengths) if seq_lens else "")
    state_shape = (nd, batch, hidden) if layout == 0 else (batch, nd, hidden)
    for state in ("h0", "c0")[:1 + (op == "LSTM")]:
        if initial == "const":
            inputs.append(b.weight(f"{name}.{state}", state_shape))
        elif initial == "input":
            inputs.append(b.input(state_shape, f"{name}.{state}"))
        else:
            inputs.append("")
    if peephole:
        inputs.append(b.weight(f"{name}.P", (nd, 3 * hidden)))
    while inputs[-1] == "":
        inputs.pop()
    if layout:
        attrs["layout"] = layout
    return b.op(op, inputs, outputs=OUTPUTS[op], name=name, hidden_size=hidden, direction=direction, **attrs)


def merge_directions(b: Builder, y: str, layout: int = 0) -> str:
    """Y [seq, nd, batch, H] -> [seq, batch, nd * H] (PyTorch's export);
    layout 1: [batch, seq, nd, H] -> [batch, seq, nd * H]."""
    if layout == 0:
        y = b.op("Transpose", [y], perm=[0, 2, 1, 3])
    return b.op("Reshape", [y, b.const(f"{y}.shape", np.array([0, 0, -1]))])


def model(op: str = "LSTM", seed: str = "linear", use: str = "Y", layout: int = 0, **kw) -> onnx.ModelProto:
    """seed layer l1 -> rnn -> Y (or Y_h) -> l2 -> output."""
    b = Builder()
    if seed == "conv":  # [batch, channels, time] read as a sequence [time, batch, channels]
        x = b.conv(b.input((BATCH, FEATURES, SEQ)), CHANNELS, k=3, name="l1")
        x = b.op("Transpose", [x], perm=[2, 0, 1] if layout == 0 else [0, 2, 1])
    else:
        x = b.linear(b.input((SEQ, BATCH, FEATURES) if layout == 0 else (BATCH, SEQ, FEATURES)), CHANNELS, name="l1")
    outputs = recurrent(b, x, op, layout=layout, **kw)
    if use == "Y":
        h = merge_directions(b, outputs[0], layout)
    else:  # Y_h [nd, batch, H] -> [batch, nd * H]
        state = outputs[1] if layout else b.op("Transpose", [outputs[1]], perm=[1, 0, 2])
        h = b.op("Reshape", [state, b.const("state.shape", np.array([0, -1]))])
    b.output(b.linear(h, 3, name="l2"))
    return b.build()


def hidden_members(op: str, initial: bool = False, peephole: bool = False) -> set[tuple[str, int]]:
    members = {("rnn.W", 1), ("rnn.R", 1), ("rnn.R", 2), ("rnn.B", 1), ("l2.W", 0)}
    if initial:
        members |= {("rnn.h0", 2)} | ({("rnn.c0", 2)} if op == "LSTM" else set())
    return members | ({("rnn.P", 1)} if peephole else set())


def check_hidden(m: onnx.ModelProto, op: str = "LSTM", nd: int = 1, ratio: float = 0.5, **prune_kw):
    """The hidden group owns every gate's row of each unit (both directions' unit j together);
    the prune passes the zeroing oracle and sets hidden_size."""
    group = group_of(m, "rnn.R", 2)
    assert group.prunable and not group.approximate and group.units == H, group.describe()
    gates = GATES[op]
    assert units(group, "rnn.W", 1)[1] == [g * H + 1 for g in range(gates)]
    if ("rnn.B", 1) in params(group):
        assert units(group, "rnn.B", 1)[1] == [g * H + 1 for g in range(2 * gates)]
    assert units(group, "rnn.R", 2)[1] == [1]
    pruned, report = check_prune(m, ratio=ratio, **prune_kw)
    kept = H - int(H * ratio)
    assert node_attr(pruned, "rnn", "hidden_size") == kept
    assert init_shape(pruned, "rnn.W")[:2] == (nd, gates * kept)
    assert init_shape(pruned, "rnn.R") == (nd, gates * kept, kept)
    assert {"group": group.id, "kind": "channels", "before": H, "after": kept} in report.channels
    return group, pruned, report


# ----------------------------------------------------------------------------- the three operators
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_hidden_units(op, direction):
    m = model(op, direction=direction)
    nd = 2 if direction == "bidirectional" else 1
    group, _, _ = check_hidden(m, op, nd)
    assert params(group) == hidden_members(op)
    # PyTorch's Transpose + Reshape puts the reverse direction's unit j at H + j
    assert units(group, "l2.W", 0)[1] == ([1, H + 1] if nd == 2 else [1])


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_input_features_prune_through_the_input_weights(op):
    m = model(op, direction="bidirectional")
    group = group_of(m, "l1.W", 1)
    assert params(group) == {("l1.W", 1), ("rnn.W", 2)} and group.prunable and not group.approximate
    pruned, _ = check_prune(m)
    assert init_shape(pruned, "rnn.W") == (2, GATES[op] * H // 2, CHANNELS // 2)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_conv_channels_read_as_a_sequence(op):
    m = model(op, seed="conv", direction="bidirectional")
    group = group_of(m, "l1.W", 0)
    assert params(group) == {("l1.W", 0), ("l1.B", 0), ("rnn.W", 2)}
    check_hidden(m, op, nd=2)


def test_conv_channels_as_time_steps_are_blocked():
    """A Conv's channels that become the sequence axis cannot shrink: the time axis is not prunable."""
    b = Builder()
    x = b.conv(b.input((BATCH, FEATURES, SEQ)), CHANNELS, name="l1")  # [batch, 8, 5]
    outputs = recurrent(b, b.op("Transpose", [x], perm=[1, 0, 2]))  # [8 steps, batch, 5]
    b.output(b.linear(merge_directions(b, outputs[0]), 3, name="l2"))
    assert_blocked(b.build(), "l1.W", 0, "time")


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_sequence_lens(op, direction):
    check_hidden(model(op, direction=direction, seq_lens=True), op, 2 if direction == "bidirectional" else 1)


def test_no_bias():
    group, _, _ = check_hidden(model("LSTM", bias=False))
    assert params(group) == hidden_members("LSTM") - {("rnn.B", 1)}


def test_lstm_peepholes():
    m = model("LSTM", direction="bidirectional", peephole=True)
    group, pruned, _ = check_hidden(m, "LSTM", nd=2)
    assert params(group) == hidden_members("LSTM", peephole=True)
    assert units(group, "rnn.P", 1)[2] == [2, H + 2, 2 * H + 2]
    assert init_shape(pruned, "rnn.P") == (2, 3 * H // 2)


def test_gru_linear_before_reset():
    check_hidden(model("GRU", direction="bidirectional", linear_before_reset=1), "GRU", nd=2)


# ----------------------------------------------------------------------------- initial states
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_constant_initial_states_are_members(op, direction):
    """Nonzero initial states are parameters of the unit: zeroed by the oracle, cut by the prune."""
    m = model(op, direction=direction, initial="const", seq_lens=True)
    nd = 2 if direction == "bidirectional" else 1
    group, pruned, _ = check_hidden(m, op, nd)
    assert params(group) == hidden_members(op, initial=True)
    assert init_shape(pruned, "rnn.h0") == (nd, BATCH, H // 2)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_initial_states_fed_by_the_caller_block_the_hidden_units(op):
    m = model(op, direction="bidirectional", initial="input")
    assert_blocked(m, "rnn.R", 2, "graph input 'rnn.h0'")
    assert group_of(m, "l1.W", 1).prunable  # the input features still prune
    _, report = check_prune(m)
    assert [c["before"] for c in report.channels] == [CHANNELS]


def test_initial_state_from_an_encoder():
    """initial_h computed by a layer (a seq2seq decoder's state): its channels are the hidden
    units, and the unit starts at zero once the encoder's weights are zeroed."""
    b = Builder()
    x = b.linear(b.input((SEQ, BATCH, FEATURES)), CHANNELS, name="l1")
    context = b.op("Tanh", [b.linear(b.input((BATCH, 3), "C"), H, name="enc")])
    h0 = b.op("Unsqueeze", [context, b.const("axis0", np.array([0]))])
    inputs = [x, b.weight("rnn.W", (1, 3 * H, CHANNELS)), b.weight("rnn.R", (1, 3 * H, H)),
              b.weight("rnn.B", (1, 6 * H)), "", h0]
    y, _ = b.op("GRU", inputs, outputs=2, name="rnn", hidden_size=H)
    b.output(b.linear(merge_directions(b, y), 3, name="l2"))
    m = b.build()
    group, _, _ = check_hidden(m, "GRU")
    assert params(group) == hidden_members("GRU") | {("enc.W", 1)}


def test_zero_states_computed_at_run_time_are_dropped():
    """PyTorch's default h0 and c0: one ConstantOfShape over the run-time batch, sliced per state.
    Zeros are no state at all: they tie nothing (the fill has no rule and would block the units)
    and are dropped from the pruned node."""
    b = Builder()
    x = b.linear(b.input((SEQ, "batch", FEATURES)), CHANNELS, name="l1")
    batch = b.op("Gather", [b.op("Shape", [x]), b.const("one", np.array(1))])
    batch = b.op("Unsqueeze", [batch, b.const("axis0", np.array([0]))])
    shape = b.op("Concat", [b.const("dirs", np.array([4])), batch, b.const("hidden", np.array([H]))], axis=0)
    zeros = b.op("ConstantOfShape", [shape], value=helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0]))
    h0, c0 = (b.op("Slice", [zeros, b.const(f"start{i}", np.array([2 * i])), b.const(f"end{i}", np.array([2 * i + 2])),
                              b.const(f"slice_axis{i}", np.array([0]))]) for i in range(2))
    inputs = [x, b.weight("rnn.W", (2, 4 * H, CHANNELS)), b.weight("rnn.R", (2, 4 * H, H)),
              b.weight("rnn.B", (2, 8 * H)), "", h0, c0]
    y = b.op("LSTM", inputs, outputs=3, name="rnn", hidden_size=H, direction="bidirectional")[0]
    b.output(b.linear(merge_directions(b, y), 3, name="l2"))
    m = b.build()
    group, pruned, _ = check_hidden(m, nd=2)
    assert params(group) == hidden_members("LSTM")
    assert list(next(n for n in pruned.graph.node if n.name == "rnn").input)[5:] == ["", ""]


def test_weights_computed_at_run_time_give_no_hidden_units():
    """Units are born only where the weights are known; features into run-time weights block."""
    b = Builder()
    x = b.linear(b.input((SEQ, BATCH, FEATURES)), CHANNELS, name="l1")
    w = b.input((1, 4 * H, CHANNELS), "W")
    y = b.op("LSTM", [x, w, b.weight("rnn.R", (1, 4 * H, H))], outputs=3, name="rnn", hidden_size=H)[0]
    b.output(b.linear(merge_directions(b, y), 3, name="l2"))
    m = b.build()
    analysis = spa.analyze(m)
    assert not [g for g in analysis.groups if any(mb.tensor == "rnn.R" for mb in g.members)]
    assert_blocked(m, "l1.W", 1, "graph input 'W'", analysis=analysis)


# ----------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_final_state_used_instead_of_y(op):
    m = model(op, use="Y_h", direction="bidirectional", seq_lens=True)
    group, _, _ = check_hidden(m, op, nd=2)
    assert params(group) == hidden_members(op)
    assert units(group, "l2.W", 0)[1] == [1, H + 1]


def test_lstm_cell_state_output():
    """Y_c feeds a layer of its own: the same units."""
    b = Builder()
    x = b.linear(b.input((SEQ, BATCH, FEATURES)), CHANNELS, name="l1")
    y, _, y_c = recurrent(b, x, "LSTM", initial="const")
    cell = b.op("Squeeze", [y_c, b.const("axis0", np.array([0]))])
    b.output(b.linear(merge_directions(b, y), 3, name="l2"), b.linear(cell, 3, name="l3"))
    group, _, _ = check_hidden(b.build())
    assert ("l3.W", 0) in params(group)


def test_stacked_bidirectional_lstm():
    """Layer 2 reads layer 1's [seq, batch, 2H]: layer 1's unit j is layer 2's features j and H + j."""
    b = Builder()
    x = b.linear(b.input((SEQ, BATCH, FEATURES)), CHANNELS, name="l1")
    y1 = recurrent(b, x, name="rnn", direction="bidirectional", initial="const")[0]
    y2 = recurrent(b, merge_directions(b, y1), name="rnn2", hidden=6, direction="bidirectional")[0]
    b.output(b.linear(merge_directions(b, y2), 3, name="l2"))
    m = b.build()
    analysis = spa.analyze(m)
    first, second = group_of(analysis, "rnn.R", 2), group_of(analysis, "rnn2.R", 2)
    assert ("rnn2.W", 2) in params(first) and units(first, "rnn2.W", 2)[3] == [3, H + 3]
    assert ("l2.W", 0) in params(second) and units(second, "l2.W", 0)[5] == [5, 11]
    assert first.prunable and second.prunable and first.units == H and second.units == 6
    pruned, report = check_prune(m)
    assert node_attr(pruned, "rnn", "hidden_size") == 2 and node_attr(pruned, "rnn2", "hidden_size") == 3
    assert init_shape(pruned, "rnn2.W") == (2, 12, 4)
    assert len(report.channels) == 3


# ----------------------------------------------------------------------------- layout 1
def as_layout_0(m: onnx.ModelProto) -> onnx.ModelProto:
    """The same computation with every layout-1 recurrent node as a layout-0 one between
    Transposes (onnxruntime runs only layout 0)."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    nodes = []
    for n in out.graph.node:
        if n.op_type not in GATES or not any(a.name == "layout" and a.i == 1 for a in n.attribute):
            nodes.append(n)
            continue
        kept = [a for a in n.attribute if a.name != "layout"]
        del n.attribute[:]
        n.attribute.extend(kept)
        for position in (0, 5, 6):  # X [batch, seq, F], initial states [batch, nd, H]
            if position < len(n.input) and n.input[position]:
                name = n.input[position]
                nodes.append(helper.make_node("Transpose", [name], [name + ".l0"], perm=[1, 0, 2]))
                n.input[position] = name + ".l0"
        nodes.append(n)
        for position, perm in enumerate(([2, 0, 1, 3], [1, 0, 2], [1, 0, 2])):  # Y [seq, nd, batch, H], states
            if position < len(n.output) and n.output[position]:
                name = n.output[position]
                n.output[position] = name + ".l0"
                nodes.append(helper.make_node("Transpose", [name + ".l0"], [name], perm=perm))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.value_info[:]
    return out


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("use", ["Y", "Y_h"])
def test_layout_1(op, use):
    """Batch-first tensors: the hidden axis is still the last one. onnxruntime refuses layout 1,
    so the prune is checked unverified, then proven on the equivalent layout-0 graphs."""
    m = model(op, use=use, layout=1, direction="bidirectional", initial="const", seq_lens=True)
    group = group_of(m, "rnn.R", 2)
    assert params(group) == hidden_members(op, initial=True) and group.prunable and not group.approximate
    assert units(group, "l2.W", 0)[1] == [1, H + 1]
    pruned, report = spa.prune(m, ratio=0.5, check=False)
    onnx.checker.check_model(pruned, full_check=True)
    assert node_attr(pruned, "rnn", "hidden_size") == H // 2
    assert init_shape(pruned, "rnn.h0") == (BATCH, 2, H // 2)
    assert len(report.channels) == 2
    reference, candidate = (as_layout_0(x) for x in (zeroed(m, report.removed), pruned))
    feeds = random_inputs(reference)
    want, got = (ort.InferenceSession(x.SerializeToString()).run(None, feeds) for x in (reference, candidate))
    assert np.abs(want[0] - got[0]).max() < 1e-5 * np.abs(want[0]).max()


# ----------------------------------------------------------------------------- activations
def summed_model(op: str, **attrs) -> onnx.ModelProto:
    """rnn -> l2, and a ReduceSum over the hidden units to a second output: a sum that no
    parameter multiplies, so it is exact only if removed units output zero."""
    b = Builder()
    x = b.linear(b.input((SEQ, BATCH, FEATURES)), CHANNELS, name="l1")
    h = merge_directions(b, recurrent(b, x, op, direction="bidirectional", **attrs)[0])
    total = b.op("ReduceSum", [h, b.const("last", np.array([-1]))], keepdims=1)
    b.output(b.linear(h, 3, name="l2"), total)
    return b.build()


@pytest.mark.parametrize("op, attrs", [
    ("LSTM", {}),
    ("GRU", {}),
    ("RNN", {}),
    ("RNN", {"activations": ["Relu", "LeakyRelu"], "activation_alpha": [0.1]}),
    ("RNN", {"activations": ["Affine", "Affine"], "activation_alpha": [0.5, 2.0]}),
    ("LSTM", {"activations": ["Sigmoid", "Elu", "Softsign"] * 2}),
    ("GRU", {"activations": ["HardSigmoid", "ScaledTanh"] * 2}),  # only the candidate's activation matters
])
def test_zero_keeping_activations_keep_the_prune_exact(op, attrs):
    m = summed_model(op, initial="const", **attrs)
    assert not group_of(m, "rnn.R", 2).approximate
    check_prune(m)


@pytest.mark.parametrize("op, attrs", [
    ("RNN", {"activations": ["Sigmoid", "Sigmoid"]}),
    ("RNN", {"activations": ["Tanh", "Softplus"]}),  # the reverse direction's
    ("RNN", {"activations": ["Affine", "Affine"], "activation_alpha": [1.0, 1.0], "activation_beta": [0.3, 0.3]}),
    ("LSTM", {"activations": ["Sigmoid", "Tanh", "Sigmoid"] * 2}),
    ("GRU", {"activations": ["Sigmoid", "Sigmoid"] * 2}),
])
def test_activations_that_move_zero_make_downstream_sums_approximate(op, attrs):
    """A removed unit then outputs a nonzero constant: the ReduceSum misses it. The group stays
    prunable, flagged approximate (the prune is not exact, as the oracle shows), and exact=True
    leaves it whole."""
    m = summed_model(op, **attrs)
    group = group_of(m, "rnn.R", 2)
    assert group.prunable and any("ReduceSum" in r for r in group.approximate), group.describe()
    pruned, report = spa.prune(m, ratio=0.5)
    assert group.id in report.approximate
    assert max_relative_error(m, pruned, report.removed) > 1e-3
    _, report = spa.prune(m, ratio=0.5, exact=True)
    assert group.id not in {c["group"] for c in report.channels}


def test_runtime_initial_state_not_known_zero_is_approximate():
    """An initial cell state computed at run time from something outside the unit keeps the
    unit alive: c = f * c0 decays but is not zero."""
    b = Builder()
    x = b.linear(b.input((SEQ, BATCH, FEATURES)), CHANNELS, name="l1")
    c0 = b.op("Sigmoid", [b.linear(b.input((BATCH, 3), "C"), H, name="enc")])  # Sigmoid(0) = 0.5
    c0 = b.op("Unsqueeze", [c0, b.const("axis0", np.array([0]))])
    inputs = [x, b.weight("rnn.W", (1, 4 * H, CHANNELS)), b.weight("rnn.R", (1, 4 * H, H)), "", "", "", c0]
    y = b.op("LSTM", inputs, outputs=3, name="rnn", hidden_size=H)[0]
    h = merge_directions(b, y)
    b.output(b.linear(h, 3, name="l2"), b.op("ReduceSum", [h, b.const("last", np.array([-1]))], keepdims=1))
    group = group_of(b.build(), "rnn.R", 2)
    assert ("enc.W", 1) in params(group) and any("ReduceSum" in r for r in group.approximate)


# ----------------------------------------------------------------------------- a real export
def test_torch_bidirectional_two_layer_lstm(tmp_path):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(4, 16, 3, padding=1)
            self.lstm = torch.nn.LSTM(16, 12, num_layers=2, bidirectional=True, batch_first=True)
            self.fc = torch.nn.Linear(24, 5)

        def forward(self, x):  # x [batch, 4, time]
            h = torch.relu(self.conv(x)).transpose(1, 2)  # [batch, time, 16]
            y, _ = self.lstm(h)
            return self.fc(y)

    torch.manual_seed(0)
    path = str(tmp_path / "lstm.onnx")
    torch.onnx.export(Net().eval(), (torch.randn(2, 4, 7),), path, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    analysis = spa.analyze(path)
    lstms = [n for n in analysis.graph.nodes if n.op_type == "LSTM"]
    assert len(lstms) == 2
    hidden = [group_of(analysis, n.input[2], 2) for n in lstms]
    assert all(g.prunable and g.units == 12 for g in hidden), [g.describe() for g in hidden]
    pruned, report = spa.prune(path, ratio=0.5)
    assert max_relative_error(path, pruned, report.removed) < 1e-4
    after = {c["group"]: c for c in report.channels}
    for g in hidden:
        assert after[g.id]["kind"] == "channels" and after[g.id]["after"] == 6
    assert [helper.get_attribute_value(a) for n in pruned.graph.node if n.op_type == "LSTM"
            for a in n.attribute if a.name == "hidden_size"] == [6, 6]
