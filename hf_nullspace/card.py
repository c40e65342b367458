"""The model card of a run, rendered from its [`~results.RunResults`]: Hub metadata with a `model-index`, and a body.

The card is rendered through the Jinja template `model_cards/model_card_template.md` with huggingface_hub's
[`~huggingface_hub.ModelCard`], from the results object it is handed (nothing is read back from disk).

The `model-index` is what the Hub reads: it groups results by task, dataset (type, config) and split, and shows each
metric type once per group. So every entry here has its own group and metric: the clean evaluation of the eval split
(`Trainer.evaluate()`'s accuracy and loss) appears once; a robustness evaluation that shares its data with another
entry (an attack or an on-the-fly corruption of the clean split) is told apart by its dataset config, the evaluation's
name with its budget (e.g. `fgsm@1/255`, `corruption/contrast`); aggregates that are no dataset (the paper's
11-column Average) stay in the card's table only; values are rounded to 4 decimals (accuracies, mCE) or 4 significant
digits. The base model's results appear only in the card's comparison table, and only when it was scored: a base
model whose labels are other classes is not (the card says why, `RunResults.no_base_comparison`).
"""

import dataclasses
import json
import logging
import math
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants

from .license import is_hub_id
from .results import UNKNOWN_LICENSE, RunResults
from .robustness.budgets import format_budget, readable_benchmark
from .robustness.report import PAPER_AVERAGE_DATASET

logger = logging.getLogger(__name__)

PAPER_URL = "https://arxiv.org/abs/2403.10476"

# model_cards/ at the top of the repository, installed as the package data hf_nullspace/model_cards
_INSTALLED_TEMPLATE = Path(__file__).resolve().parent / "model_cards" / "model_card_template.md"
DEFAULT_TEMPLATE_PATH = (
    _INSTALLED_TEMPLATE
    if _INSTALLED_TEMPLATE.is_file()
    else Path(__file__).resolve().parent.parent / "model_cards" / "model_card_template.md"
)
CARD_FILE = "README.md"
TAGS = ["vision", "image-classification", "robustness", "nullspace", "hf-nullspace"]

# metric -> (label, percentage, direction); direction +1: higher is better, -1: lower is better.
METRICS = {
    "accuracy": ("Accuracy", True, 1),
    "mce": ("mCE", True, -1),
    "relative_mce": ("relative mCE", True, -1),
    "partial_mce": ("partial mCE", True, -1),
    "error": ("Error", True, -1),
}
KEY_TRAINING_ARGS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "optim",
    "bf16",
    "fp16",
    "seed",
)
NOISE_MODES = {
    "nullspace": 'learned ε-approximate nullspace noise (`nullspace_mode="nullspace"`, the paper\'s method)',
    "random": 'the random baseline: Gaussian noise shrunk until inside ε (`nullspace_mode="random"`)',
    "norm_matched": "the norm-matched control: a random direction with the norm of each refresh's learned noise "
    '(`nullspace_mode="norm_matched"`)',
    "none": 'no noise: the plain finetuning baseline (`nullspace_mode="none"`)',
    "madry": 'no noise: the adversarial-training baseline CE(x) + CE(PGD(x)) (`nullspace_mode="madry"`, Madry et al.)',
    "trades": 'no noise: the adversarial-training baseline CE(x) + β KL(f(x) ‖ f(x_adv)) (`nullspace_mode="trades"`, '
    "Zhang et al.)",
}
FIGURE_TITLES = {
    "noise_norm": "Noise norm over training",
    "robustness": "Accuracy per benchmark",
}
# Trainer.evaluate() entries that describe the run, not the model (left out of the model-index)
EVAL_BOOKKEEPING = (
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "epoch",
    "step",
    "jit_compilation_time",
    "model_preparation_time",
)


def _cell(value: Any) -> str:
    """A value as a Markdown table cell: JSON for containers, `repr` for floats, with `|` escaped."""
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, sort_keys=True)
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _format_value(metric: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    percentage = METRICS.get(metric, (metric, False, 0))[1]
    return f"{100 * value:.2f}%" if percentage else f"{value:.4g}"


def _format_delta(metric: str, base: float | None, finetuned: float | None) -> str:
    if base is None or finetuned is None or not (math.isfinite(base) and math.isfinite(finetuned)):
        return "—"
    percentage = METRICS.get(metric, (metric, False, 0))[1]
    return f"{100 * (finetuned - base):+.2f} pp" if percentage else f"{finetuned - base:+.4g}"


def _metric_label(metric: str) -> str:
    label, _, direction = METRICS.get(metric, (metric, False, 0))
    return f"{label} {'↑' if direction > 0 else '↓' if direction < 0 else ''}".strip()


BUDGET_PARAMS = ("epsilon", "step_size")


def _benchmark_label(result: dict) -> str:
    params = result.get("params") or {}
    settings = ", ".join(
        f"{key}={format_budget(value) if key in BUDGET_PARAMS and isinstance(value, (int, float)) else _cell(value)}"
        for key, value in params.items()
    )
    name = readable_benchmark(result["benchmark"])
    return f"{name} ({settings})" if settings else name


def _result_key(result: dict) -> tuple:
    return (result["benchmark"], result["metric"], json.dumps(result.get("params") or {}, sort_keys=True))


def _eval_dataset(results: RunResults) -> dict:
    """`{"type", "name", "config", "split"}` of the data `results.eval` was measured on."""
    dataset = results.eval_dataset
    if dataset is None or not dataset.name:
        training = results.dataset
        name = training.name if training is not None else None
        config = (dataset.config if dataset is not None else None) or (training.config if training else None)
        split = dataset.split if dataset is not None else None
    else:
        name, config, split = dataset.name, dataset.config, dataset.split
    name = name or "unknown"
    return {
        "type": name if is_hub_id(name) else Path(str(name).rstrip("/")).name or "unknown",
        "name": name,
        "config": config,
        "split": split,  # None: unknown, left out of the model-index
    }


def _metric_title(key: str) -> str:
    return METRICS[key][0] if key in METRICS else key.replace("_", " ").strip().capitalize()


def _rounded(metric: str, value: float) -> float:
    """4 decimals for fractions (accuracy, mCE: 0.01 percentage points), else 4 significant digits (a loss)."""
    return round(float(value), 4) if metric in METRICS else float(f"{float(value):.4g}")


def _clean_eval_results(results: RunResults) -> list[EvalResult]:
    """The model-index entries of `Trainer.evaluate()`'s metrics (`eval_accuracy`, `eval_loss`, ...)."""
    metrics = results.eval or {}
    dataset = _eval_dataset(results)
    eval_results = []
    order = {"eval_accuracy": 0, "eval_loss": 1}  # accuracy first, as the Hub lists a model's headline metric
    for key, value in sorted(metrics.items(), key=lambda item: order.get(item[0], 2)):
        metric = key.removeprefix("eval_")
        if metric in EVAL_BOOKKEEPING or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        eval_results.append(
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=dataset["type"],
                dataset_name=dataset["name"],
                dataset_config=dataset["config"],
                dataset_split=dataset["split"],
                metric_type=metric,
                metric_name=_metric_title(metric),
                metric_value=_rounded(metric, value),
            )
        )
    return eval_results


def _clean_eval_rows(results: RunResults) -> list[dict]:
    dataset = _eval_dataset(results)
    rows = []
    for result in _clean_eval_results(results):
        metric = result.metric_type
        value = _format_value(metric, result.metric_value) if metric in METRICS else f"{result.metric_value:.4g}"
        rows.append({"metric": _metric_title(metric), "value": value})
    if rows:
        split = ", ".join(
            part for part in (dataset["split"], f"config {dataset['config']}" if dataset["config"] else None) if part
        )
        label = f"{dataset['name']} ({split})" if split else str(dataset["name"])
        return [{"dataset": _cell(label), **row} for row in rows]
    return rows


def _hub_group(result: EvalResult) -> tuple:
    """What the Hub keeps one value of: task, dataset (type, config), split and metric type."""
    return (result.task_type, result.dataset_type, result.dataset_config, result.dataset_split, result.metric_type)


def robustness_eval_results(finetuned: dict, taken: list[EvalResult] = ()) -> list[EvalResult]:
    """
    The model-index entries of a model's robustness results (`{"results": [row, ...]}`), each in a Hub group of its
    own (see the module docstring), beside the entries `taken` already: the suite's clean accuracy is left out when
    `Trainer.evaluate()`'s is there on the same data and split (the clean accuracy appears once); an evaluation with
    an entry in a taken group (an attack or an on-the-fly corruption of the clean data) takes its name as the dataset
    config of all its entries; pseudo-datasets (the paper's Average) stay out.
    """
    clean_data = {(result.dataset_type, result.dataset_split) for result in taken if result.metric_type == "accuracy"}
    candidates = []
    for result in finetuned.get("results", []):
        value = result.get("value")
        if value is None or not math.isfinite(value):
            continue
        if result["dataset_type"] == PAPER_AVERAGE_DATASET["dataset_type"]:
            continue
        if result["benchmark"] == "clean" and (result["dataset_type"], result.get("dataset_split")) in clean_data:
            continue
        benchmark = readable_benchmark(result["benchmark"])
        label = METRICS.get(result["metric"], (result["metric"], False, 0))[0]
        entry = EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=result["dataset_type"],
            dataset_name=result["dataset_name"],
            dataset_config=result.get("dataset_config"),
            dataset_split=result.get("dataset_split"),
            dataset_revision=result.get("dataset_revision"),
            metric_type=result["metric"],
            metric_name=f"{benchmark} {label}",
            metric_value=_rounded(result["metric"], value),
            metric_args=result.get("params") or None,
        )
        candidates.append((benchmark, entry))
    counts = Counter(_hub_group(entry) for entry in taken) + Counter(_hub_group(entry) for _, entry in candidates)
    renamed = {name for name, entry in candidates if counts[_hub_group(entry)] > 1 and name != "clean"}
    groups = {_hub_group(entry) for entry in taken}
    eval_results = []
    for benchmark, entry in candidates:
        if benchmark in renamed:
            own = entry.dataset_config
            entry.dataset_config = f"{own}/{benchmark}" if own else benchmark
        if _hub_group(entry) in groups:
            logger.warning(f"Two results of the model-index share {_hub_group(entry)}: kept the first.")
            continue
        groups.add(_hub_group(entry))
        eval_results.append(entry)
    return eval_results


def _robustness_rows(models: dict[str, dict]) -> list[dict]:
    base = {_result_key(result): result for result in models.get("base", {}).get("results", [])}
    finetuned = {_result_key(result): result for result in models.get("finetuned", {}).get("results", [])}
    rows = []
    for key in list(finetuned) + [key for key in base if key not in finetuned]:
        base_result, finetuned_result = base.get(key), finetuned.get(key)
        reference = finetuned_result or base_result
        metric = reference["metric"]
        base_value = base_result.get("value") if base_result else None
        finetuned_value = finetuned_result.get("value") if finetuned_result else None
        samples = reference.get("num_samples")
        skipped = reference.get("skipped") or 0
        samples_text = "—" if samples is None else str(samples) + (f" ({skipped} skipped)" if skipped else "")
        rows.append(
            {
                "benchmark": _cell(_benchmark_label(reference)),
                "dataset": _cell(f"{reference['dataset_name']} ({reference.get('dataset_split') or '—'})"),
                "metric": _metric_label(metric),
                "base": _format_value(metric, base_value),
                "finetuned": _format_value(metric, finetuned_value),
                "delta": _format_delta(metric, base_value, finetuned_value),
                "samples": samples_text,
            }
        )
    return rows


def _noise_summary(history: list[dict]) -> list[tuple[str, str]]:
    if not history:
        return []
    norms = [entry["norm"] for entry in history]
    updates = [entry["updates"] for entry in history]
    reached = sum(bool(entry.get("reached")) for entry in history)
    rows = [
        ("Noise syntheses", str(len(history))),
        ("Noise L2 norm, first → last synthesis", f"{norms[0]:.4g} → {norms[-1]:.4g}"),
        ("Syntheses that reached ε by their updates", f"{reached} / {len(history)}"),
    ]
    fallbacks = sum(bool(entry.get("fallback")) for entry in history)
    if any("fallback" in entry for entry in history):
        rows.append(("Syntheses shrunk back inside ε after the update cap", f"{fallbacks} / {len(history)}"))
    ratios = sorted(entry["norm_ratio"] for entry in history if entry.get("norm_ratio") is not None)
    if ratios:
        rows.append(
            (
                "Noise norm / patch-embedding norm, median (min-max)",
                f"{statistics.median(ratios):.3g} ({ratios[0]:.3g}-{ratios[-1]:.3g})",
            )
        )
    rows += [
        ("Mean noise updates per synthesis", f"{sum(updates) / len(updates):.1f}"),
        ("ε statistic of the last synthesis", f"{history[-1]['statistic']:.4g}"),
    ]
    heldout = [entry["heldout_statistic"] for entry in history if entry.get("heldout_statistic") is not None]
    if heldout:
        rows.append(("ε statistic on held-out rows, median", f"{statistics.median(heldout):.4g}"))
    unseen = [entry["unseen_batch_inside"] for entry in history if entry.get("unseen_batch_inside") is not None]
    if unseen:
        rows.append(("Noises inside ε on a batch they were not fitted to", f"{sum(unseen)} / {len(unseen)}"))
    no_boundary = sum(bool(entry.get("no_boundary")) for entry in history)
    if no_boundary:
        rows.append(
            (
                "Syntheses without noise (no ε boundary below `noise_max_norm_ratio`: the model does not read its "
                "input yet, e.g. a new head); those steps trained on the clean loss",
                f"{no_boundary} / {len(history)}",
            )
        )
    return rows


def _widget(examples: list[str], repo_id: str | None, revision: str | None = None) -> list[dict] | None:
    """The inference widget's examples: URLs of the images as uploaded to `repo_id` at `revision` (or as given)."""
    widget = []
    for example in examples:
        if re.match(r"https?://", example):
            src = example
        elif repo_id is not None:
            src = f"{constants.ENDPOINT}/{repo_id}/resolve/{quote(revision or 'main', safe='')}/{example}"
        else:
            continue
        widget.append({"src": src, "example_title": Path(example).stem.replace("_", " ")})
    return widget or None


def _labels_literal(labels: list[str], indent: int = 4, width: int = 116) -> str:
    """`labels` as a Python list literal, one line when it fits in `width`, else wrapped inside the brackets."""
    items = [json.dumps(label, ensure_ascii=False) for label in labels]  # a JSON string is a Python string literal
    line = f"labels = [{', '.join(items)}]"
    if len(line) <= width:
        return line
    lines, current = [], ""
    for item in items:
        if current and indent + len(current) + len(item) + 1 > width:
            lines.append(current.rstrip())
            current = ""
        current += f"{item}, "
    lines.append(current.rstrip())
    return "labels = [\n" + "\n".join(" " * indent + text for text in lines) + "\n]"


def _usage(results: RunResults, repo_id: str | None) -> dict:
    """
    What the "How to use" code needs to run as printed: the model to load (the repo, or `"."` for a card of a local
    run folder, whose code runs inside it), an image that exists where the code runs (an example image of the repo or
    folder, else a blank one), whether the base model is only a local folder (the code then says to replace it), and
    for an adapter the class names of its trained head, with which the base model is loaded (a new head has other
    classes, often another number of them, than the base model's).
    """
    model_path = repo_id or "."
    example = next((name for name in results.examples if not re.match(r"https?://", name)), None)
    if example is None:
        image = 'Image.new("RGB", (224, 224))  # a blank image: use your own, e.g. Image.open("photo.jpg")'
    elif repo_id is not None:
        image = f'Image.open(hf_hub_download("{repo_id}", "{example}"))  # an example image of this repo'
    else:
        image = f'Image.open("{example}")  # an example image of this folder'
    labels = (results.lora or {}).get("labels")
    return {
        "model_path": model_path,
        "local_card": repo_id is None,
        "image": image,
        "image_download": example is not None and repo_id is not None,
        "base_local": bool(results.base_model) and not is_hub_id(results.base_model),
        "labels_literal": _labels_literal(labels) if labels else None,
    }


def _scored_rows_note(results: RunResults) -> str:
    """Which rows `Trainer.evaluate()` scored, from `results.eval_rows` (a held-out part of the training split, or a
    split of its own)."""
    rows = results.eval_rows or {}
    count = f"{rows['rows']} rows" if rows.get("rows") is not None else "rows"
    if rows.get("held_out"):
        return (
            f"{count} held out of the `{rows.get('split')}` split before training (a seeded "
            f"{rows.get('fraction'):.0%}, seed {rows.get('seed')}; never trained on)"
        )
    if rows.get("split"):
        return f"the `{rows['split']}` split ({count})"
    return "the evaluation split"


def build_model_card(
    results: RunResults | dict,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    template_path: str | Path | None = None,
) -> ModelCard:
    """
    Builds the model card of a robust model: Hub metadata (licence, `base_model` and `datasets` when they are Hub
    ids, widget examples, and a `model-index` with the clean evaluation and one entry per robustness evaluation and
    metric of the finetuned model, see the module docstring) and a body with the method, arguments, evaluation and
    robustness tables, figures, usage and citation. Renders offline.

    Args:
        results ([`~results.RunResults`] or `dict`):
            The run's results (a dict in the form of `results.json` is read with `RunResults.from_dict`).
        repo_id (`str`, *optional*):
            The Hub repo the card is for, used in the usage snippet and the widget's image URLs. Defaults to the
            model name (and no widget: its images need a repo to be served from).
        revision (`str`, *optional*):
            The branch the card is pushed to (the widget's image URLs point there). Defaults to `main`.
        template_path (`str` or `Path`, *optional*):
            A Jinja template for [`~huggingface_hub.ModelCard.from_template`]. Defaults to
            `model_cards/model_card_template.md`.

    Returns:
        [`~huggingface_hub.ModelCard`]: the rendered card.
    """
    if isinstance(results, dict):
        if not results.get("model_name") and repo_id:
            results = {**results, "model_name": repo_id.split("/")[-1]}
        if not results.get("model_name"):
            raise ValueError("results['model_name'] (or a repo_id) is required: the card's model-index needs a name.")
        results = RunResults.from_dict(results)
    model_name = results.model_name
    base_model = results.base_model
    training = results.dataset
    dataset = {"name": "unknown", "config": None, "split": "train"}
    if training is not None:
        dataset.update({key: value for key, value in vars(training).items() if value is not None})
    models = results.robustness_models
    clean = _clean_eval_results(results)
    eval_results = clean + (robustness_eval_results(models["finetuned"], clean) if models else [])
    license = results.license
    training_name = training.name if training is not None else None  # not the "unknown" shown when none is recorded
    datasets = [training_name] if is_hub_id(training_name) else []
    eval_name = results.eval_dataset.name if results.eval_dataset is not None else None
    datasets += [eval_name] if is_hub_id(eval_name) and eval_name not in datasets else []

    lora = results.lora or {}
    adapter = bool(lora) and not lora.get("merged", False)
    license_name = results.license_name if license == UNKNOWN_LICENSE else None
    license_link = results.license_link if license == UNKNOWN_LICENSE else None
    card_data = ModelCardData(
        license=license,
        license_name=license_name,
        license_link=license_link,
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=datasets or None,
        tags=list(dict.fromkeys(TAGS + (["lora"] if adapter else []) + list(results.tags))),
        pipeline_tag="image-classification",
        library_name="peft" if adapter else "transformers",  # a LoRA adapter (lora.py) loads with peft
        model_name=model_name,
        eval_results=eval_results or None,
        widget=_widget(results.examples, repo_id, revision),
    )
    nullspace_args = results.nullspace_args
    training_args = results.training_args
    figures = [
        {
            "file": figure,
            "title": FIGURE_TITLES.get(Path(figure).stem, Path(figure).stem.replace("_", " ").capitalize()),
        }
        for figure in results.figures
    ]
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path or DEFAULT_TEMPLATE_PATH),
        model_name=model_name,
        base_model_id=base_model or "unknown",
        base_model_url=f"{constants.ENDPOINT}/{base_model}" if is_hub_id(base_model) else None,
        dataset=dataset,
        dataset_url=f"{constants.ENDPOINT}/datasets/{training_name}" if is_hub_id(training_name) else None,
        license=license,
        license_name=license_name,
        license_link=license_link,
        paper_url=PAPER_URL,
        adapter=adapter,
        noise_mode=nullspace_args.get("nullspace_mode", "nullspace"),
        noise_mode_description=NOISE_MODES.get(nullspace_args.get("nullspace_mode", "nullspace"), "unknown"),
        noise_summary=_noise_summary(results.noise_history),
        nullspace_rows=[(_cell(key), _cell(value)) for key, value in nullspace_args.items()],
        training_rows=[(key, _cell(training_args[key])) for key in KEY_TRAINING_ARGS if key in training_args],
        eval_rows=_clean_eval_rows(results),
        scored_rows=_scored_rows_note(results),
        robustness_rows=_robustness_rows(models),
        no_base_comparison=results.no_base_comparison,
        figures=figures,
        **_usage(results, repo_id),
    )


def write_model_card(
    output_dir: str | Path,
    results: RunResults | dict,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
) -> Path:
    """
    Writes the model card of a run to `output_dir/README.md`, rendered from `results`. Figures and examples listed
    in the results but missing from `output_dir` are left out of the card.

    Args:
        output_dir (`str` or `Path`):
            The run folder.
        results ([`~results.RunResults`] or `dict`):
            The run's results (for a finished folder: `RunResults.load(output_dir)`).
        repo_id (`str`, *optional*):
            The Hub repo the card is for (see [`build_model_card`]).
        revision (`str`, *optional*):
            The branch the card is pushed to (see [`build_model_card`]).

    Returns:
        `Path`: the written `README.md`.
    """
    output_dir = Path(output_dir)
    results = RunResults.from_dict(results) if isinstance(results, dict) else results
    present = {}
    for key in ("figures", "examples"):
        listed = getattr(results, key)
        present[key] = [name for name in listed if (output_dir / name).is_file()]
        missing = sorted(set(listed) - set(present[key]))
        if missing:
            logger.warning(f"Leaving {key} missing from {output_dir} out of the model card: {missing}")
    card_path = output_dir / CARD_FILE
    shown = dataclasses.replace(results, **present)
    build_model_card(shown, repo_id=repo_id, revision=revision).save(card_path)
    return card_path
