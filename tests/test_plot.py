"""Pictures (spa.plot) and per-group sensitivity (spa.sensitivity): the files are real PNGs, the
data drawn is the report's, and the sensitivity measured behaves as pruning does."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import spa
from spa.plot import plot_analysis, plot_prune, plot_sensitivity
from spa.runtime import random_inputs, run
from spa.sensitivity import sensitivity

PNG = b"\x89PNG\r\n\x1a\n"


def spa_cli(*args):
    return subprocess.run([sys.executable, "-m", "spa.cli", *map(str, args)], capture_output=True, text=True)


def is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG)


@pytest.fixture(scope="module")
def model(exports):
    return exports.get("resnet_basic", "dynamo")


def test_prune_plot_draws_the_report(model, tmp_path):
    _, report = spa.prune(model, ratio=0.5)
    rows = plot_prune(report, spa.analyze(model), tmp_path / "prune.png")
    assert is_png(tmp_path / "prune.png")
    drawn = {r["group"]: r for r in rows}
    assert len(drawn) == report.groups_total
    for c in report.channels:
        assert (drawn[c["group"]]["before"], drawn[c["group"]]["after"]) == (c["before"], c["after"])
    pruned = {c["group"] for c in report.channels}
    assert all(r["after"] == r["before"] for g, r in drawn.items() if g not in pruned)
    assert {g for g, r in drawn.items() if r["blocked"]} == {b["group"] for b in report.blocked} != set()
    assert sum(r["after"] for r in rows) < sum(r["before"] for r in rows)
    assert all(r["flops"] >= 0 for r in rows) and max(r["flops"] for r in rows) > 0


def test_analysis_plot_marks_blocked_groups(model, tmp_path):
    analysis = spa.analyze(model)
    rows = plot_analysis(analysis, tmp_path / "groups.png")
    assert is_png(tmp_path / "groups.png")
    assert {r["group"] for r in rows if r["blocked"]} == {g.id for g in analysis.blocked}
    assert sorted((r["group"], r["before"]) for r in rows) == sorted((g.id, g.units) for g in analysis.groups)


def test_sensitivity_grows_with_the_ratio(model, tmp_path):
    ratios = (0.0, 0.25, 0.5, 0.75)
    onnx_model = spa.Graph.load(model).model
    inputs = random_inputs(onnx_model, batch=16, seed=1)
    labels = run(onnx_model, inputs)[0].argmax(axis=1)  # the model's own predictions: accuracy 1 unpruned
    result = sensitivity(model, ratios=ratios, calib={**inputs, "labels": labels})
    assert [r["group"] for r in result.rows] and {r["group"] for r in result.rows} == {g.id for g in spa.analyze(model).prunable}
    errors = np.array([r["error"] for r in result.rows], dtype=float)
    assert np.all(errors[:, 0] == 0)
    assert np.all(np.diff(errors.mean(axis=0)) >= 0)
    assert np.all(errors[:, 2] > 0)
    assert result.baseline_accuracy == 1.0
    assert all(r["accuracy"][0] == 1.0 for r in result.rows)
    assert min(min(r["accuracy"]) for r in result.rows) < 1.0
    plotted = plot_sensitivity(result, tmp_path / "sens.png")
    assert is_png(tmp_path / "sens.png") and plotted == result.rows


def test_cli_pictures_and_table(model, tmp_path):
    result = spa_cli("prune", model, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--no-latency", "--plot", tmp_path / "p.png")
    assert result.returncode == 0, result.stderr
    assert is_png(tmp_path / "p.png")
    result = spa_cli("analyze", model, "--plot", tmp_path / "a.png")
    assert result.returncode == 0, result.stderr
    assert is_png(tmp_path / "a.png")
    result = spa_cli("sensitivity", model, "--ratios", "0.2,0.6", "--plot", tmp_path / "s.png", "--json", tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    assert is_png(tmp_path / "s.png")
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["ratios"] == [0.2, 0.6] and saved["rows"]
    for row in saved["rows"]:  # the table shows each group's errors
        assert f"{row['error'][0]:.3f}" in result.stdout and row["layer"] in result.stdout


@pytest.mark.parametrize("args, words", [
    (["--ratios", "0.1,x"], "comma-separated"),
    (["--ratios", "1.5"], "--ratios must be in"),
    (["--calib", "missing.npz"], "no such calibration file"),
    (["--plot", "/no/such/folder/s.png"], "does not exist"),
])
def test_cli_bad_input_is_one_line(model, tmp_path, args, words):
    result = spa_cli("sensitivity", model, *args, "--json", tmp_path / "s.json")
    assert result.returncode == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.json").exists()


def test_cli_plot_path_refused_before_any_work(model, tmp_path):
    result = spa_cli("prune", model, "-o", tmp_path / "p.onnx", "--plot", tmp_path / "no" / "p.png")
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "p.onnx").exists()
