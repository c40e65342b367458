"""Robustness metrics of the paper's protocol: mCE (Hendrycks & Dietterich, ICLR 2019) and the 11-column Average."""

from collections.abc import Mapping, Sequence

from ..data.imagenet_c import ALEXNET_ERR

# The columns of the paper's "Average", in its table order; C enters as 100 - mCE.
PAPER_AVERAGE_COLUMNS = (
    "clean",
    "patchfool",
    "cw",
    "fgsm",
    "damagenet",
    "imagenet-a",
    "imagenet-c",
    "imagenet-v2",
    "imagenet-r",
    "imagenet-sketch",
    "stylized-imagenet",
)


def corruption_errors(
    errors: Mapping[str, Sequence[float]], reference: Mapping[str, float | Sequence[float]]
) -> dict[str, float]:
    """
    Corruption Error of each corruption: 100 * mean over severities of the error, divided by the reference's error.

    Args:
        errors (`Mapping[str, Sequence[float]]`):
            Error rates in [0, 1] per corruption, one per severity.
        reference (`Mapping[str, float | Sequence[float]]`):
            The reference's error per corruption: a mean over severities (as `ALEXNET_ERR`) or one per severity
            (e.g. a baseline model's, for data without published AlexNet errors).

    Returns:
        `dict[str, float]`: CE per corruption (100 = as good as the reference).
    """
    missing = sorted(set(errors) - set(reference))
    if missing:
        raise ValueError(f"No reference error for corruption(s) {missing}; the reference has {sorted(reference)}.")
    result = {}
    for corruption, values in errors.items():
        ref = reference[corruption]
        ref = sum(ref) / len(ref) if isinstance(ref, Sequence) else ref
        if ref <= 0:
            raise ValueError(f"The reference error of {corruption!r} is {ref}: a CE relative to it is undefined.")
        result[corruption] = 100.0 * (sum(values) / len(values)) / ref
    return result


def mean_corruption_error(
    errors: Mapping[str, Sequence[float]], reference: Mapping[str, float | Sequence[float]] | None = None
) -> float:
    """
    mCE: the mean over corruptions of their Corruption Error. With no `reference`, ImageNet-C's AlexNet errors (the
    published protocol, Hendrycks & Dietterich 2019).
    """
    values = corruption_errors(errors, ALEXNET_ERR if reference is None else reference)
    return sum(values.values()) / len(values)


def paper_average(columns: Mapping[str, float]) -> float:
    """
    The paper's Average: mean of the 11 columns of `PAPER_AVERAGE_COLUMNS`, in percent, with ImageNet-C entering
    as 100 - mCE.

    Args:
        columns (`Mapping[str, float]`): accuracies in percent for each column and the mCE under `"imagenet-c"`.
    """
    missing = [name for name in PAPER_AVERAGE_COLUMNS if name not in columns]
    if missing:
        raise ValueError(f"The paper's Average needs all 11 columns; missing: {missing}.")
    values = [100.0 - columns[n] if n == "imagenet-c" else columns[n] for n in PAPER_AVERAGE_COLUMNS]
    return sum(values) / len(values)
