"""The run's results (one schema, one builder) and the model card rendered from them, with a robustness `model-index`.

A finished run folder holds the model (`model.safetensors`, `config.json`, `preprocessor_config.json`), the noise
bank (`*.safetensors`), the figures (`*.png`), `noise_history.json` and `results.json`. The card is rendered from
`results.json` through the Jinja template `model_cards/model_card_template.md` with huggingface_hub's
[`~huggingface_hub.ModelCard`]; the finetuned model's results become the card's `model-index`, the base model's
appear only in the card's comparison table.

The `results` dict (what `results.json` holds):

```python
{
    "model_name": str,  # name in the model-index, e.g. "vit-base-patch16-224-nullspace"
    "base_model": str,  # Hub id (or local path) of the model that was finetuned
    "license": str,  # e.g. "apache-2.0"
    "dataset": {"name": str, "config": str | None, "split": str},  # training data
    "nullspace_args": {...},  # NullspaceArguments.to_dict(), redacted
    "training_args": {...},  # TrainingArguments.to_dict() (or a subset), redacted; the card shows the key ones
    "noise_history": [{"step": int, "norm": float, "updates": int, "statistic": float, "reached": bool}, ...],
    "figures": ["noise_norm.png", "robustness.png", ...],  # paths relative to the run folder
    "examples": ["examples/cat.png", ...],  # optional: example images for the Hub widget
    "robustness": {
        "models": [
            {
                "name": "base" | "finetuned",
                "path": str,
                "results": [
                    {
                        "benchmark": str,  # e.g. "clean", "pgd", "imagenet-c"
                        "metric": str,  # "accuracy" (in [0, 1]), "mce" (ratio, lower is better), ...
                        "value": float | None,  # None: the benchmark could not be run
                        "dataset_type": str,  # Hub dataset id
                        "dataset_name": str,  # pretty name
                        "dataset_config": str | None,
                        "dataset_split": str,
                        "num_samples": int,
                        "skipped": int,  # samples that could not be evaluated
                        "params": {...},  # benchmark settings, e.g. {"epsilon": 0.03, "steps": 10}
                    },
                    ...,
                ],
            },
            ...,
        ]
    },
}
```
"""

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants

logger = logging.getLogger(__name__)

PAPER_URL = "https://arxiv.org/abs/2403.10476"
# model_cards/ at the top of the repository, installed as the package data hf_nullspace/model_cards
_INSTALLED_TEMPLATE = Path(__file__).resolve().parent / "model_cards" / "model_card_template.md"
DEFAULT_TEMPLATE_PATH = (
    _INSTALLED_TEMPLATE
    if _INSTALLED_TEMPLATE.is_file()
    else Path(__file__).resolve().parent.parent / "model_cards" / "model_card_template.md"
)
RESULTS_FILE = "results.json"
CARD_FILE = "README.md"
TAGS = ["vision", "image-classification", "robustness", "nullspace", "hf-nullspace"]

HF_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{30,}")
TOKEN_KEYS = ("token", "hub_token", "hf_token", "auth_token", "use_auth_token", "access_token", "api_key")
REDACTED = "<redacted>"

# metric -> (label, percentage, direction); direction +1: higher is better, -1: lower is better.
METRICS = {
    "accuracy": ("Accuracy", True, 1),
    "mce": ("mCE", True, -1),
    "relative_mce": ("relative mCE", True, -1),
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
    "none": 'no noise: the plain finetuning baseline (`nullspace_mode="none"`)',
}
FIGURE_TITLES = {
    "noise_norm": "Noise norm over training",
    "robustness": "Accuracy per benchmark",
}


def collect_results(
    *,
    model_name: str,
    base_model: str | None = None,
    license: str | None = None,
    dataset: dict | None = None,
    nullspace_args: dict | None = None,
    training_args: dict | None = None,
    noise_history: list[dict] | None = None,
    figures: list[str] | None = None,
    examples: list[str] | None = None,
    robustness: dict | None = None,
    **metrics: Any,
) -> dict:
    """
    The results of a run in the schema of this module (what `results.json` and the model card hold). Every caller
    (the trainer, the main job, the command line) builds them here; argument dicts are redacted.

    Args:
        model_name (`str`): name in the model-index.
        base_model (`str`, *optional*): Hub id (or shown path) of the model that was finetuned.
        license (`str`, *optional*): the licence of the finetuned weights.
        dataset (`dict`, *optional*): `{"name", "config", "split"}` of the training data.
        nullspace_args (`dict`, *optional*): `NullspaceArguments.to_dict()`.
        training_args (`dict`, *optional*): `TrainingArguments.to_dict()` (or a subset).
        noise_history (`list[dict]`, *optional*): the noise bank's records.
        figures (`list[str]`, *optional*): figures, relative to the run folder.
        examples (`list[str]`, *optional*): example images for the Hub widget.
        robustness (`dict`, *optional*): `RobustnessReport.to_dict()`, models with their results.
        **metrics: further sections, e.g. `train` and `eval` metrics or `skipped_rows`.
    """
    results = {
        "model_name": model_name,
        "base_model": base_model,
        "license": license,
        "dataset": dataset,
        "nullspace_args": nullspace_args or {},
        "training_args": training_args or {},
        "noise_history": noise_history or [],
        "figures": list(dict.fromkeys(figures or [])),
        "examples": examples,
        **metrics,
    }
    if robustness is not None:
        results["robustness"] = robustness
    return redact({key: value for key, value in results.items() if value is not None})


def save_results(output_dir: str | Path, results: dict) -> Path:
    """Writes `results` to `output_dir/results.json`."""
    path = Path(output_dir) / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return path


def redact(obj: Any) -> Any:
    """
    Returns a copy of `obj` without credentials, to apply to argument dicts before they go into a card or results.

    Dict entries whose key names a token (`token`, `hub_token`, `*_token`, ...) or whose value is a Hugging Face
    token are dropped; tokens inside other strings are replaced by `<redacted>`. Lists, tuples and nested dicts are
    redacted recursively.

    Args:
        obj (`Any`):
            A JSON-like object (dict, list, tuple, str, number, bool or `None`).

    Returns:
        `Any`: the redacted copy.
    """
    if isinstance(obj, dict):
        return {
            key: redact(value)
            for key, value in obj.items()
            if not _is_token_key(key) and not (isinstance(value, str) and HF_TOKEN_PATTERN.fullmatch(value.strip()))
        }
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(value) for value in obj)
    if isinstance(obj, str):
        return HF_TOKEN_PATTERN.sub(REDACTED, obj)
    return obj


def _is_token_key(key: Any) -> bool:
    key = str(key).lower()
    return key in TOKEN_KEYS or key.endswith("_token")


def _is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub repo id (`name` or `namespace/name`) rather than a local path."""
    return bool(name) and re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", name) is not None


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


def _benchmark_label(result: dict) -> str:
    params = result.get("params") or {}
    settings = ", ".join(f"{key}={_cell(value)}" for key, value in params.items())
    return f"{result['benchmark']} ({settings})" if settings else str(result["benchmark"])


def _result_key(result: dict) -> tuple:
    return (result["benchmark"], result["metric"], json.dumps(result.get("params") or {}, sort_keys=True))


def _models_by_name(results: dict) -> dict[str, dict]:
    models = {model["name"]: model for model in (results.get("robustness") or {}).get("models", [])}
    if models and "finetuned" not in models:
        raise ValueError(
            f"results['robustness']['models'] has no model named 'finetuned' (got {sorted(models)}): the card's "
            "model-index is built from the finetuned model's results."
        )
    return models


def _eval_results(finetuned: dict) -> list[EvalResult]:
    eval_results = []
    for result in finetuned.get("results", []):
        value = result.get("value")
        if value is None or not math.isfinite(value):
            continue
        label = METRICS.get(result["metric"], (result["metric"], False, 0))[0]
        eval_results.append(
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=result["dataset_type"],
                dataset_name=result["dataset_name"],
                dataset_config=result.get("dataset_config"),
                dataset_split=result.get("dataset_split"),
                metric_type=result["metric"],
                metric_name=f"{result['benchmark']} {label}",
                metric_value=value,
                metric_args=redact(result.get("params")) or None,
            )
        )
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
    return [
        ("Noise syntheses", str(len(history))),
        ("Noise L2 norm, first → last synthesis", f"{norms[0]:.4g} → {norms[-1]:.4g}"),
        ("Syntheses that reached ε", f"{reached} / {len(history)}"),
        ("Mean noise updates per synthesis", f"{sum(updates) / len(updates):.1f}"),
        ("ε statistic of the last synthesis", f"{history[-1]['statistic']:.4g}"),
    ]


def _widget(examples: list[str], repo_id: str | None) -> list[dict] | None:
    widget = []
    for example in examples:
        if re.match(r"https?://", example):
            src = example
        elif repo_id is not None:
            src = f"{constants.ENDPOINT}/{repo_id}/resolve/main/{example}"
        else:
            continue
        widget.append({"src": src, "example_title": Path(example).stem.replace("_", " ")})
    return widget or None


def build_model_card(
    results: dict, *, repo_id: str | None = None, template_path: str | Path | None = None
) -> ModelCard:
    """
    Builds the model card of a robust model: Hub metadata with a `model-index` (one entry per benchmark and metric
    of the finetuned model) and a body with the method, arguments, robustness table, figures, usage and citation.
    Renders offline.

    Args:
        results (`dict`):
            The run's results, in the schema of this module's docstring. Argument dicts are redacted again here.
        repo_id (`str`, *optional*):
            The Hub repo the card is for, used in the usage snippet and the widget's image URLs. Defaults to the
            model name.
        template_path (`str` or `Path`, *optional*):
            A Jinja template for [`~huggingface_hub.ModelCard.from_template`]. Defaults to
            `model_cards/model_card_template.md`.

    Returns:
        [`~huggingface_hub.ModelCard`]: the rendered card.
    """
    results = redact(results)
    model_name = results.get("model_name") or (repo_id.split("/")[-1] if repo_id else None)
    if not model_name:
        raise ValueError("results['model_name'] (or a repo_id) is required: the card's model-index needs a name.")
    base_model = results.get("base_model")
    dataset = {"name": "unknown", "config": None, "split": "train", **(results.get("dataset") or {})}
    models = _models_by_name(results)
    eval_results = _eval_results(models["finetuned"]) if models else []

    card_data = ModelCardData(
        license=results.get("license"),
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=[dataset["name"]] if _is_hub_id(dataset["name"]) else None,
        tags=TAGS,
        pipeline_tag="image-classification",
        library_name="transformers",
        model_name=model_name,
        eval_results=eval_results or None,
        widget=_widget(results.get("examples") or [], repo_id),
    )
    nullspace_args = results.get("nullspace_args") or {}
    training_args = results.get("training_args") or {}
    figures = [
        {
            "file": figure,
            "title": FIGURE_TITLES.get(Path(figure).stem, Path(figure).stem.replace("_", " ").capitalize()),
        }
        for figure in results.get("figures") or []
    ]
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path or DEFAULT_TEMPLATE_PATH),
        model_name=model_name,
        model_id=repo_id or model_name,
        base_model_id=base_model or "unknown",
        base_model_url=f"{constants.ENDPOINT}/{base_model}" if _is_hub_id(base_model) else None,
        dataset=dataset,
        dataset_url=f"{constants.ENDPOINT}/datasets/{dataset['name']}" if _is_hub_id(dataset["name"]) else None,
        license=results.get("license"),
        paper_url=PAPER_URL,
        noise_mode_description=NOISE_MODES.get(nullspace_args.get("nullspace_mode", "nullspace"), "unknown"),
        noise_summary=_noise_summary(results.get("noise_history") or []),
        nullspace_rows=[(_cell(key), _cell(value)) for key, value in nullspace_args.items()],
        training_rows=[(key, _cell(training_args[key])) for key in KEY_TRAINING_ARGS if key in training_args],
        robustness_rows=_robustness_rows(models),
        figures=figures,
    )


def write_model_card(output_dir: str | Path, results: dict | None = None, *, repo_id: str | None = None) -> Path:
    """
    Writes the model card of a finished run to `output_dir/README.md`. Figures and examples listed in the results
    but missing from `output_dir` are left out of the card.

    Args:
        output_dir (`str` or `Path`):
            The run folder.
        results (`dict`, *optional*):
            The run's results; read from `output_dir/results.json` when not given.
        repo_id (`str`, *optional*):
            The Hub repo the card is for (see [`build_model_card`]).

    Returns:
        `Path`: the written `README.md`.
    """
    output_dir = Path(output_dir)
    if results is None:
        results = json.loads((output_dir / RESULTS_FILE).read_text(encoding="utf-8"))
    results = dict(results)
    for key in ("figures", "examples"):
        present = [name for name in results.get(key) or [] if (output_dir / name).is_file()]
        missing = sorted(set(results.get(key) or []) - set(present))
        if missing:
            logger.warning(f"Leaving {key} missing from {output_dir} out of the model card: {missing}")
        results[key] = present
    card_path = output_dir / CARD_FILE
    build_model_card(results, repo_id=repo_id).save(card_path)
    return card_path
