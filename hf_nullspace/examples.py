"""Example images of the eval split for the model card's inference widget (`examples/*.png` in the run folder)."""

import io
import logging
import os
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXAMPLES_DIR = "examples"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_")[:40] or "image"


def _decode_image(value: Any):
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path") and os.path.isfile(value["path"]):
        return Image.open(value["path"])
    return None


def _raw_rows(dataset, scan: int):
    """(image, label name) of the first `scan` rows of a `datasets.Dataset`, read without its transform."""
    import datasets

    if not isinstance(dataset, datasets.Dataset) or not dataset.features:
        return
    images = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    labels = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.ClassLabel)]
    labels += [name for name in ("label", "labels") if name in dataset.features and name not in labels]
    if not images:
        return
    raw = dataset.with_format(None).select(range(min(scan, len(dataset))))
    for row in raw:
        image = _decode_image(row[images[0]])
        if image is None:
            continue
        label = row[labels[0]] if labels else None
        feature = dataset.features.get(labels[0]) if labels else None
        if isinstance(feature, datasets.ClassLabel) and isinstance(label, int) and 0 <= label < feature.num_classes:
            label = feature.int2str(label)
        yield image, label


def _tensor_rows(dataset, processor, scan: int):
    """(image, label) from `{"pixel_values", "labels"}` items, undoing the processor's rescale and normalisation."""
    import numpy as np
    import torch
    from PIL import Image

    mean = getattr(processor, "image_mean", None) if getattr(processor, "do_normalize", False) else None
    std = getattr(processor, "image_std", None) if getattr(processor, "do_normalize", False) else None
    items = (dataset[i] for i in range(min(scan, len(dataset)))) if hasattr(dataset, "__len__") else iter(dataset)
    for _, item in zip(range(scan), items):
        pixel_values = item.get("pixel_values") if isinstance(item, dict) else None
        if not torch.is_tensor(pixel_values) or pixel_values.ndim != 3:
            continue
        pixels = pixel_values.detach().float().cpu()
        if mean is not None and std is not None:
            pixels = pixels * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
        array = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        image = Image.fromarray(np.ascontiguousarray(array[..., 0] if array.shape[-1] == 1 else array))
        label = item.get("labels", item.get("label"))
        yield image, int(label) if torch.is_tensor(label) or isinstance(label, int) else label


def save_examples(
    output_dir: str | Path,
    dataset,
    *,
    id2label: dict | None = None,
    processor=None,
    count: int = 3,
    scan: int = 256,
    max_size: int = 256,
) -> list[str]:
    """
    Writes a few images of an eval split to `output_dir/examples/` (PNG, one per label while labels differ, at most
    `max_size` pixels a side) for the card's widget, and returns their paths relative to `output_dir`.

    Rows are read as the dataset stores them when it is a `datasets.Dataset` with an image column (its transform is
    bypassed); otherwise from its `pixel_values`, with the processor's normalisation undone. Never raises: a dataset
    it cannot read gives no examples (logged).

    Args:
        output_dir (`str` or `Path`): the run folder.
        dataset: the eval split (`datasets.Dataset`, `IterableDataset`, or items with `pixel_values` and `labels`).
        id2label (`dict`, *optional*): label names for integer labels (the model's `config.id2label`).
        processor (*optional*): the image processor, to undo its normalisation of `pixel_values`.
        count (`int`, defaults to 3): how many images.
        scan (`int`, defaults to 256): rows read at most, looking for distinct labels.
        max_size (`int`, defaults to 256): longest side of a written image.
    """
    if dataset is None:
        return []
    try:
        rows = list(_raw_rows(dataset, scan)) or list(_tensor_rows(dataset, processor, scan))
    except Exception as error:
        logger.warning(f"No example images for the widget: the eval split could not be read ({error!r}).")
        return []
    id2label = {int(key): value for key, value in (id2label or {}).items()}
    named = [(image, id2label.get(label, label) if isinstance(label, int) else label) for image, label in rows]
    picked, seen = [], set()
    for image, label in named:  # distinct labels first, then any
        if label not in seen:
            picked.append((image, label))
            seen.add(label)
        if len(picked) == count:
            break
    picked += [row for row in named if all(row[0] is not image for image, _ in picked)][: count - len(picked)]
    folder = Path(output_dir) / EXAMPLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (image, label) in enumerate(picked):
        image = image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()
        image.thumbnail((max_size, max_size))
        name = f"{EXAMPLES_DIR}/{_slug(label) if label is not None else 'example'}"
        name = name if f"{name}.png" not in written else f"{name}_{index}"
        image.save(Path(output_dir) / f"{name}.png")
        written.append(f"{name}.png")
    return written
