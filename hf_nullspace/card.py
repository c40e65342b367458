"""The run's results (one schema, one builder) and the model card rendered from them, with a `model-index`.

A finished run folder holds the model (`model.safetensors`, `config.json`, `preprocessor_config.json`), the noise
bank (`*.safetensors`), the figures (`*.png`), `noise_history.json`, `results.json` and a few example images of the
eval split (`examples/*.png`, for the Hub's inference widget). The card is rendered from `results.json` through the
Jinja template `model_cards/model_card_template.md` with huggingface_hub's [`~huggingface_hub.ModelCard`]. Its
`model-index` holds the clean evaluation of the eval split (`Trainer.evaluate()`'s accuracy and loss, as
`Trainer.create_model_card` writes them) and the finetuned model's robustness results; the base model's results
appear only in the card's comparison table. The licence is never guessed: see [`resolve_license`].

The `results` dict (what `results.json` holds):

```python
{
    "model_name": str,  # name in the model-index, e.g. "vit-base-patch16-224-nullspace"
    "base_model": str,  # Hub id (or local path) of the model that was finetuned
    "license": str,  # e.g. "apache-2.0"; "other" when unknown (see `resolve_license`)
    "license_name": str,  # optional, with "license": "other": the base model's licence name and link
    "license_link": str,  # optional
    "dataset": {"name": str, "config": str | None, "split": str},  # training data
    "eval_dataset": {"name": str, "config": str | None, "split": str},  # optional: the data `eval` was measured on
    "eval": {"eval_loss": float, "eval_accuracy": float, ...},  # optional: Trainer.evaluate()'s metrics
    "nullspace_args": {...},  # NullspaceArguments.to_dict(), redacted
    "training_args": {...},  # TrainingArguments.to_dict() (or a subset), redacted; the card shows the key ones
    "noise_history": [{"step": int, "norm": float, "updates": int, "statistic": float, "reached": bool}, ...],
    "figures": ["noise_norm.png", "robustness.png", ...],  # paths relative to the run folder
    "examples": ["examples/cat.png", ...],  # optional: example images for the Hub widget (see `save_examples`)
    "tags": [str, ...],  # optional: tags added to the card's own
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

import io
import json
import logging
import math
import os
import re
import statistics
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
UNKNOWN_LICENSE = "other"
LICENSE_HELP = (
    "set it with `--license <id>` (main job), `NullspaceTrainer.push_to_hub(license=...)` or "
    "`create_model_card(license=...)`, or `hf-nullspace card|push OUTPUT_DIR --license <id>` "
    "(a Hub licence id such as apache-2.0, mit, cc-by-nc-4.0)"
)
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
EXAMPLES_DIR = "examples"


def collect_results(
    *,
    model_name: str,
    base_model: str | None = None,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
    dataset: dict | None = None,
    eval_dataset: dict | None = None,
    nullspace_args: dict | None = None,
    training_args: dict | None = None,
    noise_history: list[dict] | None = None,
    figures: list[str] | None = None,
    examples: list[str] | None = None,
    tags: list[str] | None = None,
    robustness: dict | None = None,
    **metrics: Any,
) -> dict:
    """
    The results of a run in the schema of this module (what `results.json` and the model card hold). Every caller
    (the trainer, the main job, the command line) builds them here; argument dicts are redacted.

    Args:
        model_name (`str`): name in the model-index.
        base_model (`str`, *optional*): Hub id (or shown path) of the model that was finetuned.
        license (`str`, *optional*): the licence of the finetuned weights (see [`resolve_license`]).
        license_name (`str`, *optional*): with `license="other"`, the licence's name (e.g. from the base card).
        license_link (`str`, *optional*): with `license="other"`, a link to the licence.
        dataset (`dict`, *optional*): `{"name", "config", "split"}` of the training data.
        eval_dataset (`dict`, *optional*): `{"name", "config", "split"}` of the data the `eval` metrics come from.
        nullspace_args (`dict`, *optional*): `NullspaceArguments.to_dict()`.
        training_args (`dict`, *optional*): `TrainingArguments.to_dict()` (or a subset).
        noise_history (`list[dict]`, *optional*): the noise bank's records.
        figures (`list[str]`, *optional*): figures, relative to the run folder.
        examples (`list[str]`, *optional*): example images for the Hub widget, relative to the run folder.
        tags (`list[str]`, *optional*): tags added to the card's own.
        robustness (`dict`, *optional*): `RobustnessReport.to_dict()`, models with their results.
        **metrics: further sections, e.g. `train` and `eval` metrics (`Trainer.evaluate()`'s dict) or `skipped_rows`.
    """
    results = {
        "model_name": model_name,
        "base_model": base_model,
        "license": license,
        "license_name": license_name,
        "license_link": license_link,
        "dataset": dataset,
        "eval_dataset": eval_dataset,
        "nullspace_args": nullspace_args or {},
        "training_args": training_args or {},
        "noise_history": noise_history or [],
        "figures": list(dict.fromkeys(figures or [])),
        "examples": examples,
        "tags": tags,
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


# ---- licence ---------------------------------------------------------------------------------------------------


def base_model_license(base_model: str | None, *, token: str | None = None) -> tuple[dict | None, str]:
    """
    The licence the base model's card declares: its YAML `license` (with `license_name` / `license_link` when
    given), read from a local folder's `README.md` or, for a Hub id, from the Hub card (`ModelCard.load`; offline it
    reads the local cache only). Never raises.

    Returns:
        `tuple[dict | None, str]`: `({"license", "license_name"?, "license_link"?}, where it was read)`, or
        `(None, why not)`.
    """
    if not base_model:
        return None, "no base model is recorded"
    local = Path(base_model)
    if local.is_dir() or local.is_file():
        card_path = local / "README.md" if local.is_dir() else local
        if not card_path.is_file():
            return None, f"the base model folder {base_model} has no README.md"
        where = f"{card_path}"
    elif _is_hub_id(base_model):
        card_path, where = base_model, f"the Hub card of {base_model}"
    else:
        return None, f"{base_model} is neither a local folder nor a Hub id"
    repocard_logger = logging.getLogger("huggingface_hub.repocard")
    level = repocard_logger.level
    repocard_logger.setLevel(logging.ERROR)  # "metadata block was not found": said below as "declares no licence"
    try:
        data = ModelCard.load(str(card_path), token=token).data
    except Exception as error:  # offline, not found, gated, malformed YAML: all mean "unknown"
        return None, f"{where} could not be read ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
    finally:
        repocard_logger.setLevel(level)
    license = data.get("license")
    if isinstance(license, list):
        license = license[0] if len(license) == 1 else None
    if not isinstance(license, str) or not license.strip():
        return None, f"{where} declares no licence"
    found = {"license": license.strip()}
    for key in ("license_name", "license_link"):
        if isinstance(data.get(key), str) and data.get(key):
            found[key] = data.get(key)
    return found, where


def resolve_license(license: str | None, base_model: str | None, *, token: str | None = None) -> dict:
    """
    The licence of a finetuned model, never made up: `license` when given; otherwise the base model card's licence
    (see [`base_model_license`]); otherwise `other`, with a warning that says how to set it.

    Args:
        license (`str`, *optional*): an explicit licence (`--license`, a card or push argument).
        base_model (`str`, *optional*): local folder or Hub id of the model that was finetuned.
        token (`str`, *optional*): a Hub token, to read a gated or private base card.

    Returns:
        `dict`: `{"license": str}`, plus `license_name` / `license_link` when the base card gives them.
    """
    if license:
        return {"license": license}
    found, where = base_model_license(base_model, token=token)
    if found is not None:
        logger.info(f"Licence of the finetuned model: {found['license']}, from {where}.")
        return found
    logger.warning(
        f"The licence of the finetuned model is unknown ({where}): the card says `license: {UNKNOWN_LICENSE}`. "
        f"A finetuned model inherits its base model's licence terms; {LICENSE_HELP}."
    )
    return {"license": UNKNOWN_LICENSE}


# ---- attack budgets --------------------------------------------------------------------------------------------


def format_budget(value: float) -> str:
    """
    An attack budget (in [0, 1] pixel units) as people write it: a short decimal as it is (`0.02`, `0.1`, `0.2`),
    otherwise a multiple of 1/255 when it is one, halves and quarters included (`1/255`, `8/255`, `0.5/255`),
    otherwise 4 significant digits (`0.007`, `0.01234`).
    """
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        return f"{value:g}"
    if abs(value - round(value, 3)) <= 1e-9 * max(1.0, abs(value)):
        return f"{round(value, 3):g}"
    steps = value * 255
    for denominator in (1, 2, 4):
        multiple = round(steps * denominator)
        if multiple and abs(steps * denominator - multiple) <= 1e-4 * multiple:
            return f"{multiple / denominator:g}/255"
    return f"{value:.4g}"


_BUDGET_NAME = re.compile(r"^(?P<attack>[^@]+)@(?P<budget>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


def readable_benchmark(name: str) -> str:
    """A benchmark name with its attack budget readable: `fgsm@0.00392157` -> `fgsm@1/255`; others unchanged."""
    match = _BUDGET_NAME.match(str(name))
    if match is None:
        return str(name)
    return f"{match['attack']}@{format_budget(float(match['budget']))}"


# ---- example images for the Hub widget ------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_")[:40] or "image"


def _decode_image(value: Any):
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path") and os.path.isfile(value["path"]):
        return Image.open(value["path"])
    return None


def _raw_rows(dataset, scan: int):
    """(image, label name) of the first `scan` rows of a `datasets.Dataset`, read without its transform."""
    import datasets

    if not isinstance(dataset, datasets.Dataset) or not dataset.features:
        return
    images = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    labels = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.ClassLabel)]
    labels += [name for name in ("label", "labels") if name in dataset.features and name not in labels]
    if not images:
        return
    raw = dataset.with_format(None).select(range(min(scan, len(dataset))))
    for row in raw:
        image = _decode_image(row[images[0]])
        if image is None:
            continue
        label = row[labels[0]] if labels else None
        feature = dataset.features.get(labels[0]) if labels else None
        if isinstance(feature, datasets.ClassLabel) and isinstance(label, int) and 0 <= label < feature.num_classes:
            label = feature.int2str(label)
        yield image, label


def _tensor_rows(dataset, processor, scan: int):
    """(image, label) from `{"pixel_values", "labels"}` items, undoing the processor's rescale and normalisation."""
    import numpy as np
    import torch
    from PIL import Image

    mean = getattr(processor, "image_mean", None) if getattr(processor, "do_normalize", False) else None
    std = getattr(processor, "image_std", None) if getattr(processor, "do_normalize", False) else None
    items = (dataset[i] for i in range(min(scan, len(dataset)))) if hasattr(dataset, "__len__") else iter(dataset)
    for _, item in zip(range(scan), items):
        pixel_values = item.get("pixel_values") if isinstance(item, dict) else None
        if not torch.is_tensor(pixel_values) or pixel_values.ndim != 3:
            continue
        pixels = pixel_values.detach().float().cpu()
        if mean is not None and std is not None:
            pixels = pixels * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
        array = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        image = Image.fromarray(np.ascontiguousarray(array[..., 0] if array.shape[-1] == 1 else array))
        label = item.get("labels", item.get("label"))
        yield image, int(label) if torch.is_tensor(label) or isinstance(label, int) else label


def save_examples(
    output_dir: str | Path,
    dataset,
    *,
    id2label: dict | None = None,
    processor=None,
    count: int = 3,
    scan: int = 256,
    max_size: int = 256,
) -> list[str]:
    """
    Writes a few images of an eval split to `output_dir/examples/` (PNG, one per label while labels differ, at most
    `max_size` pixels a side) for the card's widget, and returns their paths relative to `output_dir`.

    Rows are read as the dataset stores them when it is a `datasets.Dataset` with an image column (its transform is
    bypassed); otherwise from its `pixel_values`, with the processor's normalisation undone. Never raises: a dataset
    it cannot read gives no examples (logged).

    Args:
        output_dir (`str` or `Path`): the run folder.
        dataset: the eval split (`datasets.Dataset`, `IterableDataset`, or items with `pixel_values` and `labels`).
        id2label (`dict`, *optional*): label names for integer labels (the model's `config.id2label`).
        processor (*optional*): the image processor, to undo its normalisation of `pixel_values`.
        count (`int`, defaults to 3): how many images.
        scan (`int`, defaults to 256): rows read at most, looking for distinct labels.
        max_size (`int`, defaults to 256): longest side of a written image.
    """
    if dataset is None:
        return []
    try:
        rows = list(_raw_rows(dataset, scan)) or list(_tensor_rows(dataset, processor, scan))
    except Exception as error:
        logger.warning(f"No example images for the widget: the eval split could not be read ({error!r}).")
        return []
    id2label = {int(key): value for key, value in (id2label or {}).items()}
    named = [(image, id2label.get(label, label) if isinstance(label, int) else label) for image, label in rows]
    picked, seen = [], set()
    for image, label in named:  # distinct labels first, then any
        if label not in seen:
            picked.append((image, label))
            seen.add(label)
        if len(picked) == count:
            break
    picked += [row for row in named if all(row[0] is not image for image, _ in picked)][: count - len(picked)]
    folder = Path(output_dir) / EXAMPLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (image, label) in enumerate(picked):
        image = image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()
        image.thumbnail((max_size, max_size))
        name = f"{EXAMPLES_DIR}/{_slug(label) if label is not None else 'example'}"
        name = name if f"{name}.png" not in written else f"{name}_{index}"
        image.save(Path(output_dir) / f"{name}.png")
        written.append(f"{name}.png")
    return written


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


def _models_by_name(results: dict) -> dict[str, dict]:
    models = {model["name"]: model for model in (results.get("robustness") or {}).get("models", [])}
    if models and "finetuned" not in models:
        raise ValueError(
            f"results['robustness']['models'] has no model named 'finetuned' (got {sorted(models)}): the card's "
            "model-index is built from the finetuned model's results."
        )
    return models


def _eval_dataset(results: dict) -> dict:
    """`{"type", "name", "config", "split"}` of the data `results["eval"]` was measured on."""
    dataset = results.get("eval_dataset") or {}
    if not dataset.get("name"):
        training = results.get("dataset") or {}
        dataset = {"name": training.get("name"), "config": training.get("config"), **dataset}
    name = dataset.get("name") or "unknown"
    return {
        "type": name if _is_hub_id(name) else Path(str(name).rstrip("/")).name or "unknown",
        "name": name,
        "config": dataset.get("config"),
        "split": dataset.get("split"),  # None: unknown, left out of the model-index
    }


def _metric_title(key: str) -> str:
    return METRICS[key][0] if key in METRICS else key.replace("_", " ").strip().capitalize()


def _clean_eval_results(results: dict) -> list[EvalResult]:
    """The model-index entries of `Trainer.evaluate()`'s metrics (`eval_accuracy`, `eval_loss`, ...)."""
    metrics = results.get("eval") or {}
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
                metric_value=float(value),
            )
        )
    return eval_results


def _clean_eval_rows(results: dict) -> list[dict]:
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
                dataset_revision=result.get("dataset_revision"),
                metric_type=result["metric"],
                metric_name=f"{readable_benchmark(result['benchmark'])} {label}",
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


def build_model_card(
    results: dict,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    template_path: str | Path | None = None,
) -> ModelCard:
    """
    Builds the model card of a robust model: Hub metadata (licence, `base_model` and `datasets` when they are Hub
    ids, widget examples, and a `model-index` with the clean evaluation and one entry per robustness benchmark and
    metric of the finetuned model) and a body with the method, arguments, evaluation and robustness tables, figures,
    usage and citation. Renders offline.

    Args:
        results (`dict`):
            The run's results, in the schema of this module's docstring. Argument dicts are redacted again here.
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
    results = redact(results)
    model_name = results.get("model_name") or (repo_id.split("/")[-1] if repo_id else None)
    if not model_name:
        raise ValueError("results['model_name'] (or a repo_id) is required: the card's model-index needs a name.")
    base_model = results.get("base_model")
    dataset = {"name": "unknown", "config": None, "split": "train", **(results.get("dataset") or {})}
    models = _models_by_name(results)
    eval_results = _clean_eval_results(results) + (_eval_results(models["finetuned"]) if models else [])
    license = results.get("license") or UNKNOWN_LICENSE
    training_name = (results.get("dataset") or {}).get("name")  # not the "unknown" shown when none is recorded
    datasets = [training_name] if _is_hub_id(training_name) else []
    eval_name = (results.get("eval_dataset") or {}).get("name")
    datasets += [eval_name] if _is_hub_id(eval_name) and eval_name not in datasets else []

    lora = results.get("lora") or {}
    adapter = bool(lora) and not lora.get("merged", False)
    card_data = ModelCardData(
        license=license,
        license_name=results.get("license_name") if license == UNKNOWN_LICENSE else None,
        license_link=results.get("license_link") if license == UNKNOWN_LICENSE else None,
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=datasets or None,
        tags=list(dict.fromkeys(TAGS + (["lora"] if adapter else []) + list(results.get("tags") or []))),
        pipeline_tag="image-classification",
        library_name="peft" if adapter else "transformers",  # a LoRA adapter (lora.py) loads with peft
        model_name=model_name,
        eval_results=eval_results or None,
        widget=_widget(results.get("examples") or [], repo_id, revision),
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
        dataset_url=f"{constants.ENDPOINT}/datasets/{training_name}" if _is_hub_id(training_name) else None,
        license=license,
        license_name=results.get("license_name") if license == UNKNOWN_LICENSE else None,
        license_link=results.get("license_link") if license == UNKNOWN_LICENSE else None,
        paper_url=PAPER_URL,
        adapter=adapter,
        noise_mode=nullspace_args.get("nullspace_mode", "nullspace"),
        noise_mode_description=NOISE_MODES.get(nullspace_args.get("nullspace_mode", "nullspace"), "unknown"),
        noise_summary=_noise_summary(results.get("noise_history") or []),
        nullspace_rows=[(_cell(key), _cell(value)) for key, value in nullspace_args.items()],
        training_rows=[(key, _cell(training_args[key])) for key in KEY_TRAINING_ARGS if key in training_args],
        eval_rows=_clean_eval_rows(results),
        robustness_rows=_robustness_rows(models),
        figures=figures,
    )


def write_model_card(
    output_dir: str | Path,
    results: dict | None = None,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
) -> Path:
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
        revision (`str`, *optional*):
            The branch the card is pushed to (see [`build_model_card`]).

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
    build_model_card(results, repo_id=repo_id, revision=revision).save(card_path)
    return card_path
