"""fastrobust.eval: the evaluation cascade, presets, reports and plots, on a SmallCNN trained
for a few epochs on sklearn digits inside the module (seconds on a CPU)."""
import csv
import dataclasses
import json
import struct

import pytest
import torch

from fastrobust.attacks import PGD, APGD, HypocriticalPGD
from fastrobust.data import TensorLoader, load_digits
from fastrobust.eval import (DEFAULT_ATTACKS, PRESETS, EvalReport, evaluate, make_attack, plots, write_report)
from fastrobust.eval.presets import HYPOCRITICAL
from fastrobust.testing import train_digits_cnn

pytestmark = pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning")

EPS = 0.1  # robust accuracy about 40 % under PGD-20 for the model below
N = 96


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """These modules run with one intra-op thread (conftest.one_thread)."""


@pytest.fixture(scope="module")
def model():
    """SmallCNN (width 16), 6 epochs of Adam on the digits train split (about 96 % test accuracy)."""
    x, y = load_digits("train")
    return train_digits_cnn(x, y)


@pytest.fixture(scope="module")
def test_set():
    return load_digits("test")


@pytest.fixture(scope="module")
def cascade_report(model, test_set):
    """pgd20 -> fat -> cw in cascade (plus the hypocritical risk), batch 40 to cross batches."""
    return evaluate(model, test_set, attacks=["pgd20", "fat", "hypocritical", "cw"], eps=EPS, n=N, batch_size=40,
                    seed=3)


def test_clean_accuracy_equals_direct_computation(model, test_set):
    x, y = test_set
    report = evaluate(model, (x, y), attacks=[], n=150, batch_size=64)
    with torch.no_grad():
        correct = model(x[:150]).argmax(1) == y[:150]
    assert report.n == 150
    assert report.clean_accuracy == correct.sum().item() / 150
    assert torch.equal(report.clean_correct, correct)
    assert report.robust_accuracy == report.clean_accuracy and report.attacks == []
    assert report.clean_accuracy > 0.85


def test_cascade_is_non_increasing_and_the_and_of_the_attacks(cascade_report):
    r = cascade_report
    assert isinstance(r, EvalReport) and r.n == N and r.cascade
    cascade = [a for a in r.attacks if a.kind == "cascade"]
    assert [a.name for a in cascade] == ["pgd20", "fat", "cw"]
    accs = [r.clean_accuracy] + [a.robust_accuracy for a in cascade]
    assert all(b <= a for a, b in zip(accs, accs[1:])), accs
    assert 0.1 < r.robust_accuracy < r.clean_accuracy  # the eps is neither trivial nor total
    # per sample: robust = clean-correct AND not broken by any attack
    expected = r.clean_correct.clone()
    for a in cascade:
        assert a.success.shape == (N,) and a.success.dtype == torch.bool
        assert not (a.success & ~expected).any()  # only points still robust were attacked
        assert a.points_attacked == int(expected.sum())
        expected &= ~a.success
        assert a.robust_accuracy == expected.sum().item() / N
        assert a.successes == int(a.success.sum())
        assert a.forwards >= a.points_attacked and a.backwards > 0
        assert a.time_s > 0 and a.images_per_s == pytest.approx(a.points_attacked / a.time_s)
    assert torch.equal(r.robust, expected)
    assert r.robust_accuracy == cascade[-1].robust_accuracy
    # PGD-20's pass counts: 20 gradient steps and one evaluation forward per attacked point
    assert cascade[0].backwards == 20 * cascade[0].points_attacked
    assert cascade[0].forwards == 21 * cascade[0].points_attacked


def test_hypocritical_risk_on_misclassified_points(cascade_report):
    r = cascade_report
    (h,) = [a for a in r.attacks if a.kind == HYPOCRITICAL]
    wrong = ~r.clean_correct
    assert h.points_attacked == int(wrong.sum()) and h.robust_accuracy is None
    assert not (h.success & r.clean_correct).any()
    if h.points_attacked:
        assert h.hypocritical_risk == h.successes / h.points_attacked == r.hypocritical_risk
    else:
        assert h.hypocritical_risk is None
    # not part of the cascade: the next attack saw the points robust after the one before it
    fat, cw = r.attack("fat"), r.attack("cw")
    assert cw.points_attacked == round(fat.robust_accuracy * N)


def _det_pgd(steps):
    """A deterministic attack (start at x), so each point's outcome does not depend on the batch."""
    def factory(model, eps, norm, seed, autocast):
        return PGD(model, eps=eps, alpha=eps / 4, steps=steps, norm=norm, random_start=False, seed=seed,
                   autocast=autocast)
    return factory


def test_cascade_equals_independent_runs(model, test_set):
    attacks = [("pgd3", _det_pgd(3)), ("pgd10", _det_pgd(10))]
    cascaded = evaluate(model, test_set, attacks=attacks, eps=EPS, n=64, batch_size=32)
    alone = evaluate(model, test_set, attacks=attacks, eps=EPS, n=64, batch_size=64, cascade=False)
    assert [a.points_attacked for a in alone.attacks] == [int(alone.clean_correct.sum())] * 2
    assert alone.attacks[0].accuracy_alone is not None and cascaded.attacks[0].accuracy_alone is None
    each = [alone.clean_correct & ~a.success for a in alone.attacks]
    assert [a.accuracy_alone for a in alone.attacks] == [e.sum().item() / 64 for e in each]
    # the cascade's result is the per-sample AND of the attacks run on their own
    assert torch.equal(cascaded.robust, each[0] & each[1])
    assert torch.equal(alone.robust, cascaded.robust)
    assert cascaded.attacks[1].points_attacked == int(each[0].sum())
    assert cascaded.attacks[0].params["attack"] == "PGD" and cascaded.attacks[0].params["steps"] == 3


def test_tensorloader_data_and_seed_reproducibility(model, test_set):
    x, y = test_set
    loader = TensorLoader(x, y, batch_size=50, shuffle=True, seed=7)

    def pgd5(model, eps, norm, seed, autocast):  # random start: the seed matters
        return make_attack("pgd20", model, eps, norm, seed=seed, autocast=autocast, steps=5)

    a = evaluate(model, loader, attacks=[("pgd5", pgd5)], eps=EPS, n=48, seed=11, batch_size=20)
    b = evaluate(model, (x, y), attacks=[("pgd5", pgd5)], eps=EPS, n=48, seed=11, batch_size=20)
    assert torch.equal(a.robust, b.robust) and torch.equal(a.attacks[0].success, b.attacks[0].success)
    assert "TensorLoader" in a.metadata["data"]


def test_attack_instances_and_spec_errors(model, test_set):
    x, y = test_set
    attack = APGD(model, eps=EPS, steps=10, seed=0)
    report = evaluate(model, (x, y), attacks=[("apgd10", attack), HypocriticalPGD(model, eps=EPS, steps=3, seed=0)],
                      eps=EPS, n=40)
    assert [a.name for a in report.attacks] == ["apgd10", "HypocriticalPGD"]
    assert report.attacks[1].kind == HYPOCRITICAL
    assert report.attacks[0].params["steps"] == 10
    with pytest.raises(ValueError, match="unknown attack preset"):
        evaluate(model, (x, y), attacks=["pgd-7"], n=4)
    with pytest.raises(TypeError):
        evaluate(model, (x, y), attacks=[3], n=4)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_presets_build_with_relative_step_sizes(model, norm):
    eps = 0.5
    for name, preset in PRESETS.items():
        if norm not in preset.norms:  # cw-l2: L2 only, and says so
            with pytest.raises(ValueError, match=f"norm: the attack preset '{name}' supports"):
                make_attack(name, model, eps, norm=norm, seed=1)
            continue
        attack = make_attack(name, model, eps, norm=norm, seed=1)
        assert attack.norm == norm and attack.eps == eps and attack.seed == 1, name
        for key, ratio in preset.relative.items():
            assert getattr(attack, key) == pytest.approx(ratio * eps), (name, key)
    assert make_attack("pgd20", model, eps, steps=7).steps == 7
    assert set(DEFAULT_ATTACKS) <= set(PRESETS)
    assert PRESETS["pgd100-restarts5"].build(model, eps).restarts == 5
    assert PRESETS["hypocritical"].role == HYPOCRITICAL


# ------------------------------------------------------------------------------------ reports

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes=4000):
    data = open(path, "rb").read()
    assert data[:8] == PNG_SIGNATURE, path
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width >= 200 and height >= 150, (width, height)
    assert len(data) >= min_bytes, len(data)
    import matplotlib.image
    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.01  # something was drawn
    # more than a frame: many distinct colours / grey levels
    assert len(torch.from_numpy(pixels[..., :3].reshape(-1, 3).copy()).unique(dim=0)) > 20


def test_write_report_files_parse(model, test_set, tmp_path, cascade_report):
    x, y = test_set
    from fastrobust.eval import run_checks
    # small, quick checks so that the plots have data
    report = dataclasses.replace(cascade_report, checks=run_checks(model, x[:48], y[:48], EPS, checks=["eps_sweep", "steps", "loss_curve"],
                               options={"eps_sweep": {"steps": 5, "eps_values": [EPS / 2, EPS]},
                                        "steps": {"steps": (2, 8), "restarts": 2},
                                        "loss_curve": {"steps": 8}}))
    paths = write_report(report, tmp_path / "eval")
    assert set(paths) == {"json", "csv", "md", "accuracy_vs_eps", "accuracy_vs_steps", "loss_curves"}
    doc = json.loads(open(paths["json"]).read())
    assert doc["clean_accuracy"] == report.clean_accuracy and doc["robust_accuracy"] == report.robust_accuracy
    assert [a["name"] for a in doc["attacks"]] == ["pgd20", "fat", "hypocritical", "cw"]
    meta = doc["metadata"]
    for key in ("model", "model_class", "data", "attacks", "eps", "seed", "torch", "fastrobust", "python",
                "git_commit", "timestamp"):
        assert key in meta, key
    assert meta["model"] == "SmallCNN" and meta["seed"] == 3 and meta["eps"] == EPS
    assert {c["name"] for c in doc["checks"]} == {"eps_sweep", "steps", "loss_curve"}
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["attack"] for r in rows] == ["clean", "pgd20", "fat", "hypocritical", "cw", "overall"]
    assert float(rows[1]["robust_accuracy"]) == report.attack("pgd20").robust_accuracy
    assert float(rows[-1]["robust_accuracy"]) == report.robust_accuracy
    md = open(paths["md"]).read()
    assert "| attack |" in md and "| pgd20 |" in md and "**overall**" in md and "Hypocritical risk" in md
    assert "Gradient-masking checks" in md and "accuracy_vs_eps.png" in md
    assert md.count("\n|") >= 6
    for key in ("accuracy_vs_eps", "accuracy_vs_steps", "loss_curves"):
        assert_png(paths[key])
    with_samples = json.loads(json.dumps(report.to_dict(samples=True)))
    assert len(with_samples["robust"]) == N and len(with_samples["attacks"][0]["success"]) == N


def test_plot_training_curves_with_missing_keys(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    lines = []
    for e in range(1, 7):
        rec = {"epoch": e, "train_loss": 2.0 / e, "train_clean_acc": 0.5 + 0.05 * e, "lr": 0.1 * 0.9 ** e}
        if e % 2 == 0:
            rec["test_clean_acc"] = 0.5 + 0.06 * e
            rec["test_pgd_acc"] = 0.2 + 0.03 * e
        if e == 3:
            rec["train_loss"] = "nan"
            del rec["lr"]
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + '\n{"epoch": 7, "train_lo')  # a line cut by a crash
    out = plots.plot_training_curves(path)
    assert out.endswith("training_curves.png")
    assert_png(out)
    # no accuracy keys at all still plots
    path2 = tmp_path / "m2.jsonl"
    path2.write_text(json.dumps({"loss": 1.0}) + "\n" + json.dumps({"loss": 0.5}) + "\n")
    assert_png(plots.plot_training_curves(path2, tmp_path / "m2.png"), min_bytes=2000)


def test_plot_benchmark_ratios(tmp_path):
    result = {"suite": "demo", "device": "cpu", "metadata": {"device_name": "test cpu"}, "cases": [
        {"case": "a fp32 fwd", "speedup_of_fused": {"reference": 2.5, "compiled": 1.2}},
        {"case": "b fp32 fwd+bwd", "speedup_of_fused": {"reference": 0.8, "compiled": None}},
        # no speedup_of_fused: computed from the implementations' medians
        {"case": "pgd-10", "implementations": {"fastrobust": {"median_s": 0.5}, "reference": {"median_s": 1.5}}},
    ]}
    src = tmp_path / "demo-cpu.json"
    src.write_text(json.dumps(result))
    names, ratios = plots.benchmark_ratios(result)
    assert names == ["a fp32 fwd", "b fp32 fwd+bwd", "pgd-10"]
    assert ratios == {"reference": [2.5, 0.8, 3.0]}
    assert set(plots.benchmark_ratios(result, None)[1]) == {"reference", "compiled"}
    out = plots.plot_benchmark_ratios(src)
    assert out.endswith("demo-cpu-ratios.png")
    assert_png(out)


def test_plots_accept_series_mappings(tmp_path):
    eps = {"model a": {"eps": [0, 0.1, 0.2], "accuracy": [0.9, 0.5, 0.0]},
           "model b": {"eps": [0, 0.1, 0.2], "accuracy": [0.8, 0.6, 0.1]}}
    assert_png(plots.plot_accuracy_vs_eps(eps, tmp_path / "eps.png"))
    assert_png(plots.plot_loss_curves({"ce": [0.1, 0.5, 0.9], "cw": [-3, -1, 2.0]}, tmp_path / "loss.png"))
    assert_png(plots.plot_accuracy_vs_steps({"steps": [0, 10, 50], "accuracy": [0.9, 0.4, 0.38]},
                                            tmp_path / "steps.png"))


def test_evaluation_does_not_import_training():
    # Evaluation reads a run's metrics.jsonl through fastrobust.metrics_log, never fastrobust.train.
    import subprocess
    import sys

    code = ("import sys, fastrobust.eval, fastrobust.eval.plots; "
            "print([m for m in sys.modules if m.startswith('fastrobust.train')])")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
