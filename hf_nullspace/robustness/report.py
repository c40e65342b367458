"""`RobustnessReport`: the results of a suite for one model or several, as JSON, Markdown and PNG figures."""

import json
import os
from collections import defaultdict

from ..data.imagenet_c import ALEXNET_ERR
from .metrics import PAPER_AVERAGE_COLUMNS, mean_corruption_error, paper_average

REPORT_JSON = "robustness.json"
REPORT_MARKDOWN = "robustness.md"


class RobustnessReport:
    """
    Per model, `results` (one row per clean/attack/shift evaluation, per corruption averaged over severities, and the
    aggregates mCE and the paper's Average) and `details` (one row per corruption and severity). A row is
    `{"benchmark", "metric", "value", "dataset_type", "dataset_name", "dataset_config", "dataset_split",
    "num_samples", "skipped", "params", "group"}`; accuracies and mCE are fractions (mCE 0.56 = 56%).
    """

    def __init__(self, suite: str, models: dict[str, str]):
        self.suite = suite
        self.paths = dict(models)
        self.rows: dict[str, list[dict]] = {name: [] for name in models}
        self.results: dict[str, list[dict]] = {}
        self.details: dict[str, list[dict]] = {}

    def add(self, model: str, evaluation, spec, correct: int, total: int, skipped: dict) -> None:
        """Records the top-1 accuracy of `model` on one evaluation."""
        info = spec.dataset_card_info()
        self.rows[model].append(
            {
                "benchmark": evaluation.name,
                "metric": "accuracy",
                "value": correct / total if total else None,
                "dataset_type": info["type"],
                "dataset_name": info["name"],
                "dataset_config": info["config"],
                "dataset_split": info["split"],
                "num_samples": total,
                "skipped": skipped.get("skipped", 0),
                "skipped_by_kind": {
                    k: v for k, v in skipped.get("counts", {}).items() if not k.startswith("converted")
                },
                "params": evaluation.kwargs,
                "group": evaluation.group,
                "corruption": evaluation.corruption,
                "severity": evaluation.severity,
            }
        )

    def finalize(self) -> None:
        """Builds per-corruption means and the aggregates (mCE, relative mCE, the paper's Average)."""
        names = list(self.rows)
        errors = {name: self._errors(name) for name in names}
        for name in names:
            rows = self.rows[name]
            summary = [r for r in rows if r["group"] != "corruption"]
            by_corruption = defaultdict(list)
            for r in rows:
                if r["group"] == "corruption":
                    by_corruption[r["corruption"]].append(r)
            for group in by_corruption.values():
                first = group[0]
                prefix = first["benchmark"].rsplit("/", 1)[0]
                summary.append(
                    {
                        **first,
                        "benchmark": prefix,
                        "value": sum(r["value"] for r in group) / len(group),
                        "num_samples": sum(r["num_samples"] for r in group),
                        "skipped": sum(r["skipped"] for r in group),
                        "severity": None,
                        "params": {"severities": [r["severity"] for r in group]},
                    }
                )
            if by_corruption:
                summary += self._mce_rows(name, names, errors, by_corruption)
            average = self._paper_average(summary)
            if average is not None:
                summary.append({**summary[0], "benchmark": "average", "metric": "average", "value": average,
                                "params": {"columns": list(PAPER_AVERAGE_COLUMNS)}, "group": "aggregate"})  # fmt: skip
            self.results[name] = summary
            self.details[name] = [r for r in rows if r["group"] == "corruption"]

    def _errors(self, name: str) -> dict[str, list[float]]:
        errors = defaultdict(list)
        for r in self.rows[name]:
            if r["group"] == "corruption" and r["value"] is not None:
                errors[r["corruption"]].append(1.0 - r["value"])
        return dict(errors)

    def _mce_rows(self, name, names, errors, by_corruption) -> list[dict]:
        template = next(iter(by_corruption.values()))[0]
        aggregate = {**template, "group": "aggregate", "severity": None, "corruption": None}
        rows = []
        on_imagenet_c = template["benchmark"].startswith("imagenet-c/") and set(errors[name]) <= set(ALEXNET_ERR)
        if on_imagenet_c:
            value = mean_corruption_error(errors[name]) / 100
            rows.append({**aggregate, "benchmark": "imagenet-c", "metric": "mce", "value": value,
                         "params": {"reference": "AlexNet"}})  # fmt: skip
        mean_accuracy = sum(1 - e for v in errors[name].values() for e in v) / sum(
            len(v) for v in errors[name].values()
        )
        rows.append({**aggregate, "benchmark": "corruptions", "metric": "accuracy", "value": mean_accuracy,
                     "params": {"mean_over": "corruptions x severities"}})  # fmt: skip
        baseline = names[0]
        if len(names) > 1 and name != baseline and errors[baseline]:
            try:
                value = mean_corruption_error(errors[name], errors[baseline]) / 100
            except ValueError:
                value = None
            rows.append({**aggregate, "benchmark": "corruptions", "metric": "relative_mce", "value": value,
                         "params": {"reference": baseline}})  # fmt: skip
        return rows

    @staticmethod
    def _paper_average(summary: list[dict]) -> float | None:
        columns = {}
        for r in summary:
            key = r["benchmark"].split("@")[0]
            if r["metric"] == "mce" and key == "imagenet-c":
                columns[key] = 100 * r["value"]
            elif r["metric"] == "accuracy" and key in PAPER_AVERAGE_COLUMNS and key != "imagenet-c":
                columns[key] = 100 * r["value"]
        return paper_average(columns) / 100 if set(columns) == set(PAPER_AVERAGE_COLUMNS) else None

    def to_dict(self) -> dict:
        """`{"suite", "models": [{"name", "path", "results", "details"}]}` (the schema `hub.build_model_card` reads)."""
        return {
            "suite": self.suite,
            "models": [
                {"name": n, "path": self.paths[n], "results": self.results[n], "details": self.details[n]}
                for n in self.rows
            ],
        }

    def to_markdown(self) -> str:
        """A table: one row per result, one column per model (percentages), and the change when there are two."""
        names = list(self.rows)
        header = "| benchmark | metric | " + " | ".join(names) + (" | change |" if len(names) == 2 else " |")
        lines = [header, "|" + "---|" * (2 + len(names) + (len(names) == 2))]
        keys = list(dict.fromkeys((r["benchmark"], r["metric"]) for n in names for r in self.results[n]))
        for benchmark, metric in keys:
            values = [self.value(n, benchmark, metric) for n in names]
            cells = [f"{100 * v:.2f}" if v is not None else "—" for v in values]
            if len(names) == 2:
                cells.append(f"{100 * (values[1] - values[0]):+.2f}" if None not in values else "—")
            lines.append(f"| {benchmark} | {metric} | " + " | ".join(cells) + " |")
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
