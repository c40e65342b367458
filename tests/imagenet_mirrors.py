"""Small local mirrors of the ImageNet robustness benchmarks, in the layouts the registry documents
(docs/benchmarks.md, section 4): a few JPEG images per source, 1000 or 200 classes, any image size.

- ImageNet-1k: parquet `data/{train,validation}-00000-of-00001.parquet`, `image` + `label` (ClassLabel, 1000 names);
- ImageNet-C: a copy of the Hub repo `WNJXYK/TTA-ImageNet-C`: `data/<corruption>/severity_<s>/*.parquet` and a
  README.md declaring one config per corruption with splits `severity_<s>`; `image` + `label` (0..999);
- ImageNet-A: the clip-benchmark webdataset `test/<n>.tar` (`jpg` + `cls` 0..199) with `test/nshards.txt`;
- ImageNet-R: the parquet layout of `axiong/imagenet-r` (`image`, `wnid`, `class_name`), read as `imagenet-r-parquet`,
  or the clip-benchmark webdataset;
- ImageNet-V2: the extracted matched-frequency folders `<class index>/<hash>.jpeg`;
- ImageNet-Sketch: the clip-benchmark webdataset (`jpg` + `cls` 0..999).
"""

import io
import os
import tarfile

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage

from hf_nullspace.data.imagenet_classes import IMAGENET_R_WNIDS

IMAGENET_NAMES = [f"imagenet class {i:03d}" for i in range(1000)]


def jpeg(seed: int, size: int = 224, label: int = 0) -> bytes:
    """A JPEG whose colour depends on `label` (so a model can tell a few classes apart) plus noise."""
    rng = np.random.default_rng(seed)
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _parquet(path: str, images: list[bytes], labels: list, label_feature=None, label_name: str = "label", **extra):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    features = {"image": Image(), label_name: label_feature or Value("int64")}
    features.update({key: Value("string") for key in extra})
    rows = {"image": [{"bytes": data, "path": None} for data in images], label_name: labels, **extra}
    Dataset.from_dict(rows, features=Features(features)).to_parquet(path)


def _tar(path: str, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, fields in samples:
            for extension, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def imagenet(root, labels_by_split: dict[str, list[int]], size: int = 224) -> str:
    """ILSVRC-like parquet splits, `label` a ClassLabel of 1000 names."""
    feature = ClassLabel(names=IMAGENET_NAMES)
    for split, labels in labels_by_split.items():
        images = [jpeg(1000 * len(split) + i, size, label) for i, label in enumerate(labels)]
        _parquet(os.path.join(root, "data", f"{split}-00000-of-00001.parquet"), images, labels, feature)
    return str(root)


def imagenet_c(root, corruptions, severities, labels: list[int], size: int = 224) -> str:
    """A downloaded copy of WNJXYK/TTA-ImageNet-C (README configs), `labels` in every (corruption, severity)."""
    lines = ["---", "configs:"]
    for c, corruption in enumerate(corruptions):
        lines += [f"- config_name: {corruption}", "  data_files:"]
        for severity in severities:
            path = f"data/{corruption}/severity_{severity}/part-00000.parquet"
            images = [jpeg(10_000 * c + 100 * severity + i, size, label) for i, label in enumerate(labels)]
            _parquet(os.path.join(root, path), images, labels)
            lines += [f"  - split: severity_{severity}", f"    path: {path}"]
    lines += ["---", "", "Local ImageNet-C mirror (test data)."]
    with open(os.path.join(root, "README.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return str(root)


def webdataset(root, labels: list[int], size: int = 224, shards: int = 2, seed: int = 0) -> str:
    """The clip-benchmark layout: `test/<n>.tar` (`jpg` + `cls`) and `test/nshards.txt`."""
    per_shard = -(-len(labels) // shards)
    for shard in range(shards):
        samples = [
            (f"s{i:07d}", {"jpg": jpeg(seed + i, size, label), "cls": str(label).encode()})
            for i, label in enumerate(labels)
            if i // per_shard == shard
        ]
        _tar(os.path.join(root, "test", f"{shard}.tar"), samples)
    with open(os.path.join(root, "test", "nshards.txt"), "w") as handle:
        handle.write(str(shards))
    return str(root)


def imagenet_r_parquet(root, labels: list[int], size: int = 224) -> str:
    """The parquet layout of axiong/imagenet-r: `image`, `wnid`, `class_name` (no integer label)."""
    wnids = [IMAGENET_R_WNIDS[label] for label in labels]
    images = [jpeg(500 + i, size, label) for i, label in enumerate(labels)]
    _parquet(
        os.path.join(root, "data", "test-00000-of-00001.parquet"),
        images,
        wnids,
        Value("string"),
        "wnid",
        class_name=[f"name of {w}" for w in wnids],
    )
    return str(root)


def imagenet_v2(root, labels: list[int], size: int = 224) -> str:
    """Extracted imagenetv2-matched-frequency: `<class index>/<hash>.jpeg`."""
    for i, label in enumerate(labels):
        os.makedirs(os.path.join(root, str(label)), exist_ok=True)
        with open(os.path.join(root, str(label), f"{i:032x}.jpeg"), "wb") as handle:
            handle.write(jpeg(700 + i, size, label))
    return str(root)


def paper_protocol(
    root,
    size: int = 224,
    per_source: int = 4,
    validation: int | None = None,
    corruptions=("gaussian_noise", "fog"),
    severities=(1, 5),
) -> dict[str, str]:
    """Every source of the `imagenet` suite but Stylized-ImageNet and DAmageNet, `per_source` images each (the
    ImageNet validation split `validation` images, twice as many in train). Returns `{benchmark: path}`:
    `imagenet` (train + validation splits) and the local paths of the others."""
    labels_1k = [(7 * i) % 1000 for i in range(per_source)]
    labels_200 = [(11 * i) % 200 for i in range(per_source)]
    labels_val = [(7 * i) % 1000 for i in range(per_source if validation is None else validation)]
    root = str(root)
    return {
        "imagenet": imagenet(os.path.join(root, "imagenet"), {"train": labels_1k * 2, "validation": labels_val}, size),
        "imagenet-c": imagenet_c(os.path.join(root, "imagenet-c"), corruptions, severities, labels_1k, size),
        "imagenet-a": webdataset(os.path.join(root, "imagenet-a"), labels_200, size, seed=300),
        "imagenet-r": webdataset(os.path.join(root, "imagenet-r"), labels_200, size, seed=400),
        "imagenet-v2": imagenet_v2(os.path.join(root, "imagenet-v2"), labels_1k, size),
        "imagenet-sketch": webdataset(os.path.join(root, "imagenet-sketch"), labels_1k, size, seed=600),
    }
