"""Aligning a model's labels with a benchmark's by class name.

A benchmark yields labels in its own label space; a model scores them through its logits. When both sides have class
names (the model's `id2label`, the data's `ClassLabel` or class folders, ImageNet-A/R's WordNet ids), the names decide
which logit belongs to which label:

- the same names in the same order (allowing a handful of spelling differences, e.g. ImageNet's two "crane"
  classes, named "crane" twice in some `id2label` and "crane2" in `ILSVRC/imagenet-1k`): logits used as they are;
- the data's classes a subset of the model's (e.g. a 200-class benchmark of a 1000-class model whose labels are
  WordNet ids): the matching logits, in the data's order;
- the same names in another order: refused with `LabelOrderError`, unless `remap=True` (a head whose classes are
  permuted is more often a mistake than an intention: say so explicitly to score it by name);
- no names in common (e.g. English names on one side, WordNet ids on the other) or no names: nothing is decided
  here; the label-space check (`registry.check_label_space`) applies.

For the user's own data (label space `custom`), whose only other check is the number of classes, `label_coverage`
says whether a model's named classes cover the data's: a model trained on other classes (digits scored on shapes) is
not compared by position.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

POSITIONAL_AGREEMENT = 0.99


class LabelOrderError(ValueError):
    """A model's head holds the data's classes in another order, and remapping by name was not asked for."""


class LabelCoverageError(ValueError):
    """A model's named classes do not cover the data's: its predictions are other classes than the data's labels."""


def model_label_names(config) -> list[str] | None:
    """The class names of a model (`config.id2label` by index), or `None` for generic `LABEL_<i>` names."""
    id2label: Mapping = getattr(config, "id2label", None) or {}
    if not id2label:
        return None
    names = [str(id2label[key]) for key in sorted(id2label, key=int)]
    if all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return names


def _normalise(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def label_coverage(model_names: Sequence[str] | None, data_names: Sequence[str] | None) -> str | None:
    """Why a model's classes do not cover the data's, by name, or `None` when they do or nothing can be said.

    They cover the data when the names agree by position (as in `align_labels`) or every data class is among the
    model's names; with no names on either side nothing is decided (`None`).

    Args:
        model_names (`Sequence[str]`, *optional*): The model's class names by logit index (`model_label_names`).
        data_names (`Sequence[str]`, *optional*): The data's class names by label.
    """
    if not model_names or not data_names:
        return None
    model = [_normalise(name) for name in model_names]
    data = [_normalise(name) for name in data_names]
    if len(model) == len(data) and sum(m == d for m, d in zip(model, data)) / len(data) >= POSITIONAL_AGREEMENT:
        return None
    missing = [name for name, normalised in zip(data_names, data) if normalised not in model]
    if not missing:
        return None
    shown = ", ".join(repr(str(name)) for name in missing[:5]) + (", ..." if len(missing) > 5 else "")
    model_shown = ", ".join(repr(str(name)) for name in list(model_names)[:5]) + (", ..." if len(model) > 5 else "")
    return (
        f"{len(missing)} of the data's {len(data)} classes are not among the model's {len(model)} labels "
        f"({shown} missing; the model's labels are {model_shown})"
    )


def align_labels(
    model_names: Sequence[str] | None,
    data_names: Sequence[str] | None,
    remap: bool = False,
    what: str = "the data",
) -> list[int] | None:
    """Which logit of the model scores each label of the data, decided by class name.

    Args:
        model_names (`Sequence[str]`, *optional*): The model's class names by logit index (`model_label_names`).
        data_names (`Sequence[str]`, *optional*): The data's class names by label.
        remap (`bool`, *optional*, defaults to `False`): Score a head whose classes are a permutation of the data's
            by name, instead of refusing it.
        what (`str`, *optional*): How to call the data in messages.

    Returns:
        `list[int]` or `None`: the model's logit index for each data label (to keep, in this order, before the
        argmax), or `None` when the names leave the logits as they are (or decide nothing).

    Raises:
        `LabelOrderError`: for a permuted head without `remap`.
    """
    if not model_names or not data_names:
        return None
    model = [_normalise(name) for name in model_names]
    data = [_normalise(name) for name in data_names]
    if len(model) == len(data):
        agreement = sum(m == d for m, d in zip(model, data)) / len(data)
        if agreement >= POSITIONAL_AGREEMENT:
            return None
    unique = {name: index for index, name in enumerate(model) if model.count(name) == 1}
    found = [unique.get(name) for name in data]
    matched = sum(index is not None for index in found)
    if matched == 0:
        return None
    if matched < len(data):
        missing = [data_names[i] for i, index in enumerate(found) if index is None]
        logger.warning(
            "%d of the %d classes of %s are not among the model's labels by name (e.g. %s): they are matched by "
            "position instead.",
            len(missing),
            len(data),
            what,
            missing[:3],
        )
        return None
    if len(model) == len(data):
        moved = [(data_names[i], i, index) for i, index in enumerate(found) if index != i]
        if not remap:
            examples = ", ".join(
                f"{name!r} is label {i} of the data but logit {j} of the model" for name, i, j in moved[:3]
            )
            raise LabelOrderError(
                f"The model's labels are the classes of {what} in another order ({len(moved)} of {len(data)} moved: "
                f"{examples}). Scoring by position would count the wrong classes. If the head is right and only "
                "ordered differently, ask for scoring by name: `remap_labels=True` (evaluate_robustness), "
                "`--remap-labels` (hf-nullspace evaluate) or `--robustness_remap_labels` (main job)."
            )
    return [int(index) for index in found]
