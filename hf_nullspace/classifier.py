"""Loading an image classifier safely, unwrapping it from its training wrappers, and holding it fixed."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

from torch import nn


def load_classifier(name_or_path: str, **kwargs):
    """
    `AutoModelForImageClassification.from_pretrained` restricted to safetensors weights: a checkpoint that only has
    pickled weights (`pytorch_model.bin`) is refused, since unpickling runs code. `trust_remote_code` stays off.

    Args:
        name_or_path (`str`): Hub id or local folder.
        **kwargs: passed to `from_pretrained` (revision, token, num_labels, ...).
    """
    from transformers import AutoModelForImageClassification

    if kwargs.get("trust_remote_code"):
        raise ValueError("hf_nullspace never loads remote code: drop trust_remote_code.")
    try:
        return AutoModelForImageClassification.from_pretrained(name_or_path, use_safetensors=True, **kwargs)
    except OSError as error:
        if Path(name_or_path).is_dir() and any(Path(name_or_path).glob("*.bin")) or "safetensors" in str(error):
            raise ValueError(
                f"{name_or_path} has no safetensors weights. hf_nullspace refuses pickled checkpoints "
                "(pytorch_model.bin): loading them can run arbitrary code. Convert a checkpoint you trust with "
                "`AutoModelForImageClassification.from_pretrained(path).save_pretrained(path)`."
            ) from error
        raise


def unwrap(model: nn.Module) -> nn.Module:
    """
    The Hugging Face model inside DDP/accelerate wrappers (which keep it under `.module`) and a peft wrapper (whose
    base model holds the adapters in place: same modules, same names, same outputs).
    """
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()
    return model


@contextlib.contextmanager
def frozen_eval_mode(model: nn.Module) -> Iterator[None]:
    """
    Eval mode with parameters frozen, for optimising an input or a noise against a fixed model (synthesis, attacks,
    analysis, evaluation): no parameter gradients are computed or left behind. On exit every module's own mode and
    every parameter's `requires_grad` flag are what they were before, including mixed modes (e.g. a model in training
    mode with one frozen submodule in eval mode).
    """
    modes = [(module, module.training) for module in model.modules()]
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
        for module, training in modes:
            module.training = training
