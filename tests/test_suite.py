import json
import os

import pytest
import torch
from testing_utils import make_tiny_vit, manual_accuracy, tiny_processor, write_images

from hf_nullspace.data import BenchmarkSpec
from hf_nullspace.data.imagenet_classes import IMAGENET_A_INDICES_IN_1K
from hf_nullspace.robustness import Evaluation, Suite, evaluate_robustness, get_suite

PROCESSOR = tiny_processor()


def spec(path, label_space="custom", num_classes=10):
    return BenchmarkSpec(name="local", path=path, split="test", label_space=label_space, num_classes=num_classes)


def test_clean_accuracy_equals_a_manual_computation(tmp_path):
    model = make_tiny_vit().eval()
    data = write_images(tmp_path / "data")
    suite = Suite("clean-only", [Evaluation("clean")], spec(data))
    report = evaluate_robustness(model, PROCESSOR, suite=suite, batch_size=10, progress=False)
    row = report.to_dict()["models"][0]["results"][0]
    assert row["num_samples"] == 24 and row["skipped"] == 0
    assert row["value"] == pytest.approx(manual_accuracy(model, data))


def test_200_class_benchmark_scores_the_subset_of_1000_way_logits(tmp_path):
    model = make_tiny_vit(num_labels=1000).eval()
    data = write_images(tmp_path / "data", num=40, num_classes=200)
    suite = Suite("a", [Evaluation("imagenet-a-like")], spec(data, "imagenet-a-200", 200))
    report = evaluate_robustness(model, PROCESSOR, suite=suite, progress=False)
    expected = manual_accuracy(model, data, columns=IMAGENET_A_INDICES_IN_1K)
    assert report.value("model_0", "imagenet-a-like") == pytest.approx(expected)


def test_attack_and_corruption_rows_are_deterministic_and_complete(tmp_path):
    model = make_tiny_vit().eval()
    data = write_images(tmp_path / "data", num=12)
    suite = get_suite("mnist", data=spec(data))
    first = evaluate_robustness({"m": model}, PROCESSOR, suite=suite, seed=3, progress=False).to_dict()
    second = evaluate_robustness({"m": model}, PROCESSOR, suite=suite, seed=3, progress=False).to_dict()
    assert first == second
    results = {r["benchmark"]: r for r in first["models"][0]["results"]}
    assert {"clean", "fgsm@0.02", "pgd@0.05", "corruption/contrast", "corruptions"} <= set(results)
    assert len(first["models"][0]["details"]) == 10 * 5  # 10 digit corruptions x 5 severities
    contrast = [r["value"] for r in first["models"][0]["details"] if r["corruption"] == "contrast"]
    assert results["corruption/contrast"]["value"] == pytest.approx(sum(contrast) / 5)


def test_label_space_mismatch_and_unknown_suite_fail_before_any_work(tmp_path):
    model = make_tiny_vit().eval()
    data = write_images(tmp_path / "data", num=4, num_classes=200)
    suite = Suite("v2", [Evaluation("imagenet-v2", source="imagenet-v2")], paths={"imagenet-v2": data})
    with pytest.raises(ValueError, match="10 labels cannot be scored on 'imagenet-v2'"):
        evaluate_robustness(model, PROCESSOR, suite=suite, progress=False)
    with pytest.raises(ValueError, match="Valid suites: mnist, imagenet, attacks, corruptions, shift"):
        evaluate_robustness(model, PROCESSOR, suite="imagenet-x", progress=False)


def test_undecodable_images_are_skipped_and_counted(tmp_path):
    model = make_tiny_vit().eval()
    data = write_images(tmp_path / "data", num=30, corrupt_rows=(4, 17))
    suite = Suite("clean-only", [Evaluation("clean")], spec(data))
    report = evaluate_robustness(model, PROCESSOR, suite=suite, max_skip_fraction=0.5, progress=False)
    row = report.to_dict()["models"][0]["results"][0]
    assert row["num_samples"] == 28 and row["skipped"] == 2
    assert row["skipped_by_kind"] == {"corrupt_image": 2}


def test_two_models_side_by_side_report_figures_and_card(tmp_path):
    from hf_nullspace.card import build_model_card

    base, other = make_tiny_vit().eval(), make_tiny_vit(hidden_size=24).eval()
    data = write_images(tmp_path / "data", num=10)
    suite = Suite("small", [Evaluation("clean"), *get_suite("mnist").evaluations[6:16]], spec(data))
    report = evaluate_robustness({"base": base, "finetuned": other}, PROCESSOR, suite=suite, progress=False)
    figures = report.save(str(tmp_path / "out"))
    assert sorted(os.path.basename(f) for f in figures) == ["corruption_severity.png", "robustness.png"]
    assert all(os.path.getsize(f) > 5000 for f in figures)
    markdown = (tmp_path / "out" / "robustness.md").read_text()
    assert "| benchmark | metric | base | finetuned | change |" in markdown and "relative_mce" in markdown
    saved = json.loads((tmp_path / "out" / "robustness.json").read_text())
    relative = [r for r in saved["models"][1]["results"] if r["metric"] == "relative_mce"][0]
    ratios = [
        (1 - report.value("finetuned", f"corruption/{c}")) / (1 - report.value("base", f"corruption/{c}"))
        for c in ("gaussian_noise", "shot_noise")
    ]
    assert relative["value"] == pytest.approx(sum(ratios) / 2, rel=1e-6)
    card = build_model_card({"model_name": "tiny", "base_model": "base", "robustness": saved})
    assert {r.dataset_type for r in card.data.eval_results} == {"local"}


def test_sample_caps_read_evenly_spaced_rows_and_are_stated(tmp_path):
    from hf_nullspace.robustness.evaluate import _Selection

    assert [i for i in range(12) if i in _Selection(4, 12)] == [2, 5, 8, 11]
    assert [i for i in range(12) if i in _Selection(4, None)] == [0, 1, 2, 3]  # size unknown: the first rows
    model = make_tiny_vit().eval()
    data = write_images(tmp_path / "data", num=12)
    suite = Suite(
        "s",
        [Evaluation("clean"), Evaluation("fgsm@0.1", group="attack", attack="fgsm", params=(("epsilon", 0.1),))],
        spec(data),
    )
    report = evaluate_robustness({"m": model}, PROCESSOR, suite=suite, sample_caps={"attack": 4}, progress=False)
    rows = {r["benchmark"]: r for r in report.to_dict()["models"][0]["results"]}
    assert rows["clean"]["num_samples"] == 12 and "max_samples" not in rows["clean"]["params"]
    assert rows["fgsm@0.1"]["num_samples"] == 4 and rows["fgsm@0.1"]["params"] == {"epsilon": 0.1, "max_samples": 4}
    assert rows["fgsm@0.1"]["sampling"]["selection"] == "evenly spaced over the 12 rows"
    with pytest.raises(ValueError, match=r"Sample caps for \['cw'\] match nothing"):
        evaluate_robustness({"m": model}, PROCESSOR, suite=suite, sample_caps={"cw": 4}, progress=False)
    # bf16 autocast (meant for GPUs) runs on CPU too: the accuracy of the model's bfloat16 predictions, exactly
    autocast = []
    hook = model.classifier.register_forward_hook(
        lambda module, args, output: autocast.append(
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        )
    )
    try:
        bf16 = evaluate_robustness({"m": model}, PROCESSOR, suite=suite, bf16=True, progress=False)
    finally:
        hook.remove()
    assert autocast and set(autocast) == {torch.bfloat16}
    assert bf16.value("m", "clean") == manual_accuracy(model, data, bf16=True)
    assert report.value("m", "clean") == manual_accuracy(model, data)
