"""Rows of an image dataset as model inputs: decode each row robustly, drop and count the bad ones, collate batches.

Every row goes through `prepare_batch`: the image bytes are decoded here with PIL (the dataset's image column is cast
to `datasets.Image(decode=False)`), so a truncated or unreadable image is counted and dropped instead of stopping a
stream. A `SkipCounter` keeps the counts and raises once too large a fraction of the rows had to be dropped.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial

import datasets
import torch
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from datasets.utils.file_utils import xopen
from PIL import Image, ImageFile

from .transforms import to_rgb

logger = logging.getLogger(__name__)
# bad rows named per kind in errors and summaries
NAMED_ROWS = 5

# Kinds of rows that are dropped; each row is counted under the first problem found (labels are checked first).
SKIP_KINDS = (
    "missing_label",
    "label_out_of_range",
    "unmapped_label",
    "missing_image",
    "corrupt_image",
    "unsupported_mode",
)


class BadRowsError(RuntimeError):
    """Raised when more rows than `SkipCounter.max_skip_fraction` had to be dropped."""


class SkipCounter:
    """Counts kept, dropped and converted rows, and stops the run when too many rows are dropped.

    Counts are per process: with DataLoader workers (`dataloader_num_workers > 0`) each worker holds its own copy.
    Rows recorded with a `key` are counted once however often they are read (epochs, repeated evaluations), and each
    dropped row is named (its file, else its row key) in a warning, in `as_dict` and in the error.

    Args:
        max_skip_fraction (`float`, *optional*, defaults to `0.01`):
            Largest tolerated fraction of dropped rows among the rows seen.
        min_rows (`int`, *optional*, defaults to `200`):
            Rows to see before the fraction is checked, so that one bad row among the first few does not stop a run;
            fewer when the data has fewer rows (`total`).
        total (`int`, *optional*):
            Rows of the data, when known: once all were seen the fraction is checked, however few they are.
    """

    def __init__(self, max_skip_fraction: float = 0.01, min_rows: int = 200, total: int | None = None):
        if not 0 <= max_skip_fraction <= 1:
            raise ValueError(f"`max_skip_fraction` must be in [0, 1], got {max_skip_fraction}.")
        self.max_skip_fraction = max_skip_fraction
        self.min_rows = min_rows
        self.total = total
        self.seen = 0
        self.counts: Counter[str] = Counter()
        self.named: dict[str, list[str]] = {}
        self._keys: set = set()

    @property
    def skipped(self) -> int:
        """Number of dropped rows."""
        return sum(self.counts[kind] for kind in SKIP_KINDS)

    @property
    def kept(self) -> int:
        """Number of rows passed on to the model."""
        return self.seen - self.skipped

    @property
    def skip_fraction(self) -> float:
        """Dropped rows over rows seen (0 before any row)."""
        return self.skipped / self.seen if self.seen else 0.0

    def record(
        self, kind: str | None = None, converted_mode: str | None = None, key=None, name: str | None = None
    ) -> None:
        """
        Records one row: dropped as `kind`, or kept (and converted from `converted_mode` when given). A row with a
        `key` seen before is not counted again; `name` (its file, say) names a dropped row.
        """
        if key is not None:
            if key in self._keys:
                return
            self._keys.add(key)
        self.seen += 1
        if kind is not None:
            if kind not in SKIP_KINDS:
                raise ValueError(f"Unknown skip kind {kind!r}; expected one of {SKIP_KINDS}.")
            self.counts[kind] += 1
            name = name or (f"row {key}" if key is not None else None)
            if name is not None:
                logger.warning("Dropped %s: %s.", name, kind.replace("_", " "))
                if len(self.named.setdefault(kind, [])) < NAMED_ROWS:
                    self.named[kind].append(name)
        elif converted_mode is not None:
            self.counts[f"converted_{converted_mode}"] += 1

    def check(self) -> None:
        """Raises `BadRowsError` once at least `min_rows` rows were seen and too many of them were dropped."""
        enough = min(self.min_rows, self.total) if self.total else self.min_rows
        if self.seen >= enough and self.skip_fraction > self.max_skip_fraction:
            details = ", ".join(
                f"{kind}={self.counts[kind]}" + (f" ({', '.join(self.named[kind])})" if self.named.get(kind) else "")
                for kind in SKIP_KINDS
                if self.counts[kind]
            )
            raise BadRowsError(
                f"Dropped {self.skipped} of {self.seen} rows ({self.skip_fraction:.2%}), more than the allowed "
                f"{self.max_skip_fraction:.2%}: {details}. Fix or remove these rows, check the image/label columns "
                "and `num_labels`, or raise `max_skip_fraction` (`--max_skip_fraction`)."
            )

    def as_dict(self) -> dict:
        """A JSON-ready summary: rows seen, kept and skipped, and the count of each kind."""
        return {
            "seen": self.seen,
            "kept": self.kept,
            "skipped": self.skipped,
            "counts": dict(sorted(self.counts.items())),
            **({"named": {kind: list(names) for kind, names in self.named.items()}} if self.named else {}),
        }


def decode_image(value) -> Image.Image:
    """Decodes an image cell read with `datasets.Image(decode=False)` (`{"bytes", "path"}`), raw bytes, a path or an
    already decoded PIL image, fully loading the pixels so that truncated files fail here.

    Raises:
        `OSError` (or PIL's `SyntaxError`/`ValueError`): when the bytes are not a complete image.
        `RuntimeError`: when `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is on, which would let truncated images through.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by another library?): truncated images would decode "
            "silently. Set it back to False."
        )
    if isinstance(value, Image.Image):
        value.load()
        return value
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data, path = value, None
    else:
        data, path = None, value
    if data is None:
        if not path:
            raise OSError("The image cell holds neither bytes nor a path.")
        with xopen(path, "rb") as handle:
            data = handle.read()
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _first_present(row_images: Sequence) -> object | None:
    return next((value for value in row_images if value is not None), None)


def read_row(
    image_values: Sequence, raw_label, num_labels: int | None, label_fn: Callable | None = None
) -> tuple[Image.Image | None, int | None, str | None, str | None]:
    """Checks and decodes one row; the per-row step of `prepare_batch`.

    Args:
        image_values (`Sequence`): The row's cells of the image columns; the first non-empty one is used.
        raw_label: The label cell.
        num_labels (`int`, *optional*): Labels must lie in `[0, num_labels)`; not checked when `None`.
        label_fn (`Callable`, *optional*): Maps the label cell to an int; `KeyError`/`ValueError` count as
            `unmapped_label`.

    Returns:
        `(image, label, skip_kind, converted_mode)`: the RGB image and int label of a good row (with the mode it was
        converted from, if not RGB), or `(None, None, kind, None)` with the `SKIP_KINDS` entry of a bad one.
    """
    label = raw_label
    if label is not None and label_fn is not None:
        try:
            label = label_fn(raw_label)
        except (KeyError, ValueError):
            return None, None, "unmapped_label", None
    if label is None:
        return None, None, "missing_label", None
    if num_labels is not None and not 0 <= int(label) < num_labels:
        return None, None, "label_out_of_range", None
    value = _first_present(image_values)
    if value is None or (isinstance(value, dict) and value.get("bytes") is None and not value.get("path")):
        return None, None, "missing_image", None
    try:
        image = decode_image(value)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None, None, "corrupt_image", None
    mode = image.mode
    try:
        image = to_rgb(image)
    except ValueError:
        return None, None, "unsupported_mode", None
    return image, int(label), None, None if mode == "RGB" else mode


def _file_name(row_images: Sequence) -> str | None:
    value = _first_present(row_images)
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    return f"file {path}" if path else None


def prepare_batch(
    batch: dict[str, list],
    transform: Callable[[Image.Image], torch.Tensor],
    image_column: str | Sequence[str],
    label_column: str,
    num_labels: int | None,
    counter: SkipCounter,
    label_fn: Callable | None = None,
    key_column: str | None = None,
) -> dict[str, list]:
    """Decodes, checks and transforms a batch of rows; bad rows are dropped and counted.

    Args:
        batch (`dict[str, list]`): Columns of a batch, as `map(batched=True)` or `with_transform` give them.
        transform (`Callable`): Image -> `(3, H, W)` tensor, e.g. `TrainTransform` or `EvalTransform`.
        image_column (`str` or `Sequence[str]`): Image column, or columns whose first non-empty one is used per row
            (webdataset shards may mix `jpg` and `png`).
        label_column (`str`): Label column.
        num_labels (`int`, *optional*): Labels must lie in `[0, num_labels)`; not checked when `None`.
        counter (`SkipCounter`): Receives the counts; raises when too many rows are dropped.
        label_fn (`Callable`, *optional*): Maps the label cell to an int label (e.g. a WordNet id to its index);
            `KeyError`/`ValueError` from it count as `unmapped_label`.
        key_column (`str`, *optional*): Column identifying each row: it is counted once however often it is read,
            and with a transform that has `rng_for` (the `TrainTransform`) its augmentation is drawn from
            `transform.rng_for(key)`.

    Returns:
        `dict[str, list]`: `{"pixel_values": [tensor, ...], "labels": [int, ...]}` for the kept rows.
    """
    image_columns = [image_column] if isinstance(image_column, str) else list(image_column)
    pixel_values, labels = [], []
    for index, raw_label in enumerate(batch[label_column]):
        values = [batch[column][index] for column in image_columns]
        image, label, kind, converted = read_row(values, raw_label, num_labels, label_fn)
        key = batch[key_column][index] if key_column is not None else None
        counter.record(kind, converted_mode=converted, key=key, name=_file_name(values) if kind else None)
        if kind is not None:
            continue
        if key_column is not None and hasattr(transform, "rng_for"):
            pixel_values.append(transform(image, rng=transform.rng_for(key)))
        else:
            pixel_values.append(transform(image))
        labels.append(label)
    counter.check()
    return {"pixel_values": pixel_values, "labels": labels}


def prepare_dataset(
    dataset: Dataset | IterableDataset,
    transform: Callable[[Image.Image], torch.Tensor],
    image_column: str | Sequence[str],
    label_column: str,
    num_labels: int | None,
    counter: SkipCounter | None = None,
    label_fn: Callable | None = None,
    batch_size: int = 64,
    key_column: str | None = None,
) -> Dataset | IterableDataset:
    """Turns an image dataset into one yielding `{"pixel_values", "labels"}`, dropping bad rows (see `prepare_batch`).

    A `Dataset` gets a batched `with_transform`: rows are decoded when read, and a batch read through a DataLoader
    (`__getitems__`) may hold fewer rows than asked for. Reading a single dropped row (`dataset[i]`) fails, so read
    batches. An `IterableDataset` gets `.map(batched=True, remove_columns=...)`, which may emit fewer rows than it
    reads. The image column is cast to `datasets.Image(decode=False)` so that decoding errors are counted here.

    Args:
        dataset (`Dataset` or `IterableDataset`): One split.
        transform (`Callable`): Image -> tensor.
        image_column (`str` or `Sequence[str]`): See `prepare_batch`.
        label_column (`str`): Label column.
        num_labels (`int`, *optional*): Upper bound (exclusive) of valid labels.
        counter (`SkipCounter`, *optional*): Receives the counts; a new one (1% after 200 rows) by default.
        label_fn (`Callable`, *optional*): Maps label cells to int labels.
        batch_size (`int`, *optional*, defaults to `64`): Rows per `map` call for an `IterableDataset`.
        key_column (`str`, *optional*): See `prepare_batch`.

    Returns:
        `Dataset` or `IterableDataset`.
    """
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        raise TypeError(f"Pass one split, e.g. dataset['train']; got splits {list(dataset)}.")
    if isinstance(dataset, IterableDataset) and dataset.features is None:
        dataset = dataset._resolve_features()
    image_columns = [image_column] if isinstance(image_column, str) else list(image_column)
    for column in image_columns:
        if isinstance(dataset.features.get(column), datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    counter = counter if counter is not None else SkipCounter()
    if isinstance(dataset, Dataset) and counter.total is None:
        counter.total = len(dataset)
    prepare = partial(
        prepare_batch,
        transform=transform,
        image_column=image_columns,
        label_column=label_column,
        num_labels=num_labels,
        counter=counter,
        label_fn=label_fn,
        key_column=key_column,
    )
    if isinstance(dataset, IterableDataset):
        return dataset.map(prepare, batched=True, batch_size=batch_size, remove_columns=dataset.column_names)
    return dataset.with_transform(prepare)


def collate_fn(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stacks `pixel_values` into `(B, 3, H, W)` and `labels` into a `(B,)` long tensor.

    Raises:
        `ValueError`: when every row of the batch was dropped.
    """
    if not examples:
        raise ValueError("Every row of this batch was dropped as bad; see the SkipCounter's counts.")
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([int(example["labels"]) for example in examples], dtype=torch.long),
    }
