"""The command line: the main job works, and every bad input is one line, exit 2, nothing written."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def spa(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "spa.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def model(exports):
    return exports.get("resnet_basic", "dynamo")


def test_analyze_prune_bench(model, tmp_path):
    result = spa("analyze", model, "--json", tmp_path / "a.json")
    assert result.returncode == 0, result.stderr
    assert "prunable" in result.stdout
    analysis = json.loads((tmp_path / "a.json").read_text())
    assert analysis["groups_prunable"] > 0 and analysis["groups"]

    out = tmp_path / "pruned.onnx"
    result = spa("prune", model, "-o", out, "--ratio", "0.5", "--report", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout and "latency" in result.stdout and out.exists()
    report = json.loads((tmp_path / "r.json").read_text())
    for key in ("params_before", "params_after", "flops_before", "flops_after", "groups_total", "groups_pruned", "removed"):
        assert key in report
    assert report["params_after"] < report["params_before"]
    assert all(set(r) == {"tensor", "axis", "indices"} for r in report["removed"])

    result = spa("bench", model, out, "--runs", "5", "--warmup", "1")
    assert result.returncode == 0, result.stderr
    assert "speed-up" in result.stdout


def assert_refused(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def bad_models(tmp_path, model):
    (tmp_path / "random.onnx").write_bytes(os.urandom(4096))
    (tmp_path / "text.onnx").write_text("hello, this is not a model\n")
    data = open(model, "rb").read()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.onnx").write_bytes(b"")
    return ["random.onnx", "text.onnx", "truncated.onnx", "empty.onnx"]


def test_bad_model_files_are_refused(tmp_path, model):
    for name in bad_models(tmp_path, model) + ["missing.onnx"]:
        for command in (["analyze"], ["prune", "-o", tmp_path / "out.onnx"]):
            result = spa(command[0], tmp_path / name, *command[1:])
            assert_refused(result)
            assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("args, words", [
    (["--ratio", "1.0"], ["ratio"]),
    (["--ratio", "-0.1"], ["ratio"]),
    (["--ratio", "nan"], ["ratio"]),
    (["--criterion", "nonsense"], ["criterion", "nonsense"]),
    (["--keep", "no_such_node"], ["no_such_node"]),
    (["--round-to", "0"], ["round-to"]),
    (["--steps", "abc"], ["--steps", "abc"]),        # argparse's own errors are one line too
    (["--no-such-option"], ["--no-such-option"]),
])
def test_bad_options_are_refused(tmp_path, model, args, words):
    out = tmp_path / "out.onnx"
    assert_refused(spa("prune", model, "-o", out, *args), *words)
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # no temporary file left behind either


def test_output_over_input_is_refused(tmp_path, model):
    copy = tmp_path / "model.onnx"
    copy.write_bytes(open(model, "rb").read())
    before = copy.read_bytes()
    assert_refused(spa("prune", copy, "-o", copy, "--ratio", "0.5"), "input")
    assert copy.read_bytes() == before
    # the same file by another path
    assert_refused(spa("prune", copy, "-o", tmp_path / "." / "model.onnx"), "input")
    assert copy.read_bytes() == before


def test_output_folder_must_exist(tmp_path, model):
    assert_refused(spa("prune", model, "-o", tmp_path / "nope" / "out.onnx"), "does not exist")


def test_existing_output_survives_a_failed_prune(tmp_path, model):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"keep me")
    assert_refused(spa("prune", model, "-o", out, "--criterion", "nonsense"))
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize("before_ms, after_ms, round_to, words", [
    (4.0, 3.0, 1, None),                 # faster: nothing to say
    (4.0, 4.2, 1, "--round-to 8"),       # odd channel counts: the blocked kernels' remainder
    (4.0, 4.2, 8, "prune more"),         # already in blocks of 8
])
def test_a_prune_that_runs_no_faster_says_what_to_try(before_ms, after_ms, round_to, words):
    from spa.api import Report
    from spa.cli.prune import no_faster_hint

    report = Report(criterion="l1", ratio=0.3, scope="local", round_to=round_to, params_before=1, params_after=1,
                    flops_before=1, flops_after=1, size_before=1, size_after=1, groups_total=1,
                    groups_prunable=1, groups_pruned=1, channels=[], removed=[], blocked=[], approximate=[])
    report.latency = {"before": {"median_ms": before_ms}, "after": {"median_ms": after_ms}}
    hint = no_faster_hint(report, round_to)
    assert hint is None if words is None else words in hint
