"""Compare only what is comparable: a model is scored on data whose classes its labels cover, by name."""

import io
import json
import os

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from hf_nullspace.card import build_model_card
from hf_nullspace.cli import main as cli
from hf_nullspace.data import spec_from_source
from hf_nullspace.data.labels import LabelCoverageError, label_coverage
from hf_nullspace.finetune import main as finetune_main
from hf_nullspace.finetune import no_base_comparison
from hf_nullspace.robustness import Evaluation, Suite, evaluate_robustness

SHAPES = ["circle", "square", "triangle"]
DIGITS = [str(i) for i in range(10)]
PROCESSOR = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def tiny_vit(names: list[str]) -> ViTForImageClassification:
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    return ViTForImageClassification(config).eval()


def write_shapes(path, num: int = 6, splits=("test",)) -> str:
    """Parquet splits of random 16x16 images labelled circle, square or triangle."""
    rng = np.random.default_rng(0)
    features = Features({"image": Image(), "label": ClassLabel(names=SHAPES)})
    os.makedirs(path, exist_ok=True)
    for split in splits:
        images = []
        for _ in range(num):
            buffer = io.BytesIO()
            PILImage.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        labels = [i % len(SHAPES) for i in range(num)]
        Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
            os.path.join(path, f"{split}.parquet")
        )
    return str(path)


def test_label_coverage_by_name():
    assert "3 of the data's 3 classes are not among the model's 10 labels" in label_coverage(DIGITS, SHAPES)
    assert label_coverage(["Circle", "square", "triangle", "star"], SHAPES) is None  # a superset, by name
    assert label_coverage(list(reversed(SHAPES)), SHAPES) is None  # a permutation: the order check decides
    assert label_coverage(None, SHAPES) is None and label_coverage(DIGITS, None) is None  # nothing to decide
    assert "'triangle' missing" in label_coverage(["circle", "square", "star"], SHAPES)


def test_a_model_of_other_classes_is_refused_unless_asked_for(tmp_path):
    data = write_shapes(tmp_path / "shapes")
    suite = Suite("clean-only", [Evaluation("clean")], spec_from_source(data, split="test"))
    with pytest.raises(LabelCoverageError, match="do not cover the classes of .*shapes.*'circle'"):
        evaluate_robustness(tiny_vit(DIGITS), PROCESSOR, suite=suite, progress=False)
    report = evaluate_robustness(tiny_vit(DIGITS), PROCESSOR, suite=suite, progress=False, remap_labels=True)
    assert report.results["model_0"][0]["num_samples"] == 6
    # a model of the data's classes is scored as it is
    report = evaluate_robustness(tiny_vit(SHAPES), PROCESSOR, suite=suite, progress=False)
    assert report.results["model_0"][0]["num_samples"] == 6


def test_the_evaluate_command_refuses_a_model_of_other_classes(tmp_path):
    model = tmp_path / "digits"
    tiny_vit(DIGITS).save_pretrained(model)
    PROCESSOR.save_pretrained(model)
    data = write_shapes(tmp_path / "shapes")
    command = ["evaluate", str(model), "--suite", "attacks", "--data", data, "--split", "test", "--max-samples", "2"]
    with pytest.raises(LabelCoverageError, match="--remap-labels"):
        cli([*command, "--output-dir", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


def test_the_main_job_scores_the_base_model_only_when_comparable(tmp_path):
    data = write_shapes(tmp_path / "shapes")
    suite = Suite("clean-only", [Evaluation("clean")], spec_from_source(data, split="test"))
    finetuned = tiny_vit(SHAPES).config
    replaced = no_base_comparison(suite, {}, tiny_vit(DIGITS).config, finetuned)
    assert "has 10 labels and was replaced" in replaced
    other = no_base_comparison(suite, {}, tiny_vit(["dog", "cat", "bird"]).config, finetuned)
    assert "its labels are other classes than the data's" in other and "'circle'" in other
    assert no_base_comparison(suite, {}, tiny_vit(["triangle", "circle", "square"]).config, finetuned) is None


@pytest.mark.slow
def test_a_run_with_a_replaced_head_reports_the_finetuned_model_alone(tmp_path):
    base = tmp_path / "digits"
    tiny_vit(DIGITS).save_pretrained(base)
    PROCESSOR.save_pretrained(base)
    data = write_shapes(tmp_path / "shapes", num=8, splits=("train", "test"))
    out = tmp_path / "out"
    results = finetune_main(
        [
            *("--model_name_or_path", str(base), "--dataset_name", data, "--output_dir", str(out)),
            *("--ignore_mismatched_sizes", "true", "--max_steps", "1", "--per_device_train_batch_size", "4"),
            *("--noise_refresh_steps", "1", "--noise_max_updates", "2", "--save_strategy", "no", "--use_cpu", "true"),
            *("--report_to", "none", "--dataloader_num_workers", "0", "--disable_tqdm", "true"),
            *("--robustness_suite", "attacks", "--robustness_max_samples", "4", "--license", "mit"),
        ]
    )
    assert [model["name"] for model in results.robustness["models"]] == ["finetuned"]
    assert "its classifier head has 10 labels and was replaced" in results.no_base_comparison
    saved = json.loads((out / "results.json").read_text())
    assert saved["no_base_comparison"] == results.no_base_comparison
    card = (out / "README.md").read_text()
    assert f"**No comparison with the base model:** {results.no_base_comparison}" in card


def test_the_card_says_why_there_is_no_base_comparison():
    row = {
        "benchmark": "clean",
        "metric": "accuracy",
        "value": 0.75,
        "dataset_type": "shapes",
        "dataset_name": "shapes",
        "dataset_config": None,
        "dataset_split": "test",
        "num_samples": 6,
        "params": {},
    }
    why = "the base model was not scored: its labels are other classes than the data's."
    results = {
        "model_name": "shapes-nullspace",
        "robustness": {"models": [{"name": "finetuned", "path": "out", "results": [row]}]},
        "no_base_comparison": why,
    }
    text = build_model_card(results).text
    assert f"**No comparison with the base model:** {why}" in text
    assert "| clean | shapes (test) | Accuracy ↑ | — | 75.00% | — | 6 |" in text
