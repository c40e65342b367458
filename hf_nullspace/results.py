"""A run's results: one typed object, built once where the run ends, redacted once, saved as `results.json`.

[`RunResults`] is what the model card is rendered from (`card.py`) and what a push uploads (`hub.py`): the main job
builds it once after the evaluation and hands it on; nothing reads `results.json` back to render the run that wrote
it. `RunResults.load` is for a finished run folder only (`hf-nullspace card|push OUTPUT_DIR`).

`results.json` (`RunResults.to_dict()`):

```python
{
    "model_name": str,  # name in the model-index, e.g. "vit-base-patch16-224-nullspace"
    "base_model": str,  # Hub id (or local path) of the model that was finetuned
    "license": str,  # e.g. "apache-2.0"; "other" when unknown (see `license.resolve_license`)
    "license_name": str,  # optional, with "license": "other": the base model's licence name and link
    "license_link": str,  # optional
    "dataset": {"name": str, "config": str | None, "split": str},  # training data
    "eval_dataset": {"name": str, "config": str | None, "split": str},  # optional: the data `eval` was measured on
    "eval_rows": {"split": str, "held_out": bool, "rows": int, ...},  # optional: the rows scored, how obtained
    "eval": {"eval_loss": float, "eval_accuracy": float, ...},  # optional: Trainer.evaluate()'s metrics
    "train": {...},  # optional: Trainer.train()'s metrics
    "train_stream_reads": [{...}, ...],  # optional, streamed training: rows read and decoded per process
    "nullspace_args": {...},  # NullspaceArguments.to_dict() (and AdversarialArguments'), redacted
    "training_args": {...},  # TrainingArguments.to_dict() (or a subset), redacted; the card shows the key ones
    "noise_history": [{"step": int, "norm": float, "updates": int, "statistic": float, "reached": bool}, ...],
    "figures": ["noise_norm.png", "robustness.png", ...],  # paths relative to the run folder
    "examples": ["examples/cat.png", ...],  # optional: example images for the Hub widget (see `examples.py`)
    "tags": [str, ...],  # optional: tags added to the card's own
    "lora": {...},  # optional: the adapter's settings, parameter counts and class names (lora.py)
    "robustness": {"suite": str, "models": [{"name": "base" | "finetuned", "path": str, "results": [row, ...]}]},
    "no_base_comparison": str,  # optional: why the base model was not scored (e.g. its labels are other classes)
    "skipped_rows": {...},  # optional: rows of each split read, skipped and converted
    "stage_seconds": {...},  # optional: wall time per stage of the main job
}
```

A robustness `row` is a `RobustnessReport` row (`robustness/report.py`): `benchmark` (attack budgets as fractions of
1/255, e.g. `fgsm@1/255`), `metric`, `value`, `dataset_*`, `num_samples`, `skipped`, `params`. Sections this module
does not name (written by a newer version, say) are kept in `extra` and written back as they were.
"""

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
UNKNOWN_LICENSE = "other"

HF_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{30,}")
TOKEN_KEYS = ("token", "hub_token", "hf_token", "auth_token", "use_auth_token", "access_token", "api_key")
REDACTED = "<redacted>"


def redact(obj: Any) -> Any:
    """
    Returns a copy of `obj` without credentials.

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


@dataclass
class DatasetRef:
    """Which data: a Hub id or shown local path, its configuration and split."""

    name: str | None
    config: str | None = None
    split: str | None = None

    @classmethod
    def from_dict(cls, data: "dict | DatasetRef | None") -> "DatasetRef | None":
        if data is None or isinstance(data, DatasetRef):
            return data
        return cls(name=data.get("name"), config=data.get("config"), split=data.get("split"))


@dataclass
class RunResults:
    """
    The results of one run (the schema of this module's docstring). Built once where the run ends (the main job, or
    [`NullspaceTrainer.build_results`] for the trainer's own pushes); every dict and string in it is redacted when it
    is made, so the card, `results.json` and the push all carry the same redacted values.

    Args:
        model_name (`str`): name in the model-index.
        base_model (`str`, *optional*): Hub id (or shown path) of the model that was finetuned.
        license (`str`, *optional*, defaults to `"other"`): the licence of the finetuned weights.
        license_name (`str`, *optional*), license_link (`str`, *optional*): with `license="other"`, the licence's
            name and link (e.g. from the base card).
        dataset ([`DatasetRef`], *optional*): the training data.
        eval_dataset ([`DatasetRef`], *optional*): the data the `eval` metrics were measured on.
        eval_rows (`dict`, *optional*): the rows scored and how they were obtained (`data.heldout.scored_rows`):
            `{"split", "held_out": False, "rows"}`, or a seeded held-out part of the training split
            `{"split", "held_out": True, "fraction", "seed", "rows"}`.
        eval (`dict`, *optional*): `Trainer.evaluate()`'s metrics.
        train (`dict`, *optional*): `Trainer.train()`'s metrics.
        train_stream_reads (`list[dict]`, *optional*): for a streamed training set, the rows each process read,
            decoded and re-read on resume (`stream_training.py`).
        nullspace_args (`dict`), training_args (`dict`): the run's arguments.
        noise_history (`list[dict]`): the noise bank's records.
        figures (`list[str]`), examples (`list[str]`): files of the run folder (figures, widget images).
        tags (`list[str]`): tags added to the card's own.
        lora (`dict`, *optional*): the adapter summary of a LoRA run.
        robustness (`dict`, *optional*): `RobustnessReport.to_dict()`.
        no_base_comparison (`str`, *optional*): why the base model was not scored beside the finetuned one.
        skipped_rows (`dict`, *optional*), stage_seconds (`dict`, *optional*): bookkeeping of the main job.
        extra (`dict`): sections this class does not name, kept as they are.
    """

    model_name: str
    base_model: str | None = None
    license: str = UNKNOWN_LICENSE
    license_name: str | None = None
    license_link: str | None = None
    dataset: DatasetRef | None = None
    eval_dataset: DatasetRef | None = None
    eval_rows: dict | None = None
    eval: dict | None = None
    train: dict | None = None
    train_stream_reads: list[dict] | None = None
    nullspace_args: dict = field(default_factory=dict)
    training_args: dict = field(default_factory=dict)
    noise_history: list[dict] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    lora: dict | None = None
    robustness: dict | None = None
    no_base_comparison: str | None = None
    skipped_rows: dict | None = None
    stage_seconds: dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.model_name:
            raise ValueError("RunResults needs a model_name: the card's model-index is keyed by it.")
        self.license = self.license or UNKNOWN_LICENSE
        self.dataset = DatasetRef.from_dict(self.dataset)
        self.eval_dataset = DatasetRef.from_dict(self.eval_dataset)
        self.figures = list(dict.fromkeys(self.figures or []))
        self.examples = list(self.examples or [])
        self.tags = list(self.tags or [])
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, (dict, list, str)):
                setattr(self, item.name, redact(value))
        if self.robustness is not None:
            models = {model["name"] for model in self.robustness.get("models", [])}
            if models and "finetuned" not in models:
                raise ValueError(
                    f"results robustness has no model named 'finetuned' (got {sorted(models)}): the card's "
                    "model-index is built from the finetuned model's results."
                )

    @property
    def robustness_models(self) -> dict[str, dict]:
        """The robustness results by model name (`base`, `finetuned`)."""
        return {model["name"]: model for model in (self.robustness or {}).get("models", [])}

    def to_dict(self) -> dict:
        """The JSON form (`results.json`): the module docstring's schema, `None` sections left out."""
        data = {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if item.name != "extra"}
        for key in ("dataset", "eval_dataset"):
            if data[key] is not None:
                data[key] = dataclasses.asdict(data[key])
        if not data["examples"]:
            data["examples"] = None
        if not data["tags"]:
            data["tags"] = None
        data.update(self.extra)
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "RunResults":
        """The results of a `results.json` dict (sections this class does not name go to `extra`)."""
        names = {item.name for item in dataclasses.fields(cls)} - {"extra"}
        known = {key: value for key, value in data.items() if key in names}
        return cls(**known, extra={key: value for key, value in data.items() if key not in names})

    def save(self, output_dir: str | Path) -> Path:
        """Writes `output_dir/results.json`."""
        path = Path(output_dir) / RESULTS_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str), encoding="utf-8")
        return path

    @classmethod
    def load(cls, output_dir: str | Path) -> "RunResults":
        """The results of a finished run folder (its `results.json`), e.g. to render its card again."""
        path = Path(output_dir) / RESULTS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: the folder is not a finished run (the main job writes results.json there)."
            )
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def with_license(self, license: str) -> "RunResults":
        """A copy with an explicit licence (and no inherited licence name or link)."""
        return dataclasses.replace(self, license=license, license_name=None, license_link=None)
