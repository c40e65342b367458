"""Load image-classification datasets (Hub or local), decode rows robustly and turn them into model inputs.

Every row goes through `prepare_batch`: the image bytes are decoded here with PIL (the dataset's image column is cast
to `datasets.Image(decode=False)`), so a truncated or unreadable image is counted and dropped instead of stopping a
stream. A `SkipCounter` keeps the counts and raises once too large a fraction of the rows had to be dropped.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from glob import glob

import datasets
import torch
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from datasets.data_files import DataFilesDict, get_data_patterns
from datasets.distributed import split_dataset_by_node
from datasets.utils.file_utils import xopen
from PIL import Image, ImageFile

from .transforms import to_rgb

logger = logging.getLogger(__name__)

IMAGE_COLUMN_CANDIDATES = ("image", "img", "jpg", "png", "webp", "jpeg")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "cls")

# Kinds of rows that are dropped; each row is counted under the first problem found (labels are checked first).
SKIP_KINDS = (
    "missing_label",
    "label_out_of_range",
    "unmapped_label",
    "missing_image",
    "corrupt_image",
    "unsupported_mode",
)

_PARQUET_EXTENSIONS = (".parquet",)
_ARROW_EXTENSIONS = (".arrow",)
_WEBDATASET_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Packaged builders in the order they win when a folder mixes formats.
_BUILDERS = (
    ("parquet", _PARQUET_EXTENSIONS),
    ("arrow", _ARROW_EXTENSIONS),
    ("webdataset", _WEBDATASET_EXTENSIONS),
    ("imagefolder", _IMAGE_EXTENSIONS),
)


class BadRowsError(RuntimeError):
    """Raised when more rows than `SkipCounter.max_skip_fraction` had to be dropped."""


class SkipCounter:
    """Counts kept, dropped and converted rows, and stops the run when too many rows are dropped.

    Counts are per process: with DataLoader workers (`dataloader_num_workers > 0`) each worker holds its own copy.

    Args:
        max_skip_fraction (`float`, *optional*, defaults to `0.01`):
            Largest tolerated fraction of dropped rows among the rows seen.
        min_rows (`int`, *optional*, defaults to `200`):
            Rows to see before the fraction is checked, so that one bad row among the first few does not stop a run.
    """

    def __init__(self, max_skip_fraction: float = 0.01, min_rows: int = 200):
        if not 0 <= max_skip_fraction <= 1:
            raise ValueError(f"`max_skip_fraction` must be in [0, 1], got {max_skip_fraction}.")
        self.max_skip_fraction = max_skip_fraction
        self.min_rows = min_rows
        self.seen = 0
        self.counts: Counter[str] = Counter()

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

    def record(self, kind: str | None = None, converted_mode: str | None = None) -> None:
        """Records one row: dropped as `kind`, or kept (and converted from `converted_mode` when given)."""
        self.seen += 1
        if kind is not None:
            if kind not in SKIP_KINDS:
                raise ValueError(f"Unknown skip kind {kind!r}; expected one of {SKIP_KINDS}.")
            self.counts[kind] += 1
        elif converted_mode is not None:
            self.counts[f"converted_{converted_mode}"] += 1

    def check(self) -> None:
        """Raises `BadRowsError` once at least `min_rows` rows were seen and too many of them were dropped."""
        if self.seen >= self.min_rows and self.skip_fraction > self.max_skip_fraction:
            details = ", ".join(f"{kind}={self.counts[kind]}" for kind in SKIP_KINDS if self.counts[kind])
            raise BadRowsError(
                f"Dropped {self.skipped} of {self.seen} rows ({self.skip_fraction:.2%}), more than the allowed "
                f"{self.max_skip_fraction:.2%}: {details}. Check the dataset, the image/label columns and "
                "`num_labels`, or raise `max_skip_fraction`."
            )

    def as_dict(self) -> dict:
        """A JSON-ready summary: rows seen, kept and skipped, and the count of each kind."""
        return {
            "seen": self.seen,
            "kept": self.kept,
            "skipped": self.skipped,
            "counts": dict(sorted(self.counts.items())),
        }


def find_columns(
    column_names: Iterable[str], image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """Finds the image and label columns, as transformers' `run_image_classification.py` does.

    Args:
        column_names (`Iterable[str]`):
            The dataset's columns.
        image_column (`str`, *optional*):
            The image column; autodetected among `image`, `img`, `jpg`, `png`, `webp`, `jpeg` when not given.
        label_column (`str`, *optional*):
            The label column; autodetected among `label`, `labels`, `cls` when not given.

    Returns:
        `tuple[str, str]`: `(image_column, label_column)`.

    Raises:
        `ValueError`: naming the available columns, when a column is not there or none can be found.
    """
    columns = list(column_names)

    def pick(given: str | None, candidates: Sequence[str], what: str, argument: str) -> str:
        if given is not None:
            if given not in columns:
                raise ValueError(f"{what} column {given!r} is not in the dataset; available columns: {columns}.")
            return given
        for name in candidates:
            if name in columns:
                return name
        raise ValueError(
            f"Could not find the {what.lower()} column among {list(candidates)}; available columns: {columns}. "
            f"Pass `{argument}=` to name it."
        )

    return (
        pick(image_column, IMAGE_COLUMN_CANDIDATES, "Image", "image_column"),
        pick(label_column, LABEL_COLUMN_CANDIDATES, "Label", "label_column"),
    )


def _builder_for(paths: Sequence[str]) -> str | None:
    for builder, extensions in _BUILDERS:
        if any(path.lower().endswith(extensions) for path in paths):
            return builder
    return None


def _local_data_files(directory: str, builder: str) -> dict[str, list[str]]:
    """Splits the builder's files of a folder by datasets' own split patterns, leaving other files (e.g. the
    `nshards.txt` beside webdataset shards, which would otherwise make datasets pick the `text` builder) out."""
    extensions = dict(_BUILDERS)[builder]
    resolved = DataFilesDict.from_patterns(get_data_patterns(directory), base_path=directory)
    data_files = {
        str(split): [path for path in files if path.lower().endswith(extensions)] for split, files in resolved.items()
    }
    return {split: files for split, files in data_files.items() if files}


def _has_yaml_configs(directory: str) -> bool:
    readme = os.path.join(directory, "README.md")
    if not os.path.isfile(readme):
        return False
    with open(readme, encoding="utf-8") as handle:
        text = handle.read()
    return text.startswith("---") and "\nconfigs:" in text.split("\n---", 1)[0]


def load_image_dataset(
    name_or_path: str,
    config_name: str | None = None,
    split: str | None = None,
    streaming: bool = False,
    data_files: str | Sequence[str] | dict | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | None = None,
) -> Dataset | IterableDataset | DatasetDict | IterableDatasetDict:
    """Loads an image dataset from the Hub, a local folder or local data files with `datasets.load_dataset`.

    Sources, and how each is read:

    - a Hub id (`"ILSVRC/imagenet-1k"`) or a packaged builder name with `data_files` (`"webdataset"`): passed to
      `load_dataset`. Webdataset repos need `data_files` (e.g. `{"test": "test/*.tar"}`): a `nshards.txt` beside a
      single shard otherwise makes datasets 5 pick the `text` builder, which is reported as an error here. A repo that
      still holds a loading script is retried at `revision="refs/convert/parquet"`.
    - a local folder whose README.md declares `configs:` (a downloaded Hub repo, e.g. ImageNet-C): loaded as is.
    - another local folder: the builder is chosen by the files it holds (parquet, then arrow, then webdataset tars,
      then images as `imagefolder`); splits follow datasets' patterns (`train/`, `test/`, `data/<split>-*`, ...).
      With `config_name`, the sub-folder `<config_name>` or `data/<config_name>` is read.
    - local files or a glob (`"shards/*.parquet"`): the builder follows the extension.

    For local sources, a `split` that does not exist is replaced by the only split there is, with a warning.

    Args:
        name_or_path (`str`): Hub dataset id, builder name, local folder, file or glob.
        config_name (`str`, *optional*): Dataset configuration (e.g. an ImageNet-C corruption).
        split (`str`, *optional*): Split to load; all splits (a dict) when not given.
        streaming (`bool`, *optional*, defaults to `False`): Return an `IterableDataset` that reads as it goes.
        data_files (`str`, `list` or `dict`, *optional*): Data files, relative to the repo or folder.
        revision (`str`, *optional*): Hub revision (branch, tag or commit) to pin.
        token (`str` or `bool`, *optional*): Hub token, needed for gated repos (or set `HF_TOKEN`).
        cache_dir (`str`, *optional*): datasets cache folder.

    Returns:
        `Dataset`, `IterableDataset`, `DatasetDict` or `IterableDatasetDict`.
    """
    common = {"streaming": streaming, "cache_dir": cache_dir}
    local_files = sorted(glob(name_or_path)) if not os.path.isdir(name_or_path) and data_files is None else []
    if os.path.isdir(name_or_path) and data_files is None and not _has_yaml_configs(name_or_path):
        directory = name_or_path
        if config_name is not None:
            candidates = [os.path.join(directory, config_name), os.path.join(directory, "data", config_name)]
            directory = next((path for path in candidates if os.path.isdir(path)), None)
            if directory is None:
                raise ValueError(f"Config {config_name!r} not found: none of {candidates} is a folder.")
        files = [path for path in glob(os.path.join(directory, "**", "*"), recursive=True) if os.path.isfile(path)]
        builder = _builder_for(files)
        if builder is None:
            raise ValueError(f"No parquet, arrow, tar or image files found under {directory!r}.")
        found = _local_data_files(directory, builder)
        split = _local_split(split, list(found), name_or_path)
        if builder == "imagefolder":
            return datasets.load_dataset("imagefolder", data_dir=directory, split=split, **common)
        return datasets.load_dataset(builder, data_files=found, split=split, **common)
    if local_files:
        builder = _builder_for(local_files)
        if builder is None:
            raise ValueError(f"Cannot tell the format of {local_files[:3]}: expected parquet, arrow, tar or images.")
        split_name = split or "train"
        return datasets.load_dataset(builder, data_files={split_name: local_files}, split=split, **common)

    kwargs = {"data_files": data_files, "revision": revision, "token": token, **common}
    try:
        dataset = datasets.load_dataset(name_or_path, config_name, split=split, **kwargs)
    except RuntimeError as error:
        if "scripts are no longer supported" not in str(error) or revision is not None:
            raise
        logger.warning("%s holds a loading script; loading its parquet export (refs/convert/parquet).", name_or_path)
        kwargs["revision"] = "refs/convert/parquet"
        dataset = datasets.load_dataset(name_or_path, config_name, split=split, **kwargs)
    features = _any_split(dataset).features
    if features is not None and set(features) == {"text"}:
        raise ValueError(
            f"{name_or_path} loaded as the `text` builder (a `nshards.txt` beside webdataset shards?). Pass "
            "`data_files={'test': 'test/*.tar'}` (the shards' folder) to read it as a webdataset."
        )
    return dataset


def _local_split(split: str | None, available: list[str], source: str) -> str | None:
    if split is None or split in available:
        return split
    if len(available) == 1:
        logger.warning("Split %r not found in %s; using its only split %r.", split, source, available[0])
        return available[0]
    raise ValueError(f"Split {split!r} not found in {source}; available splits: {available}.")


def _any_split(dataset):
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        return next(iter(dataset.values()))
    return dataset


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
        key_column (`str`, *optional*): Column identifying each row; with a transform that has `rng_for` (the
            `TrainTransform`), each row's augmentation is drawn from `transform.rng_for(key)`.

    Returns:
        `dict[str, list]`: `{"pixel_values": [tensor, ...], "labels": [int, ...]}` for the kept rows.
    """
    image_columns = [image_column] if isinstance(image_column, str) else list(image_column)
    pixel_values, labels = [], []
    for index, raw_label in enumerate(batch[label_column]):
        label = raw_label
        if label is not None and label_fn is not None:
            try:
                label = label_fn(raw_label)
            except (KeyError, ValueError):
                counter.record("unmapped_label")
                continue
        if label is None:
            counter.record("missing_label")
            continue
        if num_labels is not None and not 0 <= int(label) < num_labels:
            counter.record("label_out_of_range")
            continue
        value = _first_present([batch[column][index] for column in image_columns])
        if value is None or (isinstance(value, dict) and value.get("bytes") is None and not value.get("path")):
            counter.record("missing_image")
            continue
        try:
            image = decode_image(value)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            counter.record("corrupt_image")
            continue
        mode = image.mode
        try:
            image = to_rgb(image)
        except ValueError:
            counter.record("unsupported_mode")
            continue
        counter.record(converted_mode=None if mode == "RGB" else mode)
        if key_column is not None and hasattr(transform, "rng_for"):
            pixel_values.append(transform(image, rng=transform.rng_for(batch[key_column][index])))
        else:
            pixel_values.append(transform(image))
        labels.append(int(label))
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
    prepare = partial(
        prepare_batch,
        transform=transform,
        image_column=image_columns,
        label_column=label_column,
        num_labels=num_labels,
        counter=counter if counter is not None else SkipCounter(),
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


def split_by_node(dataset: Dataset | IterableDataset, rank: int, world_size: int) -> Dataset | IterableDataset:
    """Gives rank `rank` its part of the data with `datasets.distributed.split_dataset_by_node`.

    A stream whose shard count is a multiple of `world_size` is split by shards; otherwise every rank reads the
    whole stream and keeps one row in `world_size` (a warning says so). Rows dropped as bad later can leave ranks
    with different row counts, so a distributed loop over such a stream needs a fixed step count (`max_steps`).

    Args:
        dataset (`Dataset` or `IterableDataset`): The dataset to split.
        rank (`int`): This process's rank.
        world_size (`int`): Number of processes.
    """
    if world_size <= 1:
        return dataset
    if isinstance(dataset, IterableDataset) and dataset.num_shards % world_size:
        logger.warning(
            "The stream has %d shards, not a multiple of world_size=%d: every rank reads all of it and keeps 1 row "
            "in %d.",
            dataset.num_shards,
            world_size,
            world_size,
        )
    return split_dataset_by_node(dataset, rank=rank, world_size=world_size)
