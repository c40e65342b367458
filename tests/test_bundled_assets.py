"""The bundled real data (MNIST subset) and the bundled "pretrained" base model load offline and are what they claim.

Re-create them with ``python trainer_scripts/train_base_model.py``.
"""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_nullspace.data.bundled import ASSETS, BUNDLED_MNIST, BUNDLED_MODEL

DATA_DIR = Path(BUNDLED_MNIST)
MODEL_DIR = Path(BUNDLED_MODEL)
NAMES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def bundled():
    from datasets import load_dataset

    files = {"train": str(DATA_DIR / "train.parquet"), "test": str(DATA_DIR / "test.parquet")}
    return load_dataset("parquet", data_files=files)


def test_bundled_files_present():
    for f in ("train.parquet", "test.parquet", "README.md"):
        assert (DATA_DIR / f).is_file(), f
    for f in ("config.json", "model.safetensors", "preprocessor_config.json", "training_results.json", "README.md"):
        assert (MODEL_DIR / f).is_file(), f
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total < 5 * 2**20, total
    assert (MODEL_DIR / "model.safetensors").stat().st_size < 2 * 2**20


def test_bundled_mnist_splits_and_labels(bundled):
    from datasets import ClassLabel, Image

    assert bundled["train"].num_rows == 4000
    assert bundled["test"].num_rows == 1000
    for split, per_class in (("train", 400), ("test", 100)):
        feats = bundled[split].features
        assert isinstance(feats["label"], ClassLabel)
        assert feats["label"].names == NAMES
        assert isinstance(feats["image"], Image)
        assert Counter(bundled[split]["label"]) == {c: per_class for c in range(10)}


def test_bundled_mnist_images_are_real_digits(bundled):
    images = bundled["test"][:50]["image"]
    for im in images:
        assert im.mode == "L" and im.size == (28, 28)
    arr = np.stack([np.asarray(im) for im in images])
    assert arr.dtype == np.uint8 and arr.max() == 255 and arr.min() == 0
    # real handwriting: mostly black background, a fair share of ink, nearly all of it in the central 20x20 box
    ink = arr > 127
    assert 0.05 < ink.mean() < 0.35
    assert ink[:, 4:24, 4:24].sum() > 0.95 * ink.sum()
    # the two splits do not share images
    train_px = {np.asarray(im).tobytes() for im in bundled["train"][:4000]["image"]}
    assert not any(a.tobytes() in train_px for a in arr)


def test_bundled_mnist_streams_offline():
    from datasets import ClassLabel, load_dataset

    ds = load_dataset("parquet", data_files={"test": str(DATA_DIR / "test.parquet")}, split="test", streaming=True)
    assert isinstance(ds.features["label"], ClassLabel) and ds.features["label"].names == NAMES
    first = next(iter(ds))
    assert first["image"].size == (28, 28) and 0 <= first["label"] < 10


@pytest.fixture(scope="module")
def model_and_processor():
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(str(MODEL_DIR)).eval()
    processor = AutoImageProcessor.from_pretrained(str(MODEL_DIR))
    return model, processor


def test_bundled_model_config(model_and_processor):
    model, processor = model_and_processor
    cfg = model.config
    assert cfg.model_type == "vit"
    assert cfg.num_channels == 3
    assert cfg.num_channels * cfg.patch_size**2 > cfg.hidden_size  # non-trivial exact nullspace
    assert cfg.num_labels == 10
    assert cfg.id2label == {i: n for i, n in enumerate(NAMES)}
    assert cfg.label2id == {n: i for i, n in enumerate(NAMES)}
    w = model.vit.embeddings.patch_embeddings.projection.weight.detach().double()
    w = w.reshape(w.shape[0], -1)
    nullity = w.shape[1] - int(torch.linalg.matrix_rank(w))
    assert nullity >= w.shape[1] - cfg.hidden_size > 0
    results = json.loads((MODEL_DIR / "training_results.json").read_text())
    assert results["patch_embedding_nullspace"]["nullspace_dim"] == nullity
    # processor: 32x32, mean = std = 0.5, grey -> RGB
    assert processor.size == {"height": cfg.image_size, "width": cfg.image_size}
    assert list(processor.image_mean) == [0.5] * 3 and list(processor.image_std) == [0.5] * 3
    assert processor.do_resize and processor.do_convert_rgb


def test_processor_matches_training_preprocessing(bundled, model_and_processor):
    from PIL import Image

    _, processor = model_and_processor
    images = bundled["test"][:8]["image"]
    out = processor(images=images, return_tensors="pt")["pixel_values"]
    assert out.shape == (8, 3, 32, 32)
    ref = np.stack(
        [
            np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR), np.float32).transpose(2, 0, 1) / 255
            for im in images
        ]
    )
    torch.testing.assert_close(out, torch.from_numpy((ref - 0.5) / 0.5), atol=1e-6, rtol=0)


def test_bundled_model_accuracy(bundled, model_and_processor):
    """Guards the committed weights: at least 0.90 on the first 500 bundled test images."""
    model, processor = model_and_processor
    test = bundled["test"][:500]
    pixel_values = processor(images=test["image"], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pred = model(pixel_values=pixel_values).logits.argmax(-1)
    acc = (pred == torch.tensor(test["label"])).float().mean().item()
    assert acc >= 0.90, acc
