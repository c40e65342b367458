import os

import pytest

from hf_nullspace.data.imagenet_c import ALEXNET_ERR
from hf_nullspace.robustness.metrics import corruption_errors, mean_corruption_error, paper_average


def test_paper_average_reproduces_table_1():
    # ViT-S + NS row of the paper's Table 1: Average 34.45
    row = {
        "clean": 77.47, "patchfool": 19.10, "cw": 9.37, "fgsm": 25.95, "damagenet": 32.43, "imagenet-a": 20.77,
        "imagenet-c": 55.98, "imagenet-v2": 66.50, "imagenet-r": 41.61, "imagenet-sketch": 25.67,
        "stylized-imagenet": 16.02,
    }  # fmt: skip
    assert paper_average(row) == pytest.approx(34.45, abs=0.005)
    del row["cw"]
    with pytest.raises(ValueError, match="missing: \\['cw'\\]"):
        paper_average(row)


def test_mce_is_alexnet_normalised_mean_over_severities():
    errors = {"fog": [0.1, 0.2, 0.3, 0.4, 0.5], "contrast": [0.5] * 5}
    expected_fog = 100 * 0.3 / ALEXNET_ERR["fog"]
    expected_contrast = 100 * 0.5 / ALEXNET_ERR["contrast"]
    assert corruption_errors(errors, ALEXNET_ERR) == pytest.approx(
        {"fog": expected_fog, "contrast": expected_contrast}
    )
    assert mean_corruption_error(errors) == pytest.approx((expected_fog + expected_contrast) / 2)
    # AlexNet itself scores 100
    assert mean_corruption_error({c: [e] * 5 for c, e in ALEXNET_ERR.items()}) == pytest.approx(100.0)


def test_mce_relative_to_a_baseline_model():
    model = {"fog": [0.2, 0.4]}
    baseline = {"fog": [0.4, 0.8]}
    assert mean_corruption_error(model, baseline) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="No reference error"):
        mean_corruption_error({"speckle_noise": [0.1]})


def test_evaluate_module_loads_offline_and_matches():
    import evaluate

    import hf_nullspace.robustness as robustness

    metric = evaluate.load(os.path.join(os.path.dirname(robustness.__file__), "robustness_metric"))
    out = metric.compute(
        predictions=[0, 1, 1, 0], references=[0, 1, 0, 0], groups=["fog/1", "fog/1", "fog/2", "fog/2"]
    )
    assert out["accuracy"] == 0.75
    assert out["accuracy_per_group"] == {"fog/1": 1.0, "fog/2": 0.5}
    assert out["mce"] == pytest.approx(mean_corruption_error({"fog": [0.0, 0.5]}))
