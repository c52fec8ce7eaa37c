"""Transformers: attention heads, MLP channels and the hidden size, on every transformer export.

For every transformer of the zoo (hand-written and built from the transformers library's
configurations; each export that works), the Keras and Flax ViTs, the torch zoo's ViT and
torchvision's (nn.MultiheadAttention): pruned at 30% and 50% of the heads, and of the MLP
channels, the model runs with the original output shapes, loses exactly the parameters the
removed units own, and passes the zeroing oracle; the hidden size prunes to a model that runs,
with the asked channel counts; and the pruned model comes back to PyTorch.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

import spa
from models_zoo.transformer_models import TRANSFORMER_ZOO, export_transformer
from spa.oracle import max_relative_error
from spa.runtime import random_inputs, run

CASES = [pytest.param(name, exporter, id=f"{name}-{exporter}", marks=[pytest.mark.slow] if entry.hf else [])
         for name, entry in TRANSFORMER_ZOO.items() for exporter in entry.exporters]
CASES += [pytest.param("vit", "torch-zoo", id="vit-torch-zoo"), pytest.param("vit", "tf", id="vit-keras"),
          pytest.param("vit", "jax", id="vit-flax"), pytest.param("vit", "torchvision", id="vit-torchvision")]


def torchvision_vit(path) -> str:
    """torchvision's VisionTransformer, small: nn.MultiheadAttention packs q, k and v in one
    projection and unbinds them through Unsqueeze, Transpose, Squeeze and Gather."""
    import torch
    import torchvision

    from frontends.torch import export

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                 hidden_dim=64, mlp_dim=128, num_classes=10).eval()
    with torch.no_grad():  # trained-like weights: no two parameters equal (an exporter would share them)
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return export(model, torch.randn(1, 3, 32, 32), path)


@pytest.fixture(scope="module")
def transformer_exports(tmp_path_factory, framework_exports):
    folder = tmp_path_factory.mktemp("transformers")
    cache = {}

    def get(name, exporter):
        if (name, exporter) not in cache:
            if exporter == "torchvision":
                cache[name, exporter] = torchvision_vit(folder / "vit-torchvision.onnx")
            elif exporter == "torch-zoo":
                cache[name, exporter] = framework_exports.get("torch", name)
            elif exporter in ("tf", "jax"):
                pytest.importorskip("tensorflow" if exporter == "tf" else "flax")
                cache[name, exporter] = framework_exports.get(exporter, name)
            else:
                cache[name, exporter] = export_transformer(name, folder / f"{name}-{exporter}.onnx", exporter=exporter)
        return cache[name, exporter]

    return get


def feeds_for(name, exporter, model):
    """Token ids in range and proper padding masks for text models; random images otherwise."""
    if exporter in ("torch-zoo", "tf", "jax", "torchvision"):
        return random_inputs(model)
    entry = TRANSFORMER_ZOO[name]
    return {n: t.numpy() for n, t in zip(entry.input_names, entry.example_inputs(batch=2))}


def expected_param_drop(analysis, chosen) -> int:
    """From the analysis alone: each pruned parameter keeps (size - removed) along every axis."""
    removed: dict[tuple[str, int], set] = {}
    for group_id, units in chosen.items():
        for m in analysis.groups[group_id].params:
            removed.setdefault((m.tensor, m.axis), set()).update(m.units_indices(units).tolist())
    drop = 0
    for tensor in {t for t, _ in removed}:
        shape = analysis.graph.shape(tensor)
        kept = [size - len(removed.get((tensor, axis), ())) for axis, size in enumerate(shape)]
        drop += int(np.prod(shape)) - int(np.prod(kept))
    return drop


def lowest_units(groups, ratio):
    return {g.id: np.arange(math.floor(ratio * g.units)) for g in groups if math.floor(ratio * g.units)}


@pytest.mark.parametrize("name, exporter", CASES)
def test_heads_and_mlp_channels_prune_exactly(transformer_exports, name, exporter):
    path = transformer_exports(name, exporter)
    model = onnx.load(path)
    feeds = feeds_for(name, exporter, model)
    shapes = [o.shape for o in run(path, feeds)]
    analysis = spa.analyze(path)
    heads = [g for g in analysis.prunable if g.kind == "heads"]
    mlp = [g for g in analysis.prunable if g.kind == "channels" and not g.approximate]
    assert heads and mlp, [(g.id, g.kind, g.blocked) for g in analysis.groups]
    for groups in (heads, mlp):
        for ratio in (0.3, 0.5):
            chosen = lowest_units(groups, ratio)
            pruned, report = spa.apply(analysis, chosen)
            assert [o.shape for o in run(pruned, feeds)] == shapes
            assert report.params_before - report.params_after == expected_param_drop(analysis, chosen)
            assert max_relative_error(path, pruned, report.removed, feeds=feeds) < 1e-4


@pytest.mark.parametrize("name, exporter", CASES)
def test_hidden_size_prunes_to_a_valid_model(transformer_exports, name, exporter):
    import torch

    path = transformer_exports(name, exporter)
    feeds = feeds_for(name, exporter, onnx.load(path))
    analysis = spa.analyze(path)
    hidden = [g for g in analysis.prunable if g.kind == "hidden"]
    assert hidden
    chosen = lowest_units(hidden, 0.5)
    pruned, report = spa.apply(analysis, chosen)
    assert [o.shape for o in run(pruned, feeds)] == [o.shape for o in run(path, feeds)]
    sizes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    for g in hidden:  # every parameter along the hidden size now has the asked channel count
        for m in g.params:
            if m.tensor in sizes and len(m.indices) == m.size:
                assert sizes[m.tensor][m.axis] == m.size - m.size // 2, (m.tensor, m.axis)
    # and the pruned transformer comes back to PyTorch
    torch_model = spa.to_torch(pruned)
    with torch.no_grad():
        out = torch_model.module(*[torch.from_numpy(feeds[n]) for n in torch_model.input_names])
    out = out[0] if isinstance(out, (tuple, list)) else out
    want = run(pruned, feeds)[0]
    assert np.abs(out.numpy() - want).max() <= 1e-4 * np.abs(want).max() + 1e-5


@pytest.mark.parametrize("name, exporter", [("gqa_decoder", "dynamo"), ("bert_encoder", "torchscript")])
def test_head_and_hidden_ratios_of_their_own(transformer_exports, name, exporter):
    """--head-ratio prunes heads by their own ratio, --hidden-ratio the hidden size; --ratio the rest."""
    path = transformer_exports(name, exporter)
    _, report = spa.prune(path, ratio=0.3, head_ratio=0.5, hidden_ratio=0.0)
    kinds = {ch["kind"] for ch in report.channels}
    assert "hidden" not in kinds and {"heads", "channels"} <= kinds
    for ch in report.channels:
        ratio = 0.5 if ch["kind"] == "heads" else 0.3
        assert ch["after"] == ch["before"] - math.floor(ratio * ch["before"]), ch
    with pytest.raises(spa.SpaError, match="head-ratio"):
        spa.prune(path, head_ratio=1.0)


def test_round_to_counts_channels_not_heads(transformer_exports):
    """--round-to 8 keeps channel counts at multiples of 8: a head (16 channels of each projection
    here) already is one, so heads still go one by one; MLP channels go in eights."""
    path = transformer_exports("bert_encoder", "torchscript")
    _, report = spa.prune(path, ratio=0.3, head_ratio=0.5, hidden_ratio=0.0, round_to=8)
    heads = [ch for ch in report.channels if ch["kind"] == "heads"]
    assert heads and all(ch["after"] == ch["before"] // 2 for ch in heads), heads
    mlp = [ch for ch in report.channels if ch["kind"] == "channels"]
    assert mlp and all(ch["after"] % 8 == 0 and ch["after"] < ch["before"] for ch in mlp), mlp
