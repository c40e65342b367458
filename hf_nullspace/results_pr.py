"""Robustness results offered to a model's card on the Hub as a pull request that adds them to its `model-index`.

Third parties add evaluation results to a model's card by opening a pull request on the model's repo; the owner
merges it or not. [`propose_results`] does this for the results of [`evaluate_robustness`]: it reads the card at
the evaluated commit, adds the new results to its `model-index` (everything else in the card is kept: other
metadata, the text, earlier results of any source; an earlier result of this tool with the same benchmark, metric
and settings is replaced by the new value) and opens a pull request with a short description of the protocol.
The main branch is never written to.
"""

import json
import logging
import math
from pathlib import Path

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError

from .card import BUDGET_PARAMS, CARD_FILE, PAPER_URL
from .card import robustness_eval_results as card_eval_results
from .embedding import UnsupportedModelError, find_patch_embedding
from .nullspace import patch_embedding_nullspace
from .robustness.budgets import format_budget

logger = logging.getLogger(__name__)

SOURCE_NAME = "hf-nullspace robustness evaluation"
# the model-index needs a URL with a source name: the method's paper, until the library has a public home
SOURCE_URL = PAPER_URL
# results that compare the model with another model of the same evaluation: meaningless on the model's own card
COMPARATIVE_METRICS = ("relative_mce",)


def is_local_model(name_or_path: str) -> bool:
    """Whether `name_or_path` is a local folder (not a Hub id): it has no repo to open a pull request on."""
    return Path(name_or_path).exists()


def robustness_eval_results(results: list[dict]) -> list[EvalResult]:
    """
    The `model-index` entries of one model's rows of a [`RobustnessReport`] (`report.to_dict()["models"][i]
    ["results"]`), as the model cards of this library write them, each marked with `source_name` = `SOURCE_NAME`
    and `source_url` = `SOURCE_URL`. Rows without a value and rows relative to another model (`relative_mce`) are
    left out.
    """
    rows = [row for row in results if row["metric"] not in COMPARATIVE_METRICS]
    eval_results = card_eval_results({"results": rows})
    for result in eval_results:
        result.source_name, result.source_url = SOURCE_NAME, SOURCE_URL
    return eval_results


def merge_eval_results(existing: list[EvalResult] | None, new: list[EvalResult]) -> list[EvalResult]:
    """
    `existing` in its order, then `new`: an existing entry that describes the same result as a new one (same task,
    dataset, metric, settings and source: an earlier run of this tool) takes the new value instead.
    """
    merged = list(existing or [])
    for result in new:
        same = [i for i, old in enumerate(merged) if result.is_equal_except_value(old)]
        if same:
            merged[same[0]] = result
        else:
            merged.append(result)
    return merged


def nullspace_figures(model) -> dict | None:
    """
    The exact nullspace of the model's patch projection: `{"projection", "patch_dim", "hidden_size", "rank",
    "dimension"}`, or `None` for a model without a patch projection (a CNN, a family outside the table).
    """
    try:
        nullspace = patch_embedding_nullspace(model)
    except UnsupportedModelError:
        return None
    return {
        "projection": find_patch_embedding(model)[0],
        "patch_dim": nullspace.patch_dim,
        "hidden_size": nullspace.hidden_size,
        "rank": nullspace.rank,
        "dimension": nullspace.dimension,
    }


def _load_card(api: HfApi, repo_id: str, revision: str) -> ModelCard | None:
    try:
        path = api.hf_hub_download(repo_id, CARD_FILE, revision=revision)
    except EntryNotFoundError:
        return None
    try:
        return ModelCard.load(path)
    except ValueError as error:
        raise ValueError(
            f"The card of {repo_id} at {revision} has metadata that huggingface_hub cannot parse ({error}); no "
            "pull request was opened. Fix the card's YAML header (e.g. its model-index) first."
        ) from error


def _value(result: EvalResult) -> str:
    value = result.metric_value
    if isinstance(value, float) and math.isfinite(value) and result.metric_type in ("accuracy", "mce", "partial_mce"):
        return f"{100 * value:.2f}%"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe_protocol(
    report: dict, model: dict, new: list[EvalResult], revision: str, nullspace: dict | None, settings: dict
) -> str:
    """The pull request's description: what was measured, how, on which commit, and the results added."""
    from . import __version__

    counts = sorted({row["num_samples"] for row in model["results"] if row.get("num_samples")})
    images = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}" if counts else "—"
    groups = {row.get("group") for row in model["results"]}
    protocol = (
        "Top-1 accuracy of the model as loaded by `AutoModelForImageClassification`, on images prepared by the "
        f"repo's own image processor ({images} images per evaluation)."
    )
    if "attack" in groups:
        protocol += (
            " Attacks run in [0, 1] pixel space through the processor's normalisation, in eval mode, with the "
            "budgets given with each result (epsilon in pixel units)."
        )
    if "corruption" in groups or "aggregate" in groups:
        protocol += " Corruptions are applied to the clean images at the severities given with each result."
    settings = {key: value for key, value in settings.items() if value not in (None, [], {})}
    lines = [
        f"This pull request adds {len(new)} robustness results to the card's `model-index`, measured with "
        f"hf-nullspace {__version__} (suite `{report['suite']}`; the library of Approximate Nullspace Augmented "
        f"Finetuning, [Liu et al.]({PAPER_URL})) on commit `{revision}` of this repo. Nothing else in the card "
        "changes: its text, its other metadata and the results it already lists are kept.",
        "",
        f"**Protocol.** {protocol} Settings: {json.dumps(settings, sort_keys=True)}.",
        "",
        "| result | settings | dataset | value |",
        "|---|---|---|---|",
    ]
    for result in new:
        split = f" ({result.dataset_split})" if result.dataset_split else ""
        args = ", ".join(
            f"{key}={format_budget(value) if key in BUDGET_PARAMS and isinstance(value, float) else value}"
            for key, value in (result.metric_args or {}).items()
        )
        lines.append(f"| {result.metric_name} | {args or '—'} | {result.dataset_name}{split} | {_value(result)} |")
    lines.append("")
    if nullspace is None:
        lines.append("No patch projection was found in this model, so no nullspace figures are given.")
    else:
        lines.append(
            f"**Nullspace of the patch projection** (`{nullspace['projection']}`): patches of "
            f"{nullspace['patch_dim']} values map to {nullspace['hidden_size']} channels with rank "
            f"{nullspace['rank']}, so the exact nullspace has dimension {nullspace['dimension']}: input "
            "perturbations in it leave every patch token, and the model's output, unchanged."
        )
    return "\n".join(lines) + "\n"


def propose_results(
    repo_id: str,
    report: dict,
    model_name: str,
    *,
    token: str | None = None,
    nullspace: dict | None = None,
    revision: str | None = None,
    settings: dict | None = None,
):
    """
    Opens a pull request on `repo_id` that adds one model's robustness results to its card's `model-index`.

    Args:
        repo_id (`str`): The model's Hub repo.
        report (`dict`): `RobustnessReport.to_dict()`.
        model_name (`str`): The model's name in the report.
        token (`str`, *optional*): A Hub token allowed to open pull requests on the repo.
        nullspace (`dict`, *optional*): [`nullspace_figures`] of the model, for the description.
        revision (`str`, *optional*): The commit that was evaluated (the card is read there and the pull request
            starts from it); the head of main by default.
        settings (`dict`, *optional*): The evaluation's settings (seed, sample caps, ...), for the description.

    Returns:
        `CommitInfo`: with `pr_url`, `pr_revision` (e.g. `"refs/pr/1"`) and `pr_num`.
    """
    models = {model["name"]: model for model in report["models"]}
    if model_name not in models:
        raise ValueError(f"The report has no model named {model_name!r}; it has {sorted(models)}.")
    model = models[model_name]
    new = robustness_eval_results(model["results"])
    if not new:
        raise ValueError(f"The report holds no result with a value for {model_name!r}: nothing to propose.")
    api = HfApi(token=token)
    revision = api.model_info(repo_id, revision=revision).sha
    card = _load_card(api, repo_id, revision)
    if card is None:
        card = ModelCard(
            f"---\n---\n\n# {repo_id.split('/')[-1]}\n\nThis card was created to hold evaluation results; the "
            "model's owner can complete it.\n"
        )
    card.data.eval_results = merge_eval_results(card.data.eval_results, new)
    card.data.model_name = card.data.model_name or repo_id.split("/")[-1]
    description = describe_protocol(report, model, new, revision, nullspace, settings or {})
    return api.create_commit(
        repo_id,
        operations=[CommitOperationAdd(CARD_FILE, str(card).encode("utf-8"))],
        commit_message=f"Add robustness results ({report['suite']} suite, hf-nullspace)",
        commit_description=description,
        create_pr=True,
        parent_commit=revision,
    )
