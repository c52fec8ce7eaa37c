"""Scale: graphs of 5,000+ nodes (the generators of bench/bench_scale.py) are analyzed and pruned
correctly. Time and memory against graph size are measured by the benchmark, not here."""
from __future__ import annotations

import os
import sys

import pytest

import spa
from spa.oracle import max_relative_error

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from bench_scale import resnet, transformer  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["resnet", "transformer"])
def test_a_graph_of_five_thousand_nodes_prunes_exactly(kind):
    model = resnet(5000, channels=8) if kind == "resnet" else transformer(5000, hidden=16, heads=2, seq=4)
    assert len(model.graph.node) >= 4800
    analysis = spa.analyze(model)
    assert len(analysis.prunable) >= 200
    pruned, report = spa.prune(model, ratio=0.3, exact=True)
    assert report.groups_pruned >= 200 and report.params_after < report.params_before
    assert max_relative_error(model, pruned, report.removed) < 1e-4
