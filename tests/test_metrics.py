import os

import pytest

from hf_nullspace.data.imagenet_c import ALEXNET_ERR
from hf_nullspace.robustness.metrics import corruption_errors, mean_corruption_error, paper_average


def test_paper_average_reproduces_table_1():
    # ViT-S + NS row of the paper's Table 1: Average 34.45
    row = {
        "clean": 77.47,
        "patchfool": 19.10,
        "cw": 9.37,
        "fgsm": 25.95,
        "damagenet": 32.43,
        "imagenet-a": 20.77,
        "imagenet-c": 55.98,
        "imagenet-v2": 66.50,
        "imagenet-r": 41.61,
        "imagenet-sketch": 25.67,
        "stylized-imagenet": 16.02,
    }
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


# ---------------------------------------------------------------- aggregate rows of a report


def _report(corruptions, severities=(1, 2, 3, 4, 5), shift=True):
    from hf_nullspace.data import get_benchmark
    from hf_nullspace.robustness import get_suite
    from hf_nullspace.robustness.report import RobustnessReport

    paths = {"stylized-imagenet": "/s", "damagenet": "/d"} if shift else {}
    suite = get_suite("imagenet", paths=paths, corruptions=corruptions, severities=severities)
    sources = {name: spec for name, spec in suite.sources().items()}
    report = RobustnessReport("imagenet", {"base": "b", "finetuned": "f"})
    for name, correct in (("base", 40), ("finetuned", 60)):
        for evaluation in suite.evaluations:
            spec = sources[evaluation.source] if evaluation.source != "data" else get_benchmark("imagenet")
            report.add(name, evaluation, spec, correct, {"seen": 100, "kept": 100, "counts": {}})
    report.finalize()
    return {(r["benchmark"], r["metric"]): r for r in report.to_dict()["models"][1]["results"]}


def test_aggregates_say_what_they_aggregate():
    from hf_nullspace.data.registry import IMAGENET_C_REPO, IMAGENET_C_REVISION

    rows = _report(None)
    mce = rows[("imagenet-c", "mce")]
    assert mce["dataset_type"] == IMAGENET_C_REPO and mce["dataset_revision"] == IMAGENET_C_REVISION
    assert mce["dataset_name"] == "ImageNet-C (15 corruptions x 1-5 severities)"
    assert mce["dataset_config"] is None and mce["dataset_split"] is None and mce["num_samples"] == 7500
    assert mce["value"] == pytest.approx(mean_corruption_error({c: [0.4] * 5 for c in ALEXNET_ERR}) / 100)
    fog = rows[("imagenet-c/fog", "accuracy")]
    assert fog["dataset_config"] == "fog" and fog["dataset_name"] == "ImageNet-C fog, mean over severities 1-5"
    assert fog["dataset_split"] == "severity_1, severity_2, severity_3, severity_4, severity_5"
    average = rows[("average", "average")]
    assert average["dataset_type"] == "paper-average" and "11 columns" in average["dataset_name"]
    assert average["dataset_split"] is None and average["value"] == pytest.approx((10 * 0.6 + 1 - mce["value"]) / 11)
    # the attacks' settings are in every row that the card and the model-index show
    assert rows[("cw", "accuracy")]["params"] == {
        "c": 1.0,
        "kappa": 0.0,
        "steps": 100,
        "lr": 0.01,
        "binary_search_steps": 1,
        "abort_early": True,
    }
    assert rows[("patchfool", "accuracy")]["params"]["steps"] == 250
    assert rows[("fgsm@1/255", "accuracy")]["params"] == {"epsilon": 1 / 255}
    assert rows[("clean", "accuracy")]["dataset_type"] == "ILSVRC/imagenet-1k"


def test_a_subset_of_corruptions_gives_a_named_partial_mce_and_no_average():
    rows = _report(["fog", "snow"], severities=(1, 5))
    assert ("imagenet-c", "mce") not in rows and ("average", "average") not in rows
    partial = rows[("imagenet-c-partial", "partial_mce")]
    assert partial["dataset_name"] == "ImageNet-C, 2 of 15 corruptions (2 corruptions x 1, 5 severities)"
    assert partial["dataset_config"] == "snow,fog" and partial["dataset_split"] == "severity_1,severity_5"
    assert partial["params"]["missing"][:2] == ["gaussian_noise", "shot_noise"]
    assert partial["params"]["severities"] == {"snow": [1, 5], "fog": [1, 5]}
    assert rows[("imagenet-c", "accuracy")]["value"] == pytest.approx(0.6)
