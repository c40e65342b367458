"""Shared test set-up: offline Hub, fixed seeds, tiny models built from configs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_vit():
    """An untrained tiny ViT (see `make_tiny_vit`), eval mode."""
    return make_tiny_vit().eval()


def make_tiny_vit(**overrides):
    """A tiny ViT for 32x32 RGB images with 8x8 patches (c*r*r = 192 > hidden 48)."""
    from transformers import ViTConfig, ViTForImageClassification

    config = dict(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config.update(overrides)
    return ViTForImageClassification(ViTConfig(**config))


def template_images(num: int, seed: int = 0, num_classes: int = 10):
    """A separable synthetic task: each class is a fixed random template plus noise. Returns (pixel_values, labels)."""
    generator = torch.Generator().manual_seed(1234)
    templates = torch.randn(num_classes, 3, 32, 32, generator=generator)
    generator.manual_seed(seed)
    labels = torch.randint(0, num_classes, (num,), generator=generator)
    return templates[labels] + 0.5 * torch.randn(num, 3, 32, 32, generator=generator), labels


@pytest.fixture(scope="session")
def trained_tiny_vit():
    """The tiny ViT trained for a few dozen steps on `template_images`: confident, well above chance (eval mode)."""
    torch.manual_seed(0)
    model = make_tiny_vit()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(50):
        pixel_values, labels = template_images(32, seed=step + 1)
        loss = model(pixel_values=pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model.eval()
