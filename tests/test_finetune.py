"""Fine-tuning a pruned model by distillation from the original (spa.finetune, `spa finetune`)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import spa
from frontends.torch import export
from spa.cli import main
from spa.distill import output_kinds
from spa.errors import SpaError
from spa.finetune import finetune
from spa.runtime import run
from tests.test_light import spa_light

SHAPE = (3, 8, 8)


def small_cnn(seed: int, softmax: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1),
              nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)]
    return nn.Sequential(*layers, *([nn.Softmax(dim=1)] if softmax else [])).eval()


class Features(nn.Module):
    """A model whose output is a feature map, not class scores: distilled by MSE."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 3, padding=1))

    def forward(self, x):
        return self.body(x)


def inputs(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(teacher path, pruned student path, pruned ModelProto): the CNN pruned to half its channels by L1."""
    folder = tmp_path_factory.mktemp("finetune")
    teacher = export(small_cnn(0), torch.zeros(2, *SHAPE), folder / "teacher.onnx")
    pruned, _ = spa.prune(teacher, 0.5, criterion="l1", round_to=1)
    student = spa.save(pruned, folder / "student.onnx")
    return teacher, student, pruned


def kl(student: np.ndarray, teacher: np.ndarray, temperature: float = 4.0) -> float:
    """Mean KL(softmax(teacher / T) || softmax(student / T)), computed here independently."""
    def log_softmax(z):
        z = z / temperature
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    p, q = log_softmax(teacher.astype(np.float64)), log_softmax(student.astype(np.float64))
    return float((np.exp(p) * (p - q)).sum(axis=1).mean())


def test_finetuning_brings_the_pruned_model_closer_to_the_teacher_on_held_out_inputs(models):
    teacher, student, pruned = models
    held_out = {"input": inputs(128, seed=99)}
    tuned, report = finetune(student, teacher, {"input": inputs(256, seed=1)}, epochs=4, lr=3e-3, log=None)
    want = run(teacher, held_out)[0]
    before, after = kl(run(pruned, held_out)[0], want), kl(run(tuned, held_out)[0], want)
    assert after < 0.5 * before, (before, after)
    assert report.loss_after < report.loss_before and report.losses == ["kl"] and report.samples == 256
    assert [r["epoch"] for r in report.history] == [1, 2, 3, 4]
    # valid, the pruned shapes, new weights
    onnx.checker.check_model(tuned, full_check=True)
    shapes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert {t.name: tuple(t.dims) for t in tuned.graph.initializer if t.name in shapes} == shapes
    assert spa.analyze(tuned).graph is not None  # SPA reads it again (it can be pruned further)
    # what onnxruntime computes on the written model is what the trained torch student computes
    assert report.max_relative_error < 1e-5
    module = spa.to_torch(tuned).module
    with torch.no_grad():
        in_torch = module(torch.from_numpy(held_out["input"])).numpy()
    np.testing.assert_allclose(run(tuned, held_out)[0], in_torch, rtol=1e-4, atol=1e-5 * np.abs(in_torch).max())


def test_validation_labels_give_accuracy_before_after_and_per_epoch(models):
    teacher, student, _ = models
    val_x = inputs(64, seed=5)
    labels = run(teacher, {"input": val_x})[0].argmax(axis=1)  # the teacher is right by definition
    _, report = finetune(student, teacher, {"input": inputs(128, seed=2)}, epochs=2, lr=3e-3,
                         val={"input": val_x, "labels": labels}, log=None)
    assert report.teacher_accuracy == 1.0
    assert report.accuracy_before == report.agreement_before and report.accuracy_after == report.agreement_after
    assert report.evaluated_on == "validation inputs"
    assert all(0 <= r["val_accuracy"] <= 1 and "val_loss" in r for r in report.history)
    assert report.history[-1]["val_loss"] == pytest.approx(report.loss_after, rel=1e-5)


def test_data_free_inputs_need_no_data(models):
    teacher, student, pruned = models
    held_out = {"input": inputs(128, seed=98)}
    tuned, report = finetune(student, teacher, data_free="gaussian", samples=256, epochs=4, lr=3e-3, log=None)
    assert report.inputs == "data-free (gaussian)" and report.samples == 256
    want = run(teacher, held_out)[0]
    assert kl(run(tuned, held_out)[0], want) < kl(run(pruned, held_out)[0], want)
    _, report = finetune(student, teacher, data_free="auto", samples=32, epochs=1, log=None)
    assert report.inputs == "data-free (inversion)"  # a classifier: inverted, as data-free OBSPA does


def test_output_kinds_follow_what_each_output_is(tmp_path):
    logits = onnx.load(export(small_cnn(0), torch.zeros(2, *SHAPE), tmp_path / "logits.onnx"))
    softmax = onnx.load(export(small_cnn(0, softmax=True), torch.zeros(2, *SHAPE), tmp_path / "softmax.onnx"))
    features = onnx.load(export(Features(), torch.zeros(2, *SHAPE), tmp_path / "features.onnx"))
    assert [(k.loss, k.scores) for k in output_kinds(logits)] == [("kl", "logits")]
    assert [(k.loss, k.scores, k.axis) for k in output_kinds(softmax)] == [("kl", "probabilities", 1)]
    assert [k.loss for k in output_kinds(features)] == ["mse"]
    assert [k.loss for k in output_kinds(logits, "mse")] == ["mse"]
    assert [(k.loss, k.axis) for k in output_kinds(features, "kl")] == [("kl", 1)]
    assert [(k.loss, k.axis) for k in output_kinds(features, "kl", class_axis=-1)] == [("kl", -1)]


def test_a_feature_map_output_is_distilled_by_relative_mse(tmp_path):
    teacher = export(Features(), torch.zeros(2, *SHAPE), tmp_path / "features.onnx")
    pruned, _ = spa.prune(teacher, 0.5, criterion="l1", round_to=1)
    train, held_out = {"input": inputs(256, seed=3)}, {"input": inputs(64, seed=97)}
    tuned, report = finetune(pruned, teacher, train, epochs=4, lr=3e-3, log=None)

    def error(model, feeds):
        return float(((run(model, feeds)[0] - run(teacher, feeds)[0]) ** 2).mean())

    assert report.losses == ["mse"] and error(tuned, held_out) < 0.7 * error(pruned, held_out)
    # without validation inputs, the loss is reported on the training inputs, relative to the teacher's variance
    assert report.loss_before == pytest.approx(error(pruned, train) / np.var(run(teacher, train)[0]), rel=1e-4)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line(models, tmp_path):
    teacher, student, _ = models
    data = {"input": inputs(16, seed=4)}
    renamed = onnx.load(teacher)
    renamed.graph.input[0].name = "image"
    for node in renamed.graph.node:
        node.input[:] = ["image" if n == "input" else n for n in node.input]
    wider = export(small_cnn(0), torch.zeros(2, 3, 16, 16), tmp_path / "wider.onnx")  # takes 16x16 images
    cases = [
        (dict(student=tmp_path / "none.onnx", teacher=teacher, data=data), "no such file"),
        (dict(student=student, teacher=teacher, data=tmp_path / "none.npz"), "no such file"),
        (dict(student=student, teacher=renamed, data=data), "are not the teacher's"),
        (dict(student=student, teacher=wider, data=data), "in the student and"),
        (dict(student=student, teacher=teacher, data={"x": data["input"]}), "is not an input of the model"),
        (dict(student=student, teacher=teacher, data={"input": inputs(16, 4)[:, :, :4]}), "the model takes"),
        (dict(student=student, teacher=teacher), "one of the two"),
        (dict(student=student, teacher=teacher, data=data, data_free="gaussian"), "one of the two"),
        (dict(student=student, teacher=teacher, data=data, val={**data, "labels": np.zeros((16, 2), np.int64)}),
         "the validation labels have shape"),
        (dict(student=student, teacher=teacher, data=data, loss="ce"), "unknown distillation loss"),
        (dict(student=student, teacher=teacher, data=data, epochs=0), "epochs must be at least 1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SpaError, match=message):
            finetune(**kwargs, log=None)


# ----------------------------------------------------------------------------- the command line
def test_cli_end_to_end(models, tmp_path, capsys):
    teacher, student, pruned = models
    np.savez(tmp_path / "inputs.npz", input=inputs(128, seed=6))
    val_x = inputs(64, seed=7)
    np.savez(tmp_path / "val.npz", input=val_x, labels=run(teacher, {"input": val_x})[0].argmax(axis=1))
    out, report = tmp_path / "tuned.onnx", tmp_path / "report.json"
    assert main(["finetune", str(student), "--teacher", str(teacher), "--data", str(tmp_path / "inputs.npz"),
                 "--val", str(tmp_path / "val.npz"), "-o", str(out), "--epochs", "2", "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "epoch 1/2" in text and "epoch 2/2" in text and "validation accuracy" in text and f"wrote {out}" in text
    saved = json.loads(report.read_text())
    assert saved["epochs"] == 2 and len(saved["history"]) == 2
    tuned = onnx.load(out)
    assert [tuple(t.dims) for t in tuned.graph.initializer if t.name == pruned.graph.initializer[0].name] == \
        [tuple(pruned.graph.initializer[0].dims)]


def test_cli_refuses_bad_input_in_one_line(models, tmp_path, capsys):
    teacher, student, _ = models
    np.savez(tmp_path / "wrong.npz", x=inputs(8, seed=8))
    runs = [
        (["--data", str(tmp_path / "wrong.npz"), "-o", str(tmp_path / "o.onnx")], "is not an input of the model"),
        (["--data-free", "-o", str(student)], "refusing to write over"),
        (["-o", str(tmp_path / "o.onnx")], "--data INPUTS.npz, or --data-free"),
        (["--data", str(tmp_path / "none.npz"), "-o", str(tmp_path / "o.onnx")], "no such file"),
    ]
    for extra, message in runs:
        assert main(["finetune", str(student), "--teacher", str(teacher), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.onnx").exists()


def test_without_torch_it_says_which_extra(models, tmp_path):
    teacher, student, _ = models
    np.savez(tmp_path / "inputs.npz", input=inputs(8, seed=9))
    result = spa_light("finetune", student, "--teacher", teacher, "--data", tmp_path / "inputs.npz",
                       "-o", tmp_path / "o.onnx")
    assert result.returncode == 2 and "pip install 'spa[torch]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_softmax_behind_a_transpose_is_distilled_over_its_class_axis(tmp_path):
    from models_zoo import wild

    kinds = output_kinds(onnx.load(wild.crnn_plain(tmp_path / "crnn.onnx")))  # softmax on [T, B, C], then [B, T, C]
    assert [(k.loss, k.axis, k.scores) for k in kinds] == [("kl", 2, "probabilities")]
