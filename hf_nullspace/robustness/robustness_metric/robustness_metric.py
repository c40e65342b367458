"""The robustness metrics of hf_nullspace as an `evaluate` module, loadable offline:

>>> import evaluate, hf_nullspace.robustness as r, os
>>> metric = evaluate.load(os.path.join(os.path.dirname(r.__file__), "robustness_metric"))
>>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], groups=["fog/1", "fog/1", "fog/2"])
"""

from collections import defaultdict

import datasets
import evaluate

from hf_nullspace.robustness.metrics import mean_corruption_error

_DESCRIPTION = """Top-1 accuracy, per group of examples (e.g. a corruption and severity, `"fog/3"`), and the mean
Corruption Error (mCE) over groups named `<corruption>/<severity>`: normalised by AlexNet's ImageNet-C errors by
default (Hendrycks & Dietterich 2019), or by `reference_errors` ({corruption: error or [error per severity]})."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted labels.
    references (`list[int]`): true labels.
    groups (`list[str]`, *optional*): a group per example; `"<corruption>/<severity>"` groups give an mCE.
    reference_errors (`dict`, *optional*): errors of the reference model per corruption (AlexNet's when absent).
Returns:
    accuracy (`float`), and with groups: accuracy_per_group (`dict`), mce (`float`, percent; ImageNet-C style
    groups only).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RobustnessMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, groups=None, reference_errors=None):
        hits = [int(p == r) for p, r in zip(predictions, references)]
        result = {"accuracy": sum(hits) / len(hits)}
        if groups is None:
            return result
        if len(groups) != len(hits):
            raise ValueError(f"groups has {len(groups)} entries for {len(hits)} predictions.")
        by_group = defaultdict(list)
        for group, hit in zip(groups, hits):
            by_group[group].append(hit)
        result["accuracy_per_group"] = {g: sum(v) / len(v) for g, v in by_group.items()}
        errors = defaultdict(list)
        for group, accuracy in sorted(result["accuracy_per_group"].items()):
            corruption, _, severity = group.rpartition("/")
            if corruption and severity.isdigit():
                errors[corruption].append(1.0 - accuracy)
        if errors:
            result["mce"] = mean_corruption_error(errors, reference_errors)
        return result
