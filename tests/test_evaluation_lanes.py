"""`evaluate_robustness` in lanes (threads that take a process's batches in turn): the report is the one of a single
lane, every lane runs in its own thread on its own copy of the models' modules, and a lane's failure ends the call."""

import os
import threading

import pytest
import torch
from datasets import load_dataset
from transformers import AutoImageProcessor, ViTForImageClassification

from hf_nullspace.data import spec_from_source
from hf_nullspace.robustness import Evaluation, Suite, evaluate_robustness
from hf_nullspace.robustness import evaluate as evaluate_module
from hf_nullspace.robustness.evaluate import evaluation_workers

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hf_nullspace", "assets")
MNIST_MODEL = os.path.join(ASSETS, "vit-tiny-mnist")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The first 64 bundled MNIST test digits as a local parquet source."""
    rows = load_dataset("parquet", data_files=os.path.join(ASSETS, "mnist", "test.parquet"), split="train")
    folder = tmp_path_factory.mktemp("digits")
    rows.select(range(64)).to_parquet(os.path.join(folder, "test.parquet"))
    return spec_from_source(str(folder), split="test", name="digits", num_classes=10)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The bundled MNIST ViT with dropout 0.1 (object, left in train mode), and a perturbed copy saved to a folder."""
    model = ViTForImageClassification.from_pretrained(
        MNIST_MODEL, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
    )
    other = ViTForImageClassification.from_pretrained(MNIST_MODEL)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in other.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    folder = str(tmp_path_factory.mktemp("other"))
    other.save_pretrained(folder)
    AutoImageProcessor.from_pretrained(MNIST_MODEL).save_pretrained(folder)
    return model.train(), folder


def _suite(data) -> Suite:
    def attack(name, kind, **params):
        return Evaluation(name, group="attack", attack=kind, params=tuple(params.items()))

    return Suite(
        "lanes",
        [
            Evaluation("clean"),
            attack("fgsm@0.05", "fgsm", epsilon=0.05),
            attack("fgsm@0.1", "fgsm", epsilon=0.1),
            attack("pgd@0.02", "pgd", epsilon=0.02, step_size=0.005, steps=3),
            attack("pgd@0.05", "pgd", epsilon=0.05, step_size=0.0125, steps=3),
            attack("cw", "cw", c=1.0, kappa=0.0, steps=5, lr=0.01, binary_search_steps=1, abort_early=True),
            attack("patchfool", "patchfool", num_patches=1, steps=3, lr=0.05, selection_layer=3),
            Evaluation("noise", group="corruption", corruption="gaussian_noise", severity=3),
            Evaluation("contrast", group="corruption", corruption="contrast", severity=4),
        ],
        data,
    )


def _values(report) -> dict:
    return {m["name"]: {r["benchmark"]: r["value"] for r in m["results"]} for m in report.to_dict()["models"]}


def test_lanes_give_the_report_of_one_lane(digits, models):
    model, folder = models
    processor = AutoImageProcessor.from_pretrained(MNIST_MODEL)
    threads_seen = set()
    hook = model.vit.embeddings.register_forward_pre_hook(lambda *_: threads_seen.add(threading.get_ident()))
    threads = torch.get_num_threads()
    # CW and Patch-Fool read 20 of the 64 rows: their batches are not the clean row's, so their lanes score the clean
    # verdicts they lack themselves
    run = dict(suite=_suite(digits), sample_caps={"cw": 20, "patchfool": 20}, batch_size=8, seed=3, progress=False)
    try:
        reports = {}
        for workers in (1, 2, 3):
            threads_seen.clear()
            reports[workers] = evaluate_robustness({"a": model, "b": folder}, processor, workers=workers, **run)
            assert len(threads_seen - {threading.get_ident()}) == (0 if workers == 1 else workers)
    finally:
        hook.remove()
    one = _values(reports[1])
    assert 0.1 < one["a"]["pgd@0.05"] < one["a"]["clean"]  # attacked rows, some broken: the comparison is not vacuous
    assert one["a"] != one["b"]
    assert _values(reports[2]) == one and _values(reports[3]) == one
    assert reports[2].source_reads == reports[1].source_reads  # the rows are still read and decoded once
    # the caller's model and threads are as they were: train mode, no patched forward, no eager switch
    assert torch.get_num_threads() == threads
    assert model.training and all(module.training for module in model.modules())
    assert not any("forward" in vars(module) for module in model.modules())
    assert (
        model.config._attn_implementation
        == ViTForImageClassification.from_pretrained(MNIST_MODEL).config._attn_implementation
    )


def test_a_failing_lane_ends_the_evaluation(digits, models, monkeypatch):
    model, _ = models
    processor = AutoImageProcessor.from_pretrained(MNIST_MODEL)
    real_corrupt = evaluate_module.corrupt

    def corrupt(images, name, severity, generator=None):
        if generator == 3 + 5:  # the sixth batch
            raise RuntimeError("corruption failed on batch 5")
        return real_corrupt(images, name, severity, generator=generator)

    monkeypatch.setattr(evaluate_module, "corrupt", corrupt)
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="corruption failed on batch 5"):
        evaluate_robustness(
            {"a": model}, processor, suite=_suite(digits), batch_size=8, seed=3, progress=False, workers=2
        )
    assert torch.get_num_threads() == threads
    assert not any(t.name.startswith("robustness-lane") for t in threading.enumerate())


def test_workers_default_to_the_cores_torch_leaves_idle(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert evaluation_workers("cpu") == 8
        torch.set_num_threads(2)
        assert evaluation_workers("cpu") == 4
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four processes on this machine: two cores each
        assert evaluation_workers("cpu") == 1
        torch.set_num_threads(1)
        assert evaluation_workers("cpu") == 2
    finally:
        torch.set_num_threads(threads)
    assert evaluation_workers("cuda") == 1
    assert evaluation_workers("cuda", workers=3) == 3
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="`workers` must be a positive integer"):
            evaluation_workers("cpu", workers=bad)


def test_lanes_score_an_unmerged_lora_model_as_one_lane(digits):
    """A `PeftModel` (the main job's unmerged LoRA) is copied per lane with its adapters sharing their weights."""
    from peft import LoraConfig, get_peft_model

    from hf_nullspace.robustness.evaluate import _lane_copy

    base = ViTForImageClassification.from_pretrained(MNIST_MODEL, hidden_dropout_prob=0.1)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"]))
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    copy = _lane_copy(model)
    assert all(a is b for a, b in zip(model.parameters(), copy.parameters()))
    assert all(a is not b for a, b in zip(model.modules(), copy.modules()))
    processor = AutoImageProcessor.from_pretrained(MNIST_MODEL)
    suite = _suite(digits)
    suite.evaluations = [e for e in suite.evaluations if e.attack in (None, "fgsm", "pgd")]
    run = dict(suite=suite, batch_size=8, seed=3, progress=False)
    one, two = (
        _values(evaluate_robustness({"lora": model, "base": MNIST_MODEL}, processor, workers=w, **run)) for w in (1, 2)
    )
    assert one == two and one["lora"] != one["base"]
    assert model.training
