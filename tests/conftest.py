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


# ---- every supported model family, tiny ----------------------------------------------------------------------------

TINY_IMAGE_SIZE = 32
_COMMON = dict(image_size=TINY_IMAGE_SIZE, num_channels=3, num_labels=10)
_VIT_LIKE = dict(
    _COMMON,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
# Swin merges 2x2 patches per stage and attends in windows: 4x4 patches of a 32x32 image give an 8x8 grid, windows of
# 4 fit both stages (8x8, then 4x4) without padding.
_SWIN_LIKE = dict(
    _COMMON,
    patch_size=4,
    embed_dim=16,
    depths=[1, 1],
    num_heads=[1, 2],
    window_size=4,
    mlp_ratio=2.0,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    drop_path_rate=0.0,
)

# model_type -> (transformers model class, its config's arguments, (N, D) of the patch-token noise). DeiT's Auto
# entry names two classes (with and without the distillation head), so the classes are named here explicitly.
FAMILIES = {
    "vit": ("ViTForImageClassification", dict(_VIT_LIKE, intermediate_size=64), (16, 32)),
    "deit": ("DeiTForImageClassification", dict(_VIT_LIKE, intermediate_size=64), (16, 32)),
    "beit": (
        "BeitForImageClassification",
        dict(_VIT_LIKE, intermediate_size=64, drop_path_rate=0.0, use_mean_pooling=True),
        (16, 32),
    ),
    "data2vec-vision": (
        "Data2VecVisionForImageClassification",
        dict(_VIT_LIKE, intermediate_size=64, drop_path_rate=0.0),
        (16, 32),
    ),
    "dinov2": ("Dinov2ForImageClassification", dict(_VIT_LIKE, mlp_ratio=2, drop_path_rate=0.0), (16, 32)),
    "dinov2_with_registers": (
        "Dinov2WithRegistersForImageClassification",
        dict(_VIT_LIKE, mlp_ratio=2, drop_path_rate=0.0, num_register_tokens=2),
        (16, 32),
    ),
    "vit_msn": ("ViTMSNForImageClassification", dict(_VIT_LIKE, intermediate_size=64), (16, 32)),
    "swin": ("SwinForImageClassification", _SWIN_LIKE, (64, 16)),
    "swinv2": ("Swinv2ForImageClassification", _SWIN_LIKE, (64, 16)),
}


def make_tiny_model(model_type: str, **overrides):
    """A tiny `*ForImageClassification` of a supported family (`FAMILIES`) for 32x32 RGB images: 10 labels, no
    dropout, 2 ViT layers of width 32 or 2 Swin stages from width 16; train mode, as built. `FAMILIES[model_type][2]`
    is the (N, D) of its patch-token noise."""
    import transformers

    class_name, config, _ = FAMILIES[model_type]
    model_class = getattr(transformers, class_name)
    model = model_class(model_class.config_class(**{**config, **overrides}))
    assert model.config.model_type == model_type
    return model


def tiny_training_args(tmp_path, **overrides):
    """`TrainingArguments` of the trainer tests: CPU, constant lr 1e-3, batch 8, 4 steps, logs every step, no saves."""
    from transformers import TrainingArguments

    defaults = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=8,
        max_steps=4,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return TrainingArguments(**{**defaults, **overrides})
