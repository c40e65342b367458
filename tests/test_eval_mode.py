"""Evaluation, attacks, synthesis and analysis run in eval mode and leave every module's mode as they found it."""

import io
import os

import numpy as np
import pytest
import torch
import transformers
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from transformers import ViTImageProcessor

from hf_nullspace.analysis import permuted_control
from hf_nullspace.classifier import frozen_eval_mode
from hf_nullspace.config import NullspaceArguments
from hf_nullspace.data import BenchmarkSpec, EvalTransform
from hf_nullspace.robustness import Evaluation, Suite, evaluate_robustness
from hf_nullspace.robustness.attacks import run_attack
from hf_nullspace.robustness.model import PixelSpaceClassifier
from hf_nullspace.synthesis import synthesize_noise

PROCESSOR = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
_VIT = dict(image_size=32, num_channels=3, num_labels=10, patch_size=8, hidden_size=32, num_hidden_layers=2)
_DROPOUT = dict(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
# families with dropout and stochastic depth (drop-path) above 0, as many Hub finetunes have
STOCHASTIC_MODELS = {
    "vit": ("ViTForImageClassification", dict(_VIT, **_DROPOUT, num_attention_heads=2, intermediate_size=64)),
    "beit": (
        "BeitForImageClassification",
        dict(_VIT, **_DROPOUT, num_attention_heads=2, intermediate_size=64, drop_path_rate=0.3, use_mean_pooling=True),
    ),
    "swin": (
        "SwinForImageClassification",
        dict(
            image_size=32,
            num_channels=3,
            num_labels=10,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[1, 2],
            window_size=4,
            mlp_ratio=2.0,
            drop_path_rate=0.3,
            **_DROPOUT,
        ),
    ),
}


def stochastic_model(model_type: str) -> torch.nn.Module:
    class_name, config = STOCHASTIC_MODELS[model_type]
    model_class = getattr(transformers, class_name)
    torch.manual_seed(0)
    return model_class(model_class.config_class(**config))


def modes(model: torch.nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def mixed_modes(model: torch.nn.Module) -> torch.nn.Module:
    """Training mode with the first half of the modules in eval mode, so a restore of one flag would show."""
    model.train()
    modules = list(model.modules())
    for module in modules[1 : len(modules) // 2]:
        module.training = False
    return model


def write_images_labelled_by(model, path, num=24):
    """Random images labelled with `model`'s eval-mode predictions: its eval-mode accuracy on them is exactly 1."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(num):
        buffer = io.BytesIO()
        PILImage.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
    transform = EvalTransform(32, crop_pct=1.0)
    pixels = torch.stack([transform(PILImage.open(io.BytesIO(image["bytes"]))) for image in images])
    model.eval()
    with torch.no_grad():
        labels = model(pixel_values=(pixels - 0.5) / 0.5).logits.argmax(-1).tolist()
    os.makedirs(path, exist_ok=True)
    features = Features({"image": Image(), "label": Value("int64")})
    rows = Dataset.from_dict({"image": images, "label": labels}, features=features)
    rows.to_parquet(os.path.join(path, "t.parquet"))
    return str(path)


@pytest.mark.parametrize("model_type", sorted(STOCHASTIC_MODELS))
def test_frozen_eval_mode_restores_every_module_mode_and_flag(model_type):
    model = mixed_modes(stochastic_model(model_type))
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    before, flags = modes(model), [p.requires_grad for p in model.parameters()]
    with frozen_eval_mode(model):
        assert not any(modes(model).values())
        assert not any(p.requires_grad for p in model.parameters())
    assert modes(model) == before
    assert [p.requires_grad for p in model.parameters()] == flags


def test_pixel_space_classifier_takes_the_model_mode_and_attacks_keep_it():
    model = stochastic_model("vit").eval()
    classifier = PixelSpaceClassifier(model, [0.5] * 3, [0.5] * 3)
    assert classifier.training is False
    images, labels = torch.rand(4, 3, 32, 32), torch.arange(4)
    run_attack("fgsm", classifier, images, labels, epsilon=0.02)
    assert not any(modes(classifier).values())
    assert PixelSpaceClassifier(model.train(), [0.5] * 3, [0.5] * 3).training is True


@pytest.mark.parametrize("model_type", ["vit", "beit"])
def test_suite_with_attacks_scores_clean_accuracy_in_eval_mode(tmp_path, model_type):
    model = stochastic_model(model_type)
    data = write_images_labelled_by(model, tmp_path / "data")
    spec = BenchmarkSpec(name="local", path=data, split="test", label_space="custom", num_classes=10)
    # the attack comes first: every batch is attacked before it is scored clean
    suite = Suite(
        "attack-then-clean",
        [Evaluation("fgsm@0.02", group="attack", attack="fgsm", params=(("epsilon", 0.02),)), Evaluation("clean")],
        spec,
    )
    model = mixed_modes(model)
    before = modes(model)
    report = evaluate_robustness({"m": model}, PROCESSOR, suite=suite, batch_size=8, progress=False)
    assert report.value("m", "clean") == 1.0  # exactly the eval-mode predictions: dropout and drop-path off
    assert modes(model) == before


@pytest.mark.parametrize("model_type", sorted(STOCHASTIC_MODELS))
def test_synthesis_and_analysis_leave_modes_as_they_were(model_type):
    model = mixed_modes(stochastic_model(model_type))
    before = modes(model)
    pixel_values = torch.randn(4, 3, 32, 32)
    result = synthesize_noise(model, pixel_values, NullspaceArguments(noise_max_updates=3))
    assert modes(model) == before
    control = permuted_control(model, result.noise, pixel_values)
    assert modes(model) == before
    # the analysis runs in eval mode: the same call twice gives the same numbers despite dropout
    assert permuted_control(model, result.noise, pixel_values, torch.Generator().manual_seed(0))["statistic"] == (
        pytest.approx(control["statistic"], abs=0.0)
    )
