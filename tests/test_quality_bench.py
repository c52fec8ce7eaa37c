"""The quality benchmark's parts: rendered words, CTC decoding and scores, and the CRNN's export
analyzed by SPA (bench/words.py, models_zoo/crnn.py; the benchmark is bench/bench_quality.py)."""
from __future__ import annotations

import numpy as np
import pytest

from bench import words


def test_vocabulary_is_seeded_lowercase_words_of_three_to_eight_letters():
    vocab = words.vocabulary(300, seed=4)
    assert vocab == words.vocabulary(300, seed=4) and vocab != words.vocabulary(300, seed=5)
    assert len(set(vocab)) == 300
    assert all(words.MIN_LENGTH <= len(w) <= words.MAX_LENGTH and set(w) <= set(words.ALPHABET) for w in vocab)


def test_rendering_is_deterministic_and_shaped():
    vocab = words.vocabulary(50)
    a, b = words.dataset(6, vocab, seed=3), words.dataset(6, vocab, seed=3)
    assert a.images.shape == (6, 1, words.HEIGHT, words.WIDTH) and a.images.dtype == np.float32
    assert a.texts == b.texts and np.array_equal(a.images, b.images)
    assert 0.0 <= a.images.min() and a.images.max() <= 1.0
    assert not np.array_equal(a.images, words.dataset(6, vocab, seed=4).images)
    # a smaller count is the first samples of a larger one (calibration inputs are training inputs)
    assert np.array_equal(words.dataset(2, vocab, seed=3).images, a.images[:2])


def test_ink_is_where_the_text_is():
    """Dark pixels (ink on a light background) fill columns in proportion to the word's length."""
    rng = np.random.default_rng(0)
    short = np.stack([words.render("ab", rng) for _ in range(20)])
    long = np.stack([words.render("abcdefgh", rng) for _ in range(20)])

    def inked_columns(images):
        # ink: darker than the background by half the image's contrast (ink and background levels vary)
        background = np.median(images, axis=(1, 2), keepdims=True)
        contrast = background - images.min(axis=(1, 2), keepdims=True)
        return ((background - images) > 0.5 * contrast).any(axis=1).sum(axis=1)

    assert (inked_columns(short) > 3).all()
    assert inked_columns(long).mean() > 2.5 * inked_columns(short).mean()
    assert (inked_columns(long) < words.WIDTH).all()


def test_greedy_ctc_decoding_merges_repeats_and_drops_blanks():
    # steps b a a - a b b - c (- the blank): repeats merge, a blank between two a's keeps both
    classes = len(words.ALPHABET) + 1
    path = [2, 1, 1, 0, 1, 2, 2, 0, 3]
    logits = np.full((1, len(path), classes), -5.0, dtype=np.float32)
    logits[0, np.arange(len(path)), path] = 5.0
    assert words.greedy_decode(logits) == ["baabc"]
    assert words.greedy_decode(np.zeros((1, 4, classes), dtype=np.float32)) == [""]


def test_scores_exact_and_character_accuracy():
    assert words.edit_distance("kitten", "sitting") == 3
    assert words.edit_distance("", "abc") == 3
    exact, chars = words.scores(["abcd", "xyz", "abcde"], ["abcd", "xyy", "abcd"])
    assert exact == pytest.approx(1 / 3)
    assert chars == pytest.approx(1 - 2 / 11)
    flat, lengths = words.encode(["ab", "z"])
    assert flat.tolist() == [1, 2, 26] and lengths.tolist() == [2, 1]


@pytest.mark.parametrize("sequence", ["lstm", "transformer"])
def test_crnn_exports_and_spa_finds_prunable_groups(sequence, tmp_path):
    """A tiny untrained CRNN, exported as a user would: SPA analyzes it, prunes it, and the pruned
    recognizer computes what the original does with the removed slices zeroed."""
    torch = pytest.importorskip("torch")
    import spa
    from frontends.torch import export
    from models_zoo.crnn import CRNN
    from spa.oracle import max_relative_error

    torch.manual_seed(0)
    model = CRNN(len(words.ALPHABET) + 1, channels=(8, 8, 16, 16, 16), hidden=8, sequence=sequence,
                 layers=1 if sequence == "lstm" else 2)
    x = torch.from_numpy(words.dataset(2, words.vocabulary(10), seed=0).images)
    assert model.eval()(x).shape == (2, words.WIDTH // 4, len(words.ALPHABET) + 1)
    path = export(model, x, tmp_path / "crnn.onnx")
    analysis = spa.analyze(path)
    assert sum(g.prunable for g in analysis.groups) >= 5  # the five conv blocks at least
    pruned, report = spa.prune(path, 0.25, criterion="l1", round_to=1)
    assert report.params_after < report.params_before
    if sequence == "lstm":  # the transformer's hidden size goes through LayerNorm: no zeroing oracle
        assert max_relative_error(path, pruned, report.removed, {"input": x.numpy()}) < 1e-4
