"""The licence of a finetuned model, never guessed: an explicit one, else the base model card's, else `other`."""

import logging
import re
from pathlib import Path

from huggingface_hub import ModelCard

from .results import UNKNOWN_LICENSE

logger = logging.getLogger(__name__)

LICENSE_HELP = (
    "set it with `--license <id>` (main job), `NullspaceTrainer.push_to_hub(license=...)` or "
    "`create_model_card(license=...)`, or `hf-nullspace card|push OUTPUT_DIR --license <id>` "
    "(a Hub licence id such as apache-2.0, mit, cc-by-nc-4.0)"
)


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub repo id (`name` or `namespace/name`) rather than a local path."""
    return bool(name) and re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", name) is not None


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
    elif is_hub_id(base_model):
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
