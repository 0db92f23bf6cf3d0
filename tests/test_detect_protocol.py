"""fastrobust.detect.protocol: the survey's protocol without its leaks: correct images only,
thresholds from validation images, nothing fitted on the test split."""
import pytest
import torch

from fastrobust.data import load_digits
from fastrobust.detect import KDBU, FeatureSqueezing
from fastrobust.detect.protocol import (NSS_EPS, detection_split, evaluate_detectors, nss_training_set,
                                        predictions)
from fastrobust.detect.survey_attacks import SURVEY_ATTACKS, attacks_for, survey_attack

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def setup(survey_digits_model):
    x, y = load_digits("train")
    xt, yt = load_digits("test")
    model = survey_digits_model
    return model, detection_split(model, x, y, xt[:120], yt[:120], max_fit=300)


def test_split_keeps_correct_images_and_holds_out_validation(setup):
    model, data = setup
    for xs, ys in ((data.fit_x, data.fit_y), (data.val_x, data.val_y), (data.test_x, data.test_y)):
        assert torch.equal(predictions(model, xs), ys)
    assert len(data.fit_x) == 300 and len(data.val_x) > 200
    fit_rows = {tuple(r.flatten().tolist()) for r in data.fit_x}
    assert not any(tuple(r.flatten().tolist()) in fit_rows for r in data.val_x[:50])
    with pytest.raises(ValueError, match="val_fraction"):
        detection_split(model, data.fit_x, data.fit_y, data.test_x, data.test_y, val_fraction=1.0)


def test_survey_attacks_stay_in_the_ball_and_names_are_checked(setup):
    model, data = setup
    x, y = data.test_x[:16], data.test_y[:16]
    for name in ("fgsm", "bim", "pgd", "cw", "square"):
        adv = survey_attack(name, model, 32 / 256)(x, y)
        assert (adv - x).abs().max() <= 32 / 256 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert set(SURVEY_ATTACKS) >= {"fgsm", "bim", "pgd", "cw", "deepfool", "square"}
    with pytest.raises(ValueError, match="attacks"):
        attacks_for(model, ["zoo"], 0.1)


def test_nss_training_set_uses_each_radius_on_its_block(setup):
    model, data = setup
    x, y = data.fit_x[:50], data.fit_y[:50]
    adv = nss_training_set(model, x, y, (1, 1, 1, 1, 1, 0))
    dist = (adv - x).flatten(1).abs().max(1).values
    for i, eps in enumerate(NSS_EPS[:5]):
        assert dist[i * 10:(i + 1) * 10].max() <= eps + 1e-6
    assert dist[40:].max() > 2 * NSS_EPS[1]  # the 5/16 block is not held to the small radii


def test_report_rows_and_a_poisoned_test_split_changes_nothing_fitted(setup):
    """Thresholds (and so every fitted object they come from) are the same whatever the test
    split holds; the metrics are in range and the per-attack fit is recorded."""
    model, data = setup
    from fastrobust.attacks import PGD

    # two cheap attacks (the survey's PGD takes 100 steps)
    attacks = {"fgsm": survey_attack("fgsm", model, 32 / 256),
               "pgd10": PGD(model, eps=32 / 256, alpha=0.03, steps=10, random_start=False)}
    detectors = {"fs": FeatureSqueezing(), "kd_bu": KDBU(passes=5)}
    report = evaluate_detectors(model, detectors, attacks, data)
    poisoned = type(data)(data.fit_x, data.fit_y, data.val_x, data.val_y, torch.rand_like(data.test_x),
                          data.test_y)
    again = evaluate_detectors(model, detectors, attacks, poisoned)
    for name in detectors:
        assert report["detectors"][name]["threshold"] == again["detectors"][name]["threshold"]
    assert report["detectors"]["kd_bu"]["per_attack_fit"] and not report["detectors"]["fs"]["per_attack_fit"]
    for entry in report["detectors"].values():
        for row in entry["attacks"].values():
            assert 0 <= row["success_vs_detector"] <= row["attack_success"] <= 1
            assert row["n_success"] > 0 and 0 <= row["auroc"] <= 1 and 0 <= row["fpr"] <= 1
            assert len(row["roc"]["fpr"]) == len(row["roc"]["tpr"])
    assert report["detectors"]["kd_bu"]["attacks"]["pgd10"]["auroc"] > 0.7
