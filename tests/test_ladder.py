"""LADDER's pieces: the latent codes, the decoder, the batched pair SVMs (equal to separately
trained pairs), and the generation (latents move towards the target class)."""
import copy

import pytest
import torch

from fastrobust.data import load_digits
from fastrobust.ladder import (LatentDecoder, PairSVM, boundary_examples, fit_decoder, fit_pair_svm, flip_search,
                               label_fidelity, latent_features, logits_from_latent, move_latents, pair_batches,
                               pair_svm_loss, random_targets)


def test_latent_is_the_input_of_the_last_linear(digits_model, digits_test_set):
    x, _ = digits_test_set
    x = x[:16]
    m = digits_model
    expected = torch.flatten(m.pool(m.layer2(m.layer1(m.normalize(x)))), 1)
    h = latent_features(m, x)
    assert torch.allclose(h, expected)
    assert torch.allclose(logits_from_latent(m, h), m(x), atol=1e-5)
    assert torch.allclose(latent_features(m, x, layer="layer1"), m.layer1(m.normalize(x)).flatten(1))
    with pytest.raises(ValueError, match="layer"):
        latent_features(m, x, layer="nope")


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 7, 9), (3, 32, 32)])
def test_decoder_shapes(shape):
    dec = LatentDecoder(20, shape, width=8)
    out = dec(torch.randn(5, 20))
    assert out.shape == (5, *shape) and 0 <= out.min() and out.max() <= 1
    assert LatentDecoder.official_mnist(500)(torch.randn(2, 500)).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="image_shape"):
        LatentDecoder(20, (8, 8))


def test_decoder_learns_to_rebuild_digits(digits_model):
    x, _ = load_digits("train")
    x = x[:512]
    dec = LatentDecoder(latent_features(digits_model, x[:1]).shape[1], (1, 8, 8), width=16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(dec(latent_features(digits_model, x)), x).item()
    after = fit_decoder(dec, digits_model, x, epochs=15, generator=g)
    assert after < 0.5 * before


def test_batched_pair_svms_equal_separately_trained_pairs():
    torch.manual_seed(0)
    d, k = 6, 3
    centres = torch.randn(k, d) * 2
    y = torch.arange(k).repeat_interleave(20)
    h = centres[y] + 0.5 * torch.randn(len(y), d)
    batched = PairSVM(d, k)
    separate = []
    for i, pair in enumerate(batched.pairs):
        one = PairSVM(d, k, pairs=[pair])
        with torch.no_grad():
            for name in ("A", "c", "w", "b"):
                getattr(one, name).copy_(getattr(batched, name)[i:i + 1])
        separate.append(one)
    acc = fit_pair_svm(batched, h, y, per_class=20, epochs=100, C=1.0, generator=torch.Generator().manual_seed(1))
    for i, one in enumerate(separate):
        fit_pair_svm(one, h, y, per_class=20, epochs=100, C=1.0, generator=torch.Generator().manual_seed(1))
        s, t = batched.pairs[i]
        torch.testing.assert_close(one.score(h, s, t), batched.score(h, s, t), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(one.direction(t, s), batched.direction(t, s), atol=1e-5, rtol=1e-4)
    assert (acc > 0.9).all()  # separable clusters
    # orientation: the score towards t is minus the score towards s; directions likewise
    torch.testing.assert_close(batched.score(h, 0, 2), -batched.score(h, 2, 0))
    torch.testing.assert_close(batched.direction(0, 2, normalize=True).norm(), torch.tensor(1.0))
    a = batched.attention(h, 1, 2)
    assert (a >= 1).all() and (a <= torch.e + 1e-6).all()
    H, labels = pair_batches(batched, h, y, 5, torch.Generator().manual_seed(0))
    assert H.shape == (3, 10, d) and labels.sum() == 0 and torch.isfinite(pair_svm_loss(batched, H, labels))
    with pytest.raises(ValueError, match="pairs"):
        PairSVM(d, k, pairs=[(1, 1)])


@pytest.fixture(scope="module")
def ladder_parts(digits_model):
    x, y = load_digits("train")
    h = latent_features(digits_model, x)
    svm = PairSVM(h.shape[1], 10)
    fit_pair_svm(svm, h, y, per_class=40, epochs=60, generator=torch.Generator().manual_seed(0))
    dec = LatentDecoder(h.shape[1], (1, 8, 8), width=16)
    fit_decoder(dec, digits_model, x, epochs=10, generator=torch.Generator().manual_seed(0))
    return svm, dec


def test_moved_latents_raise_the_classifiers_target_score(digits_model, ladder_parts, digits_test_set):
    svm, _ = ladder_parts
    x, y = digits_test_set
    h = latent_features(digits_model, x)
    targets = random_targets(y, 10, torch.Generator().manual_seed(0))
    assert (targets != y).all()
    margin = lambda z: z.gather(1, targets[:, None])[:, 0] - z.gather(1, y[:, None])[:, 0]  # noqa: E731
    moved = move_latents(svm, h, y, targets, eta=2.0, normalize=True)
    before = margin(logits_from_latent(digits_model, h))
    after = margin(logits_from_latent(digits_model, moved))
    assert (after - before).mean() > 0
    assert torch.equal(move_latents(svm, h, y, targets, eta=0.0), h)


def test_generation_and_flip_search(digits_model, ladder_parts, digits_test_set):
    svm, dec = ladder_parts
    x, y = digits_test_set
    x, y = x[:64], y[:64]
    g = torch.Generator().manual_seed(0)
    images, targets = boundary_examples(digits_model, dec, svm, x, y, eta=1.0, normalize=True, generator=g)
    assert images.shape == x.shape and (targets != y).all()
    images, targets, etas = flip_search(digits_model, dec, svm, x, y, (0.5, 2.0, 8.0, 32.0), normalize=True,
                                        targets=targets)
    assert set(etas.unique().tolist()) <= {0.5, 2.0, 8.0, 32.0}
    fooled = digits_model(images).argmax(1) != y
    assert fooled[etas < 32.0].all()  # a row below the largest eta flipped there
    assert 0.0 <= label_fidelity(digits_model, images, y) <= 1.0
    other = copy.deepcopy(digits_model)
    assert label_fidelity(other, x, y) > 0.9
    with pytest.raises(ValueError, match="etas"):
        flip_search(digits_model, dec, svm, x, y, ())


def test_ladder_cli_fine_tunes_a_target_and_resumes(tmp_path, capsys):
    """fastrobust train --recipe ladder --target CKPT: the decoder and SVMs are built from the
    target at the first batch, the classifier fine-tuned on 1/2 CE(x') + 1/2 CE(x); a resumed run
    restores them from the checkpoint; the model stays above chance."""
    import json

    from fastrobust.cli import main
    from fastrobust.train.checkpoint import load_checkpoint

    quick = ["--no-progress", "--no-plot", "--eval-every", "0", "--max-steps-per-epoch", "4"]
    assert main(["train", "--data", "digits", "--model", "small_cnn", "--denoise", "none", "--recipe", "standard",
                 "--epochs", "3", "--no-eval", *quick, "--out", str(tmp_path / "clf")]) == 0
    options = json.dumps({"eta": 0.5, "per_class": 20, "svm_epochs": 5, "decoder_epochs": 2, "decoder_width": 8})
    argv = ["train", "--recipe", "ladder", "--target", str(tmp_path / "clf" / "last.pt"), "--recipe-options", options,
            *quick, "--schedule", "constant", "--attacks", "none", "--checks", "none",
            "--out", str(tmp_path / "ladder")]
    assert main([*argv, "--epochs", "1"]) == 0
    state = load_checkpoint(str(tmp_path / "ladder" / "last.pt"))
    assert set(state["recipe"]) >= {"snapshot", "decoder", "svm", "built_epoch"}
    assert main([*argv, "--epochs", "2", "--resume"]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "ladder" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert load_checkpoint(str(tmp_path / "ladder" / "last.pt"))["recipe"]["built_epoch"] == 0  # restored, not rebuilt
    assert all(m["train_loss_generated"] > 0 for m in metrics)
    report = json.loads((tmp_path / "ladder" / "eval" / "report.json").read_text())
    assert report["clean_accuracy"] > 0.5
    capsys.readouterr()


@pytest.mark.parametrize("options, message", [
    (dict(eta=-1.0), "eta"), (dict(etas=()), "etas"), (dict(normalize="yes"), "normalize"),
    (dict(per_class=0), "per_class"), (dict(recompute_every=-1), "recompute_every"), (dict(layer=""), "layer"),
])
def test_ladder_option_errors(options, message):
    from fastrobust.train.recipes import create_recipe

    with pytest.raises(ValueError, match=message):
        create_recipe("ladder", **options)


def test_ladder_prepare_needs_a_target():
    from fastrobust.models import SmallCNN
    from fastrobust.train.recipes import create_recipe

    with pytest.raises(ValueError, match="target"):
        create_recipe("ladder").prepare(SmallCNN(), 10)
