"""The card's model-index as the Hub reads it: one value per task, dataset (type, config), split and metric type."""

import random
from collections import Counter

import pytest
import yaml
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_nullspace.card import build_model_card
from hf_nullspace.robustness import get_suite
from hf_nullspace.robustness.report import RobustnessReport


def fake_report(suite_name: str, models=("base", "finetuned"), seed: int = 0) -> RobustnessReport:
    """A report of `suite_name` with made-up hit counts, built as `evaluate_robustness` builds it (real rows,
    aggregates included)."""
    rng = random.Random(seed)
    suite = get_suite(suite_name)
    specs = suite.sources()
    report = RobustnessReport(suite.name, {name: name for name in models})
    for name in models:
        for evaluation in suite.evaluations:
            report.add(name, evaluation, specs[evaluation.source], rng.randint(300, 990), {"seen": 1000, "kept": 1000})
    report.finalize()
    return report


def card_results(suite_name: str, eval_split: str) -> dict:
    return {
        "model_name": "tiny-nullspace",
        "base_model": "google/vit-base-patch16-224",
        "license": "apache-2.0",
        "dataset": {"name": "hf_nullspace/assets/mnist", "config": None, "split": "train"},
        "eval_dataset": {"name": "hf_nullspace/assets/mnist", "config": None, "split": eval_split},
        "eval": {"eval_accuracy": 0.912345678, "eval_loss": 0.123456789, "eval_runtime": 2.0},
        "robustness": fake_report(suite_name).to_dict(),
    }


def hub_entries(results: dict):
    card = build_model_card(results, repo_id="org/tiny-nullspace")
    metadata = yaml.safe_load(card.content.split("---")[1])
    name, entries = model_index_to_eval_results(metadata["model-index"])
    assert name == "tiny-nullspace"
    return entries


def hub_group(entry) -> tuple:
    return (entry.task_type, entry.dataset_type, entry.dataset_config, entry.dataset_split, entry.metric_type)


@pytest.mark.parametrize("suite_name", ["mnist", "imagenet"])
def test_every_result_has_a_hub_group_of_its_own(suite_name):
    entries = hub_entries(card_results(suite_name, eval_split="test"))
    groups = Counter(hub_group(entry) for entry in entries)
    assert len(entries) > 10
    assert [group for group, count in groups.items() if count > 1] == []


def test_attacks_and_corruptions_keep_their_identity_and_the_clean_accuracy_appears_once():
    entries = hub_entries(card_results("mnist", eval_split="test"))
    on_clean_data = [e for e in entries if e.dataset_type == "mnist" and e.dataset_split == "test"]
    clean = [e for e in on_clean_data if e.dataset_config is None and e.metric_type == "accuracy"]
    assert len(clean) == 1 and clean[0].metric_value == pytest.approx(0.9123, abs=1e-12)
    configs = {e.dataset_config: e for e in on_clean_data}
    assert {"fgsm@0.02", "fgsm@0.1", "pgd@0.05", "corruption/contrast", "corruptions"} <= set(configs)
    assert "contrast" in configs["corruption/contrast"].dataset_name
    assert configs["fgsm@0.1"].metric_args["epsilon"] == pytest.approx(0.1)
    # every entry of an evaluation is in its group: the corruptions' mean accuracy and relative mCE together
    aggregate = [e for e in entries if e.metric_name.startswith("corruptions ")]
    assert sorted(e.metric_type for e in aggregate) == ["accuracy", "relative_mce"]
    assert {e.dataset_config for e in aggregate} == {"corruptions"}


def test_attack_budgets_read_as_fractions_of_1_255_and_no_pseudo_dataset():
    entries = hub_entries(card_results("imagenet", eval_split="validation"))
    assert "paper-average" not in {entry.dataset_type for entry in entries}
    by_config = {(entry.dataset_type, entry.dataset_config): entry for entry in entries}
    assert ("ILSVRC/imagenet-1k", "fgsm@1/255") in by_config
    assert not any("0.0039" in str(entry.dataset_config) + entry.metric_name for entry in entries)


def test_values_are_rounded():
    entries = hub_entries(card_results("mnist", eval_split="test"))
    for entry in entries:
        assert entry.metric_value == round(entry.metric_value, 4), entry
    loss = next(entry for entry in entries if entry.metric_type == "loss")
    assert loss.metric_value == pytest.approx(0.1235, abs=1e-12)


def test_the_suites_clean_accuracy_stays_when_it_is_another_split():
    entries = hub_entries(card_results("mnist", eval_split="validation"))
    clean = [e for e in entries if e.dataset_config is None and e.metric_type == "accuracy"]
    assert sorted(e.dataset_split for e in clean) == ["test", "validation"]
