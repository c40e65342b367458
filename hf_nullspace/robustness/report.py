"""`RobustnessReport`: the results of a suite for one model or several, as JSON, Markdown and PNG figures."""

import json
import os
from collections import defaultdict

from ..data.imagenet_c import ALEXNET_ERR, IMAGENET_C_SEVERITIES
from .metrics import PAPER_AVERAGE_COLUMNS, mean_corruption_error, paper_average

REPORT_JSON = "robustness.json"
REPORT_MARKDOWN = "robustness.md"


def _span(values) -> str:
    """`1-5` for consecutive integers, else a comma-separated list."""
    values = sorted(values)
    if len(values) > 1 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(str(v) for v in values)


PAPER_AVERAGE_DATASET = {
    "dataset_type": "paper-average",
    "dataset_name": "Average of the paper's 11 columns: clean, PatchFool, CW, FGSM, DAmageNet, ImageNet-A, "
    "100 - ImageNet-C mCE, ImageNet-V2, ImageNet-R, ImageNet-Sketch, Stylized-ImageNet",
    "dataset_config": None,
    "dataset_split": None,
    "dataset_revision": None,
}


def _cap_of(row: dict) -> dict:
    """`{"max_samples": n}` when the row's evaluation read a subset of its source, else `{}`."""
    cap = (row.get("params") or {}).get("max_samples")
    return {} if cap is None else {"max_samples": cap}


def _family(row: dict) -> str:
    """`imagenet-c` for rows of the published ImageNet-C, `corruption` for corruptions applied on the fly."""
    return row["benchmark"].split("/", 1)[0]


class RobustnessReport:
    """
    Per model, `results` (one row per clean/attack/shift evaluation, per corruption averaged over severities, and the
    aggregates) and `details` (one row per corruption and severity). A row is `{"benchmark", "metric", "value",
    "dataset_type", "dataset_name", "dataset_config", "dataset_split", "dataset_revision", "num_samples", "skipped",
    "skipped_by_kind", "params", "sampling", "group", "corruption", "severity"}`; accuracies and mCE are fractions
    (mCE 0.56 = 56%). `params` holds the settings of the evaluation (attack budgets and steps; `max_samples` when the
    evaluation read a subset, described in `sampling`).

    Aggregate rows say what they aggregate, in their dataset fields and `params`:

    - `imagenet-c/<corruption>` (`corruption/<corruption>` on the fly): accuracy averaged over the severities read;
    - `imagenet-c` / `mce`: the mCE (AlexNet-normalised), only when all 15 corruptions x 5 severities were read;
      otherwise `imagenet-c-partial` / `partial_mce` over the corruptions that were, which is not comparable with
      published mCE figures;
    - `imagenet-c` / `accuracy` (`corruptions` / `accuracy` on the fly): accuracy averaged over every
      (corruption, severity) read; `relative_mce`: the CE relative to the first model;
    - `average`: the paper's 11-column Average, only when all 11 columns (with the full mCE) are there.
    """

    def __init__(self, suite: str, models: dict[str, str]):
        self.suite = suite
        self.paths = dict(models)
        self.rows: dict[str, list[dict]] = {name: [] for name in models}
        self.results: dict[str, list[dict]] = {}
        self.details: dict[str, list[dict]] = {}
        self.num_processes = 1

    def add(self, model: str, evaluation, spec, correct: int, counts: dict, sampling: dict | None = None) -> None:
        """Records the top-1 accuracy of `model` on one evaluation.

        Args:
            model (`str`): The model's name.
            evaluation (`Evaluation`): What was scored.
            spec (`BenchmarkSpec`): The data it read.
            correct (`int`): Top-1 hits.
            counts (`dict`): Rows of the evaluation's subset: `{"seen", "kept", "counts": {kind: n}}` (skip kinds and
                `converted_<mode>`); `kept` rows were scored.
            sampling (`dict`, *optional*): `{"max_samples", "selection"}` when a subset of the source was read.
        """
        info = spec.dataset_card_info()
        total = counts.get("kept", 0)
        skipped = {k: v for k, v in counts.get("counts", {}).items() if not k.startswith("converted")}
        sampling = dict(sampling or {})
        params = evaluation.kwargs
        if sampling.get("max_samples") is not None:
            params["max_samples"] = sampling["max_samples"]
        self.rows[model].append(
            {
                "benchmark": evaluation.name,
                "metric": "accuracy",
                "value": correct / total if total else None,
                "dataset_type": info["type"],
                "dataset_name": info["name"],
                "dataset_config": info["config"],
                "dataset_split": info["split"],
                "dataset_revision": info["revision"],
                "num_samples": total,
                "skipped": sum(skipped.values()),
                "skipped_by_kind": skipped,
                "params": params,
                "sampling": sampling,
                "group": evaluation.group,
                "corruption": evaluation.corruption,
                "severity": evaluation.severity,
            }
        )

    def finalize(self) -> None:
        """Builds per-corruption means and the aggregates (mCE or partial mCE, relative mCE, the paper's Average)."""
        names = list(self.rows)
        for name in names:
            rows = self.rows[name]
            summary = [r for r in rows if r["group"] != "corruption"]
            families: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
            for r in rows:
                if r["group"] == "corruption":
                    families[_family(r)][r["corruption"]].append(r)
            for family, by_corruption in families.items():
                summary += [self._corruption_mean(family, group) for group in by_corruption.values()]
                summary += self._aggregates(name, names, family, by_corruption)
            average = self._paper_average(summary)
            if average is not None:
                summary.append(
                    {
                        **summary[0],
                        **PAPER_AVERAGE_DATASET,
                        "benchmark": "average",
                        "metric": "average",
                        "value": average,
                        "params": {"columns": list(PAPER_AVERAGE_COLUMNS)},
                        "sampling": {},
                        "num_samples": None,
                        "skipped": 0,
                        "skipped_by_kind": {},
                        "group": "aggregate",
                        "corruption": None,
                        "severity": None,
                    }
                )
            self.results[name] = summary
            self.details[name] = [r for r in rows if r["group"] == "corruption"]

    @staticmethod
    def _mean(values: list) -> float | None:
        return None if not values or any(v is None for v in values) else sum(values) / len(values)

    def _corruption_mean(self, family: str, group: list[dict]) -> dict:
        first = group[0]
        severities = [r["severity"] for r in group]
        splits = list(dict.fromkeys(r["dataset_split"] for r in group))
        base = "ImageNet-C" if family == "imagenet-c" else f"{first['dataset_name']}, corrupted on the fly:"
        return {
            **first,
            "benchmark": first["benchmark"].rsplit("/", 1)[0],
            "dataset_type": (
                first["benchmark"].rsplit("/", 1)[0]
                if first["dataset_type"] == first["benchmark"]
                else first["dataset_type"]
            ),
            "value": self._mean([r["value"] for r in group]),
            "dataset_name": f"{base} {first['corruption']}, mean over severities {_span(severities)}",
            "dataset_split": ", ".join(s for s in splits if s) or None,
            "num_samples": sum(r["num_samples"] for r in group),
            "skipped": sum(r["skipped"] for r in group),
            "severity": None,
            "params": {"severities": severities, **_cap_of(first)},
        }

    def _aggregates(self, name: str, names: list[str], family: str, by_corruption: dict) -> list[dict]:
        rows = []
        first = next(iter(by_corruption.values()))[0]
        corruptions = list(by_corruption)
        severities = {c: [r["severity"] for r in group] for c, group in by_corruption.items()}
        errors = self._errors(name, family)
        num_samples = sum(r["num_samples"] for group in by_corruption.values() for r in group)
        cells = sum(len(v) for v in severities.values())
        imagenet_c = family == "imagenet-c"
        cap = _cap_of(first)
        what = (
            f"{len(corruptions)} corruptions x {_span(sorted({s for v in severities.values() for s in v}))} severities"
            if len({tuple(v) for v in severities.values()}) == 1
            else f"{cells} (corruption, severity) pairs of {len(corruptions)} corruptions"
        )
        complete = (
            imagenet_c
            and set(corruptions) == set(ALEXNET_ERR)
            and all(sorted(severities[c]) == list(IMAGENET_C_SEVERITIES) for c in corruptions)
        )
        if imagenet_c:
            # the model-index groups metrics by dataset type, config, split and revision: a partial aggregate names
            # the corruptions and severities it read there, so it never shares an entry with the full one
            levels = sorted({s for v in severities.values() for s in v})
            config = None if complete else ",".join(corruptions)
            split = None if complete else ",".join(f"severity_{s}" for s in levels)
            base_name = "ImageNet-C" if complete else f"ImageNet-C, {len(corruptions)} of 15 corruptions"
        else:
            config, split = first["dataset_config"], first["dataset_split"]
            base_name = f"{first['dataset_name']}, corrupted on the fly"
        aggregate = {
            **first,
            # a local copy is typed by its benchmark name: the group's, not the first source's
            "dataset_type": "imagenet-c" if first["dataset_type"].startswith("imagenet-c/") else first["dataset_type"],
            "dataset_name": f"{base_name} ({what})",
            "dataset_config": config,
            "dataset_split": split,
            "group": "aggregate",
            "severity": None,
            "corruption": None,
            "num_samples": num_samples,
            "skipped": sum(r["skipped"] for group in by_corruption.values() for r in group),
            "skipped_by_kind": {},
        }
        usable = all(len(errors.get(c, [])) == len(severities[c]) for c in corruptions)
        if imagenet_c and set(corruptions) <= set(ALEXNET_ERR):
            value = mean_corruption_error(errors) / 100 if usable else None
            if complete:
                rows.append(
                    {
                        **aggregate,
                        "benchmark": "imagenet-c",
                        "metric": "mce",
                        "value": value,
                        "params": {"reference": "AlexNet", "corruptions": 15, "severities": 5, **cap},
                    }
                )
            else:
                missing = [c for c in ALEXNET_ERR if c not in by_corruption]
                rows.append(
                    {
                        **aggregate,
                        "benchmark": "imagenet-c-partial",
                        "metric": "partial_mce",
                        "value": value,
                        "params": {
                            "reference": "AlexNet",
                            "corruptions": corruptions,
                            "severities": severities,
                            "missing": missing,
                            "comparable_with_published_mce": False,
                            **cap,
                        },
                    }
                )
        mean_accuracy = self._mean([r["value"] for group in by_corruption.values() for r in group])
        rows.append(
            {
                **aggregate,
                "benchmark": "imagenet-c" if imagenet_c else "corruptions",
                "metric": "accuracy",
                "value": mean_accuracy,
                "params": {"mean_over": what, **cap},
            }
        )
        baseline = names[0]
        if len(names) > 1 and name != baseline:
            reference = self._errors(baseline, family)
            try:
                value = mean_corruption_error(errors, reference) / 100 if usable and reference else None
            except ValueError:
                value = None
            rows.append(
                {
                    **aggregate,
                    "benchmark": "imagenet-c" if imagenet_c else "corruptions",
                    "metric": "relative_mce",
                    "value": value,
                    "params": {"reference": baseline, "mean_over": what, **cap},
                }
            )
        return rows

    def _errors(self, name: str, family: str) -> dict[str, list[float]]:
        errors = defaultdict(list)
        for r in self.rows[name]:
            if r["group"] == "corruption" and _family(r) == family and r["value"] is not None:
                errors[r["corruption"]].append(1.0 - r["value"])
        return dict(errors)

    @staticmethod
    def _paper_average(summary: list[dict]) -> float | None:
        columns = {}
        for r in summary:
            key = r["benchmark"].split("@")[0]
            if r["value"] is None:
                continue
            if r["metric"] == "mce" and key == "imagenet-c":
                columns[key] = 100 * r["value"]
            elif r["metric"] == "accuracy" and key in PAPER_AVERAGE_COLUMNS and key != "imagenet-c":
                columns[key] = 100 * r["value"]
        return paper_average(columns) / 100 if set(columns) == set(PAPER_AVERAGE_COLUMNS) else None

    def to_dict(self) -> dict:
        """`{"suite", "num_processes", "models": [{"name", "path", "results", "details"}]}` (the schema
        `card.build_model_card` reads); `num_processes` is how many processes shared the work."""
        return {
            "suite": self.suite,
            "num_processes": self.num_processes,
            "models": [
                {"name": n, "path": self.paths[n], "results": self.results[n], "details": self.details[n]}
                for n in self.rows
            ],
        }

    def to_markdown(self) -> str:
        """
        A table: one row per result (attack budgets as the card writes them, `fgsm@1/255`), one column per model
        (percentages), and the change when there are two.
        """
        from ..card import readable_benchmark

        names = list(self.rows)
        header = "| benchmark | metric | " + " | ".join(names) + (" | change |" if len(names) == 2 else " |")
        lines = [header, "|" + "---|" * (2 + len(names) + (len(names) == 2))]
        keys = list(dict.fromkeys((r["benchmark"], r["metric"]) for n in names for r in self.results[n]))
        for benchmark, metric in keys:
            values = [self.value(n, benchmark, metric) for n in names]
            cells = [f"{100 * v:.2f}" if v is not None else "—" for v in values]
            if len(names) == 2:
                cells.append(f"{100 * (values[1] - values[0]):+.2f}" if None not in values else "—")
            lines.append(f"| {readable_benchmark(benchmark)} | {metric} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def value(self, model: str, benchmark: str, metric: str = "accuracy") -> float | None:
        """The value of one result row (`None` when absent)."""
        for r in self.results.get(model, []):
            if r["benchmark"] == benchmark and r["metric"] == metric:
                return r["value"]
        return None

    def save(self, output_dir: str, prefix: str = "") -> list[str]:
        """Writes the JSON, the Markdown table and the figures; returns the figure paths."""
        from ..plots import plot_attack_budgets, plot_benchmark_accuracy, plot_corruption_severity

        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, prefix + REPORT_JSON), "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        with open(os.path.join(output_dir, prefix + REPORT_MARKDOWN), "w") as f:
            f.write(self.to_markdown())
        report = self.to_dict()
        figures = [plot_benchmark_accuracy(report, os.path.join(output_dir, prefix + "robustness.png"))]
        if any(r["group"] == "corruption" for m in report["models"] for r in m["details"]):
            figures.append(
                plot_corruption_severity(report, os.path.join(output_dir, prefix + "corruption_severity.png"))
            )
        if any(r["group"] == "attack" for m in report["models"] for r in m["results"]):
            figures.append(plot_attack_budgets(report, os.path.join(output_dir, prefix + "attack_budgets.png")))
        return figures
