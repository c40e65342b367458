"""Datasets: loading (Hub, local, streaming), transforms, bad-row handling and the robustness benchmark registry."""

from .heldout import HeldOutSplit
from .imagenet_c import ALEXNET_ERR, IMAGENET_C_CORRUPTIONS, IMAGENET_C_SEVERITIES
from .imagenet_classes import IMAGENET_A_INDICES_IN_1K, IMAGENET_A_WNIDS, IMAGENET_R_INDICES_IN_1K, IMAGENET_R_WNIDS
from .labels import LabelOrderError, align_labels
from .loading import find_columns, load_image_dataset
from .registry import (
    BENCHMARKS,
    BenchmarkSpec,
    check_label_space,
    get_benchmark,
    iter_benchmark,
    load_benchmark,
    open_benchmark,
    spec_from_source,
)
from .rows import SKIP_KINDS, BadRowsError, SkipCounter, collate_fn, decode_image, prepare_batch, prepare_dataset
from .sources import MissingBenchmarksError, resolve_sources
from .transforms import EvalTransform, TrainTransform, to_rgb, transforms_from_image_processor

__all__ = [
    "HeldOutSplit",
    "ALEXNET_ERR",
    "BENCHMARKS",
    "IMAGENET_A_INDICES_IN_1K",
    "IMAGENET_A_WNIDS",
    "IMAGENET_C_CORRUPTIONS",
    "IMAGENET_C_SEVERITIES",
    "IMAGENET_R_INDICES_IN_1K",
    "IMAGENET_R_WNIDS",
    "SKIP_KINDS",
    "BadRowsError",
    "LabelOrderError",
    "MissingBenchmarksError",
    "BenchmarkSpec",
    "EvalTransform",
    "SkipCounter",
    "TrainTransform",
    "align_labels",
    "check_label_space",
    "collate_fn",
    "decode_image",
    "find_columns",
    "get_benchmark",
    "iter_benchmark",
    "load_benchmark",
    "load_image_dataset",
    "open_benchmark",
    "prepare_batch",
    "prepare_dataset",
    "resolve_sources",
    "spec_from_source",
    "to_rgb",
    "transforms_from_image_processor",
]
