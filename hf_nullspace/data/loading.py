"""Load image-classification datasets from the Hub, a local folder or local files, and find their columns.

Turning the loaded rows into model inputs (decoding, dropping and counting bad rows, collating) is in `rows.py`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from glob import glob

import datasets
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from datasets.data_files import DataFilesDict, get_data_patterns

logger = logging.getLogger(__name__)

IMAGE_COLUMN_CANDIDATES = ("image", "img", "jpg", "png", "webp", "jpeg")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "cls")

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
            f"Pass --{argument}_name (the main job) or `{argument}=` (`find_columns`) to name it."
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
    only_split_fallback: bool = True,
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

    For local sources, a `split` that does not exist is replaced by the only split there is, with a warning (unless
    `only_split_fallback=False`: then it is an error, e.g. when looking for a validation split, which must never be
    the training rows).

    Args:
        name_or_path (`str`): Hub dataset id, builder name, local folder, file or glob.
        config_name (`str`, *optional*): Dataset configuration (e.g. an ImageNet-C corruption).
        split (`str`, *optional*): Split to load; all splits (a dict) when not given.
        streaming (`bool`, *optional*, defaults to `False`): Return an `IterableDataset` that reads as it goes.
        data_files (`str`, `list` or `dict`, *optional*): Data files, relative to the repo or folder.
        revision (`str`, *optional*): Hub revision (branch, tag or commit) to pin.
        token (`str` or `bool`, *optional*): Hub token, needed for gated repos (or set `HF_TOKEN`).
        cache_dir (`str`, *optional*): datasets cache folder.
        only_split_fallback (`bool`, *optional*, defaults to `True`): For local sources, read the only split there
            is when `split` does not exist; `False` raises `ValueError` instead.

    Returns:
        `Dataset`, `IterableDataset`, `DatasetDict` or `IterableDatasetDict`.
    """
    common = {"streaming": streaming, "cache_dir": cache_dir}
    local_files = sorted(glob(name_or_path)) if not os.path.isdir(name_or_path) and data_files is None else []
    if os.path.isdir(name_or_path) and data_files is None and not _has_yaml_configs(name_or_path):
        requested = split
        directory, split = config_directory(name_or_path, config_name, split)
        files = [path for path in glob(os.path.join(directory, "**", "*"), recursive=True) if os.path.isfile(path)]
        builder = _builder_for(files)
        if builder is None:
            raise ValueError(f"No parquet, arrow, tar or image files found under {directory!r}.")
        found = _local_data_files(directory, builder)
        if split is None and requested is not None:  # the split was a sub-folder: its only split
            if len(found) == 1 and only_split_fallback:
                split = next(iter(found))
            else:
                split = _local_split(requested, list(found), name_or_path, only_split_fallback)
        split = _local_split(split, list(found), name_or_path, only_split_fallback)
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


def config_directory(root: str, config_name: str | None, split: str | None) -> tuple[str, str | None]:
    """The folder of a configuration (and split) in a local copy without a README `configs:` block.

    The configuration is the sub-folder `<config_name>` or `data/<config_name>`. A split that is a sub-folder of it
    (`<split>/`, or `<s>/` for a split named `severity_<s>`: the original ImageNet-C release
    `<corruption>/<severity>/<wnid>/`) is that sub-folder, read as its only split.

    Returns:
        `(folder, split)`: the folder to read, and the split to ask for in it (`None` for its only one).

    Raises:
        `ValueError`: when the configuration's folder does not exist.
    """
    directory = root
    if config_name is not None:
        candidates = [os.path.join(root, config_name), os.path.join(root, "data", config_name)]
        directory = next((path for path in candidates if os.path.isdir(path)), None)
        if directory is None:
            raise ValueError(f"Config {config_name!r} not found: none of {candidates} is a folder.")
        if split is not None:
            names = [split] + ([split.split("_", 1)[1]] if split.startswith("severity_") else [])
            for name in names:
                if os.path.isdir(os.path.join(directory, name)):
                    return os.path.join(directory, name), None
    return directory, split


def _local_split(split: str | None, available: list[str], source: str, fallback: bool = True) -> str | None:
    if split is None or split in available:
        return split
    if len(available) == 1 and fallback:
        logger.warning("Split %r not found in %s; using its only split %r.", split, source, available[0])
        return available[0]
    raise ValueError(f"Split {split!r} not found in {source}; available splits: {available}.")


def _any_split(dataset):
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        return next(iter(dataset.values()))
    return dataset
