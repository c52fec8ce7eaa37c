"""QuantizeLinear/DequantizeLinear (QDQ), ConvInteger and QLinearConv."""
from __future__ import annotations

import numpy as np
from graphs import Builder, check_prune, group_of, init_shape, params


def _qdq_weight(b: Builder, name: str, shape, axis: int = 0, block_size: int = 0):
    """An int8 weight with per-channel scale and zero point along `axis`, behind DequantizeLinear."""
    b.const(f"{name}.q", b.rng.integers(-100, 100, shape), np.int8)
    b.const(f"{name}.s", b.rng.uniform(0.01, 0.02, shape[axis] if not block_size else
                                       tuple(s // block_size if i == axis else s for i, s in enumerate(shape))))
    b.const(f"{name}.z", np.zeros(shape[axis] if not block_size else
                                  tuple(s // block_size if i == axis else s for i, s in enumerate(shape))), np.int8)
    attrs = {"axis": axis} | ({"block_size": block_size} if block_size else {})
    return b.op("DequantizeLinear", [f"{name}.q", f"{name}.s", f"{name}.z"], name=f"{name}_dq", **attrs)


def _qdq_model(block_size: int = 0):
    """X -> Q/DQ -> Conv(DQ(int8 W1)) -> Q/DQ -> Relu -> Conv(DQ(int8 W2)) -> Y."""
    b = Builder(21)
    x = b.input((2, 4, 6, 6))

    def qdq(t, name):
        q = b.op("QuantizeLinear", [t, b.const(f"{name}.s", np.float32(0.05)), b.const(f"{name}.z", np.int8(0))], name=name)
        return b.op("DequantizeLinear", [q, f"{name}.s", f"{name}.z"], name=f"{name}_dq")

    h = b.op("Conv", [qdq(x, "qx"), _qdq_weight(b, "w1", (8, 4, 1, 1), block_size=block_size)], name="c1")
    h = b.op("Relu", [qdq(h, "qh")])
    b.output(b.op("Conv", [h, _qdq_weight(b, "w2", (4, 8, 1, 1), axis=1)], name="c2"))
    return b.build()


def test_qdq_weights_prune_with_their_scales():
    model = _qdq_model()
    group = group_of(model, "w1.q", 0)
    assert group.prunable and group.units == 8
    assert params(group) == {("w1.q", 0), ("w1.s", 0), ("w1.z", 0), ("w2.q", 1), ("w2.s", 0), ("w2.z", 0)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "w1.q") == (4, 4, 1, 1) and init_shape(pruned, "w1.s") == (4,)


def test_blocked_quantization_blocks():
    """(onnxruntime cannot run this model, so the test stops at the analysis.)"""
    group = group_of(_qdq_model(block_size=2), "w1.q", 0)
    assert not group.prunable and any("'w1_dq'" in r and "blocks" in r for r in group.blocked)


def _quantized_conv(op_type: str):
    b = Builder(13)
    x = b.input((2, 4, 6, 6), dtype=2)  # uint8
    w = b.const("w", b.rng.integers(-50, 50, (8, 4, 1, 1)), np.int8)
    if op_type == "ConvInteger":
        y = b.op("ConvInteger", [x, w, b.const("xz", np.uint8(3)), b.const("wz", np.int8(0))], name="conv")
        y = b.op("Cast", [y], to=1)
    else:
        y = b.op("QLinearConv", [x, b.const("xs", np.float32(0.1)), b.const("xz", np.uint8(3)), w,
                                 b.const("ws", b.rng.uniform(0.01, 0.02, 8).astype(np.float32)), b.const("wz", np.zeros(8, np.int8)),
                                 b.const("ys", np.float32(0.2)), b.const("yz", np.uint8(128)),
                                 b.const("B", b.rng.integers(-100, 100, 8), np.int32)], name="conv")
        y = b.op("DequantizeLinear", [y, "ys", "yz"])
    b.output(b.op("Conv", [y, b.weight("w2", (3, 8, 1, 1))], name="c2"))
    return b.build()


def test_conv_integer_prunes():
    """(onnxruntime runs ConvInteger with one weight zero point only: it is not a member.)"""
    model = _quantized_conv("ConvInteger")
    assert params(group_of(model, "w", 0)) == {("w", 0), ("w2", 1)}
    check_prune(model)


def test_qlinear_conv_prunes_with_its_scales_and_bias():
    model = _quantized_conv("QLinearConv")
    assert params(group_of(model, "w", 0)) == {("w", 0), ("ws", 0), ("wz", 0), ("B", 0), ("w2", 1)}
    pruned, _ = check_prune(model)
    assert init_shape(pruned, "B") == (4,)
