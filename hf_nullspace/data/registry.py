"""Registry of the ImageNet robustness benchmarks: where each lives, how its columns and labels read, how to read it.

Sources: ImageNet-1k validation from the gated `ILSVRC/imagenet-1k`; ImageNet-C from `WNJXYK/TTA-ImageNet-C` (pinned
to its v1.0 tag; one configuration per corruption, splits `severity_1`..`severity_5`, `image` and `label` columns);
ImageNet-A and ImageNet-R from the webdataset repos `clip-benchmark/wds_imagenet-a` and `clip-benchmark/wds_imagenet-r`
(`test/*.tar` shards, the image under `webp`, `png` or `jpg`, the 0..199 label under `cls`), ImageNet-R also from the
parquet repo `axiong/imagenet-r` (labelled by WordNet id). ImageNet-Sketch, ImageNet-V2, Stylized-ImageNet and
DAmageNet are read from a local path; each spec's `source_hint` says where to get them. `docs/benchmarks.md` describes
every source and its layout. Data outside the registry (a local folder or files, or any Hub dataset) becomes a spec
with `spec_from_source`.

Labels are yielded in the benchmark's own label space: 0..999 for ImageNet-1k style sets, 0..199 for ImageNet-A/R
(score a 1000-way model on the logits that `check_label_space` returns).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Sequence
from glob import glob
from typing import Literal

import torch
from datasets import ClassLabel, Dataset, DatasetDict, IterableDatasetDict

from .heldout import HeldOutSplit
from .imagenet_c import IMAGENET_C_CORRUPTIONS, IMAGENET_C_SEVERITIES
from .imagenet_classes import IMAGENET_A_INDICES_IN_1K, IMAGENET_A_WNIDS, IMAGENET_R_INDICES_IN_1K, IMAGENET_R_WNIDS
from .loading import IMAGE_COLUMN_CANDIDATES, find_columns, load_image_dataset
from .rows import SkipCounter, collate_fn, prepare_dataset

LabelSpace = Literal["imagenet-1k", "imagenet-a-200", "imagenet-r-200", "custom"]

_WNID = re.compile(r"^n\d{8}$")
_WEBDATASET_IMAGES = ("webp", "png", "jpg", "jpeg")
# the Hub's webdataset columns, or `image` of a local imagefolder of the original release (`<wnid>/` folders)
_LOCAL_OR_WEBDATASET_IMAGES = (*_WEBDATASET_IMAGES, "image")
_TAR_SHARDS = {"test": "test/*.tar"}
IMAGENET_C_REPO = "WNJXYK/TTA-ImageNet-C"
IMAGENET_C_REVISION = "bb0fa9db6d8f94ef279a1f6bbb8024736d542fd7"  # tag v1.0


def _imagenet_r_wnid(wnid: str) -> int:
    return IMAGENET_R_WNIDS.index(wnid)


def _imagenet_v2_key(key: str) -> int:
    """ImageNetV2 tar members are `<variant>-format-val/<class index>/<hash>.jpeg`: the folder is the label."""
    parts = key.split("/")
    if len(parts) < 2:
        raise ValueError(f"No class folder in key {key!r}.")
    return int(parts[-2])


# Label functions a spec can name (a name keeps the spec a small, hashable, printable value).
LABEL_FNS: dict[str, Callable] = {"imagenet_r_wnid": _imagenet_r_wnid, "imagenet_v2_key": _imagenet_v2_key}

_SUBSET_INDICES = {"imagenet-a-200": IMAGENET_A_INDICES_IN_1K, "imagenet-r-200": IMAGENET_R_INDICES_IN_1K}
_SUBSET_WNIDS = {"imagenet-a-200": IMAGENET_A_WNIDS, "imagenet-r-200": IMAGENET_R_WNIDS}


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives and how to read it.

    Args:
        name (`str`): Registry name, e.g. `"imagenet-c/gaussian_noise/5"`.
        repo_id (`str`, *optional*): Hub dataset repo; `None` for local-only benchmarks.
        config_name (`str`, *optional*): Dataset configuration.
        split (`str`, *optional*, defaults to `"test"`): Split to evaluate.
        data_files (`dict`, *optional*): Data files inside the repo (always set for webdataset repos).
        image_columns (`tuple[str, ...]`, *optional*): Image columns, the first present non-empty one is used per row.
        label_column (`str`, *optional*): Label column; autodetected (`label`, `labels`, `cls`) when `None`.
        label_fn (`str`, *optional*): Name in `LABEL_FNS` of the function mapping the label cell to an int.
        label_space (`str`, *optional*, defaults to `"imagenet-1k"`): `"imagenet-1k"`, `"imagenet-a-200"`,
            `"imagenet-r-200"` or `"custom"`.
        num_classes (`int`, *optional*, defaults to `1000`): Number of classes of the label space.
        revision (`str`, *optional*): Pinned Hub revision.
        gated (`bool`, *optional*, defaults to `False`): The repo needs accepted terms and a token.
        local_only (`bool`, *optional*, defaults to `False`): No Hub source: a local path must be given.
        path (`str`, *optional*): Local folder or files that replace the Hub source.
        display_name (`str`, *optional*): Human name for model cards.
        source_hint (`str`, *optional*): Where to get the data, shown when a local-only benchmark has no path.
        image_size (`int`, *optional*): The size the images are stored at when the benchmark was made already resized
            and centre-cropped (ImageNet-C, DAmageNet, Stylized-ImageNet: 224): they are evaluated at that size
            without a second resize and crop (see `transforms.precropped_transform`).
        held_out (`HeldOutSplit`, *optional*): Read only the rows of `split` that this selection holds out (data
            without a validation split, evaluated on the rows a finetuning run did not train on; see `heldout.py`).
    """

    name: str
    repo_id: str | None = None
    config_name: str | None = None
    split: str | None = "test"
    data_files: dict | None = dataclasses.field(default=None, hash=False)
    image_columns: tuple[str, ...] = IMAGE_COLUMN_CANDIDATES
    label_column: str | None = None
    label_fn: str | None = None
    label_space: LabelSpace = "imagenet-1k"
    num_classes: int | None = 1000
    revision: str | None = None
    gated: bool = False
    local_only: bool = False
    path: str | None = None
    display_name: str | None = None
    source_hint: str | None = None
    image_size: int | None = None
    held_out: HeldOutSplit | None = None

    def dataset_card_info(self) -> dict:
        """Dataset fields of a model-index entry: `type` (the Hub repo, or the benchmark name for local data),
        `name`, `config`, `split` and `revision`."""
        from_hub = self.path is None and self.repo_id is not None
        return {
            "type": self.repo_id if from_hub else self.name,
            "name": self.display_name or self.name,
            "config": self.config_name,
            "split": self.split,
            "revision": self.revision if from_hub else None,
        }


def _imagenet_c_specs() -> dict[str, BenchmarkSpec]:
    return {
        f"imagenet-c/{corruption}/{severity}": BenchmarkSpec(
            name=f"imagenet-c/{corruption}/{severity}",
            repo_id=IMAGENET_C_REPO,
            config_name=corruption,
            split=f"severity_{severity}",
            image_columns=("image",),
            label_column="label",
            revision=IMAGENET_C_REVISION,
            display_name=f"ImageNet-C {corruption} severity {severity}",
            image_size=224,
        )
        for corruption in IMAGENET_C_CORRUPTIONS
        for severity in IMAGENET_C_SEVERITIES
    }


def _local_spec(name: str, display_name: str, hint: str, image_size: int | None = None) -> BenchmarkSpec:
    return BenchmarkSpec(
        name=name, local_only=True, display_name=display_name, source_hint=hint, image_size=image_size
    )


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "imagenet": BenchmarkSpec(
        name="imagenet",
        repo_id="ILSVRC/imagenet-1k",
        split="validation",
        image_columns=("image",),
        label_column="label",
        gated=True,
        display_name="ImageNet-1k validation",
    ),
    **_imagenet_c_specs(),
    "imagenet-a": BenchmarkSpec(
        name="imagenet-a",
        repo_id="clip-benchmark/wds_imagenet-a",
        data_files=_TAR_SHARDS,
        image_columns=_LOCAL_OR_WEBDATASET_IMAGES,
        label_space="imagenet-a-200",
        num_classes=200,
        display_name="ImageNet-A",
    ),
    "imagenet-r": BenchmarkSpec(
        name="imagenet-r",
        repo_id="clip-benchmark/wds_imagenet-r",
        data_files=_TAR_SHARDS,
        image_columns=_LOCAL_OR_WEBDATASET_IMAGES,
        label_space="imagenet-r-200",
        num_classes=200,
        display_name="ImageNet-R",
    ),
    "imagenet-r-parquet": BenchmarkSpec(
        name="imagenet-r-parquet",
        repo_id="axiong/imagenet-r",
        image_columns=("image",),
        label_column="wnid",
        label_fn="imagenet_r_wnid",
        label_space="imagenet-r-200",
        num_classes=200,
        display_name="ImageNet-R",
    ),
    "imagenet-sketch": _local_spec(
        "imagenet-sketch",
        "ImageNet-Sketch",
        "an imagefolder of the 1000 <wnid>/ folders, or repo_id='clip-benchmark/wds_imagenet_sketch' (webdataset, "
        "jpg + cls; not verified here)",
    ),
    "imagenet-v2": _local_spec(
        "imagenet-v2",
        "ImageNet-V2 matched-frequency",
        "the extracted imagenetv2-matched-frequency folders 0..999 (read as numbers, not sorted strings), or "
        "repo_id='clip-benchmark/wds_imagenetv2' (webdataset, cls 0..999; not verified here)",
    ),
    "stylized-imagenet": _local_spec(
        "stylized-imagenet",
        "Stylized-ImageNet validation",
        "generate it with github.com/rgeirhos/Stylized-ImageNet; an imagefolder of the 1000 <wnid>/ folders",
        image_size=224,
    ),
    "damagenet": _local_spec(
        "damagenet",
        "DAmageNet",
        "download it from github.com/Sizhe-Chen/DAmageNet; an imagefolder or parquet with labels 0..999",
        image_size=224,
    ),
}


def get_benchmark(
    name: str, path: str | None = None, repo_id: str | None = None, revision: str | None = None
) -> BenchmarkSpec:
    """Returns the registered benchmark `name`, with its source optionally replaced.

    Args:
        name (`str`): A key of `BENCHMARKS`, e.g. `"imagenet-a"` or `"imagenet-c/fog/3"`.
        path (`str`, *optional*): Local folder or files to read instead of the Hub.
        repo_id (`str`, *optional*): Another Hub repo with the same columns; drops the pinned revision.
        revision (`str`, *optional*): Hub revision to pin.

    Raises:
        `ValueError`: for an unknown name, listing the valid ones.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}. Valid names: {sorted(BENCHMARKS)}.")
    spec = BENCHMARKS[name]
    if repo_id is not None:
        spec = dataclasses.replace(spec, repo_id=repo_id, revision=None, local_only=False)
    if revision is not None:
        spec = dataclasses.replace(spec, revision=revision)
    if path is not None:
        spec = dataclasses.replace(spec, path=path)
    return spec


def spec_from_source(
    source: str | os.PathLike,
    split: str = "test",
    config_name: str | None = None,
    name: str | None = None,
    num_classes: int | None = None,
    display_name: str | None = None,
) -> BenchmarkSpec:
    """A benchmark of data outside the registry: a local folder, local files or a glob, or a Hub dataset id.

    A source that exists on disk (or that a glob matches) is read locally; anything else is read as a Hub dataset id.
    Labels are the data's own (label space `"custom"`).

    Args:
        source (`str` or `os.PathLike`): Local folder, files or glob, or Hub dataset id (see `load_image_dataset`).
        split (`str`, *optional*, defaults to `"test"`): Split to evaluate.
        config_name (`str`, *optional*): Dataset configuration.
        name (`str`, *optional*): Benchmark name; the last part of `source` when not given.
        num_classes (`int`, *optional*): Number of classes, checked against the model's labels; not checked when
            `None`.
        display_name (`str`, *optional*): Human name for model cards; `source` when not given.
    """
    source = str(source)
    local = os.path.exists(source) or bool(glob(source))
    return BenchmarkSpec(
        name=name or os.path.basename(source.rstrip("/")) or source,
        repo_id=None if local else source,
        path=source if local else None,
        config_name=config_name,
        split=split,
        label_space="custom",
        num_classes=num_classes,
        display_name=display_name or source,
    )


def check_label_space(spec: BenchmarkSpec, num_model_labels: int) -> list[int] | None:
    """Checks, before any data is read, that a model with `num_model_labels` outputs can be scored on `spec`.

    Returns:
        `list[int]` or `None`: the logit columns to keep before the argmax (the 200 ImageNet-1k indices of
        ImageNet-A/R for a 1000-way model), or `None` when all logits are used as they are.

    Raises:
        `ValueError`: when the model's label space cannot score the benchmark.
    """
    space = spec.label_space
    if space == "imagenet-1k" and num_model_labels == 1000:
        return None
    if space in _SUBSET_INDICES:
        if num_model_labels == 1000:
            return list(_SUBSET_INDICES[space])
        if num_model_labels == 200:
            return None
    if space == "custom" and (spec.num_classes is None or num_model_labels == spec.num_classes):
        return None
    wanted = {
        "imagenet-1k": "1000 ImageNet-1k labels",
        "imagenet-a-200": "1000 ImageNet-1k labels (or the 200 ImageNet-A classes)",
        "imagenet-r-200": "1000 ImageNet-1k labels (or the 200 ImageNet-R classes)",
    }.get(space, f"{spec.num_classes} labels")
    raise ValueError(
        f"A model with {num_model_labels} labels cannot be scored on {spec.name!r} (label space {space!r}): it needs "
        f"{wanted}."
    )


def _class_label_fn(names: Sequence[str], spec: BenchmarkSpec) -> Callable | None:
    """Maps the indices of an `imagefolder` ClassLabel (sorted folder names) to the benchmark's label space."""
    names = list(names)
    if all(name.isdigit() for name in names):
        if names == [str(index) for index in range(len(names))]:
            return None
        return lambda index: int(names[index])
    if not all(_WNID.match(name) for name in names):
        return None
    if spec.label_space in _SUBSET_WNIDS:
        target = list(_SUBSET_WNIDS[spec.label_space])
        return None if names == target else lambda index: target.index(names[index])
    if spec.label_space == "imagenet-1k" and (len(names) != 1000 or names != sorted(names)):
        raise ValueError(
            f"{spec.name}: the local copy has {len(names)} WordNet-id class folders, so its labels are not "
            "ImageNet-1k "
            "indices (that needs all 1000 folders, sorted). Use the full copy, or data with integer labels."
        )
    return None


def load_benchmark(spec: BenchmarkSpec, streaming: bool = True, token: str | bool | None = None):
    """Loads the benchmark's split from its local path or its Hub repo (see `load_image_dataset`).

    Raises:
        `ValueError`: for a local-only benchmark without a path.
    """
    if spec.path is None and (spec.local_only or spec.repo_id is None):
        raise ValueError(
            f"Benchmark {spec.name!r} has no Hub source: pass a local path, e.g. get_benchmark({spec.name!r}, "
            f"path='/data/{spec.name}'). Source: {spec.source_hint or 'see the benchmark documentation'}."
        )
    if spec.held_out is not None:  # the held-out rows of a split: selected by index, on the whole split
        return spec.held_out.apply(load_benchmark(dataclasses.replace(spec, held_out=None), False, token))[1]
    if spec.path is not None:
        return load_image_dataset(spec.path, spec.config_name, spec.split, streaming=streaming)
    return load_image_dataset(
        spec.repo_id,
        spec.config_name,
        spec.split,
        streaming=streaming,
        data_files=spec.data_files,
        revision=spec.revision,
        token=token,
    )


def label_names_of(spec: BenchmarkSpec, class_names: Sequence[str] | None) -> list[str] | None:
    """The names of the labels a benchmark yields (for aligning them with a model's `id2label`), or `None`.

    ImageNet-A/R yield their 200 WordNet ids whatever the copy; otherwise the data's own class names (a `ClassLabel`,
    imagefolder folders), unless they are numbers (ImageNetV2's folders) or the labels are mapped by a function.
    """
    if spec.label_space in _SUBSET_WNIDS:
        return list(_SUBSET_WNIDS[spec.label_space])
    if spec.label_fn or not class_names or all(str(name).isdigit() for name in class_names):
        return None
    if spec.num_classes is not None and len(class_names) != spec.num_classes:
        return None
    return [str(name) for name in class_names]


@dataclasses.dataclass
class OpenedBenchmark:
    """A benchmark's split opened for reading, images not decoded yet (see `open_benchmark`).

    Args:
        spec (`BenchmarkSpec`): What was opened.
        rows (`IterableDataset`): The raw rows; image columns are `datasets.Image(decode=False)` cells.
        image_columns (`list[str]`): Image columns present, in order of preference.
        label_column (`str`): The label column.
        label_fn (`Callable`, *optional*): Maps a label cell to the benchmark's label space.
        label_names (`list[str]`, *optional*): Names of the labels yielded (see `label_names_of`).
        num_rows (`int`, *optional*): Rows of the split, when known without reading it.
    """

    spec: BenchmarkSpec
    rows: object
    image_columns: list[str]
    label_column: str
    label_fn: Callable | None
    label_names: list[str] | None
    num_rows: int | None


def open_benchmark(
    spec: BenchmarkSpec, streaming: bool = True, token: str | bool | None = None, num_rows: int | None = None
) -> OpenedBenchmark:
    """Opens a benchmark's split: finds its image and label columns and the mapping of its labels, and casts the
    image columns to undecoded cells, so that rows can be checked, selected and decoded one by one (`read_row`).

    Args:
        spec (`BenchmarkSpec`): From `get_benchmark`.
        streaming (`bool`, *optional*, defaults to `True`): Stream instead of downloading the whole split.
        token (`str` or `bool`, *optional*): Hub token for gated repos.
        num_rows (`int`, *optional*): Rows of the split if known already (e.g. from `sources.resolve_sources`).
    """
    import datasets

    dataset = load_benchmark(spec, streaming=streaming, token=token)
    if spec.held_out is not None:
        num_rows = None  # the held-out part, not the whole split
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        raise ValueError(f"{spec.name}: expected one split, got {list(dataset)}; set the spec's split.")
    if isinstance(dataset, Dataset):
        num_rows = dataset.num_rows if num_rows is None else num_rows
        dataset = dataset.to_iterable_dataset()
    if dataset.features is None:
        dataset = dataset._resolve_features()
    if num_rows is None:
        splits = getattr(dataset.info, "splits", None) or {}
        split_info = splits.get(spec.split) if spec.split else None
        num_rows = getattr(split_info, "num_examples", None) or None
    columns = list(dataset.column_names or dataset.features)
    image_columns = [column for column in spec.image_columns if column in columns]
    if not image_columns:
        raise ValueError(f"{spec.name}: none of the image columns {spec.image_columns} is there; columns: {columns}.")
    _, label_column = find_columns(columns, image_columns[0], spec.label_column)
    label_fn = LABEL_FNS[spec.label_fn] if spec.label_fn else None
    features = dataset.features or {}
    class_names = None
    if isinstance(features.get(label_column), ClassLabel):
        class_names = list(features[label_column].names)
        if label_fn is None:
            label_fn = _class_label_fn(class_names, spec)
    for column in image_columns:
        if isinstance(features.get(column), datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    names = label_names_of(spec, class_names if label_fn is None or spec.label_space in _SUBSET_WNIDS else None)
    return OpenedBenchmark(spec, dataset, image_columns, label_column, label_fn, names, num_rows)


def iter_benchmark(
    spec: BenchmarkSpec,
    transform: Callable,
    batch_size: int,
    max_samples: int | None = None,
    streaming: bool = True,
    counter: SkipCounter | None = None,
    token: str | bool | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yields batches `{"pixel_values": (B, 3, H, W), "labels": (B,)}` of a benchmark, labels in its label space.

    Bad rows are dropped and counted in `counter` (see `prepare_batch`); the last batch may be smaller.

    Args:
        spec (`BenchmarkSpec`): From `get_benchmark`.
        transform (`Callable`): Image -> tensor, usually an `EvalTransform` (pixels in [0, 1] without mean/std).
        batch_size (`int`): Rows per batch.
        max_samples (`int`, *optional*): Stop after this many kept rows.
        streaming (`bool`, *optional*, defaults to `True`): Stream instead of downloading the whole split.
        counter (`SkipCounter`, *optional*): Receives the skip counts (a new one by default).
        token (`str` or `bool`, *optional*): Hub token for gated repos.
    """
    opened = open_benchmark(spec, streaming=streaming, token=token)
    prepared = prepare_dataset(
        opened.rows,
        transform,
        opened.image_columns,
        opened.label_column,
        spec.num_classes,
        counter=counter,
        label_fn=opened.label_fn,
        batch_size=batch_size,
    )
    if max_samples is not None:
        prepared = prepared.take(max_samples)
    rows = []
    for row in prepared:
        rows.append(row)
        if len(rows) == batch_size:
            yield collate_fn(rows)
            rows = []
    if rows:
        yield collate_fn(rows)
