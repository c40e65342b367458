"""Checks of the training data made before training: a string label column becomes a `ClassLabel` up front."""

from __future__ import annotations

import logging

from datasets import ClassLabel, Dataset, Value

from .labels import model_label_names

logger = logging.getLogger(__name__)

STRING_DTYPES = ("string", "large_string")


def _is_string(dataset, column: str) -> bool:
    feature = (dataset.features or {}).get(column)
    return isinstance(feature, Value) and feature.dtype in STRING_DTYPES


def cast_string_labels(train, eval_, label_column: str, model_config):
    """
    Casts a string label column of the train (and eval) split to a `ClassLabel`, before any row is read for training:
    with the model's class names in its order when they are exactly the data's classes (the head stays as it is),
    else with the data's class names sorted. Other columns are returned unchanged.

    Returns:
        `(train, eval_)`, cast.

    Raises:
        `ValueError`: when the eval split has classes the train split lacks, or a streamed split has string labels
        and the model names no classes (the classes cannot be listed without reading the whole stream).
    """
    if not _is_string(train, label_column):
        return train, eval_
    model_names = model_label_names(model_config)
    if not isinstance(train, Dataset):
        if not model_names:
            raise ValueError(
                f"The label column {label_column!r} holds strings, and a streamed dataset cannot be scanned for its "
                "classes before training. Cast it to a ClassLabel first (`dataset.cast_column(column, "
                "ClassLabel(names=[...]))`, saved as parquet), pass --streaming false, or use a model whose config "
                "names the classes (id2label)."
            )
        names = model_names
    else:
        found = {label for label in train.unique(label_column) if label is not None}
        if eval_ is not None and isinstance(eval_, Dataset) and _is_string(eval_, label_column):
            unseen = sorted({label for label in eval_.unique(label_column) if label is not None} - found)
            if unseen:
                raise ValueError(
                    f"The eval split has classes the train split lacks: {', '.join(map(repr, unseen[:10]))}. A "
                    "classifier cannot learn them: check the splits or the label column."
                )
        names = model_names if model_names and set(model_names) == found else sorted(found)
    logger.info(
        "The label column %r holds strings: cast to a ClassLabel of %d classes (%s%s).",
        label_column,
        len(names),
        ", ".join(names[:10]),
        ", ..." if len(names) > 10 else "",
    )
    feature = ClassLabel(names=list(names))
    train = train.cast_column(label_column, feature)
    if eval_ is not None and _is_string(eval_, label_column):
        eval_ = eval_.cast_column(label_column, feature)
    return train, eval_
