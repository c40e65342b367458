"""Datasets: loading (Hub, local, streaming), transforms, bad-row handling and the robustness benchmark registry."""

from .imagenet_classes import (
    ALEXNET_ERR,
    IMAGENET_A_INDICES_IN_1K,
    IMAGENET_A_WNIDS,
    IMAGENET_C_CORRUPTIONS,
    IMAGENET_C_SEVERITIES,
    IMAGENET_R_INDICES_IN_1K,
    IMAGENET_R_WNIDS,
)
from .loading import (
    SKIP_KINDS,
    BadRowsError,
    SkipCounter,
    collate_fn,
    decode_image,
    find_columns,
    load_image_dataset,
    prepare_batch,
    prepare_dataset,
    split_by_node,
)
from .registry import (
    BENCHMARKS,
    BenchmarkSpec,
    check_label_space,
    get_benchmark,
    iter_benchmark,
    load_benchmark,
)
from .transforms import EvalTransform, TrainTransform, to_rgb, transforms_from_image_processor

__all__ = [
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
    "BenchmarkSpec",
    "EvalTransform",
    "SkipCounter",
    "TrainTransform",
    "check_label_space",
    "collate_fn",
    "decode_image",
    "find_columns",
    "get_benchmark",
    "iter_benchmark",
    "load_benchmark",
    "load_image_dataset",
    "prepare_batch",
    "prepare_dataset",
    "split_by_node",
    "to_rgb",
    "transforms_from_image_processor",
]
