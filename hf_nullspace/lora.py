"""LoRA finetuning through `peft` (`pip install peft`, the extra `[peft]`): every mode of the trainer on a budget.

`apply_lora` wraps an image classifier in a `peft.PeftModel`: low-rank adapters on the attention projections
(`query`, `value` by default), the classifier head trained fully (`modules_to_save`), everything else frozen, the
patch embedding included, so the noise hook and the synthesis find it unchanged inside the wrapper
(`classifier.unwrap` sees through it). A trained run saves `adapter_config.json` + `adapter_model.safetensors`
(`PeftModel.from_pretrained(base_model, folder_or_repo)` loads them), or with `merge_lora` a merged plain
checkpoint that `from_pretrained` loads without peft.
"""

import os
import re
from dataclasses import asdict, dataclass, field

from torch import nn

# transformers 5 renamed the attention projections of most ViT families (query -> q_proj, ...); Data2Vec-Vision and
# SwinV2 keep the old names. A requested name that matches no layer is tried under its other spelling.
ATTENTION_ALIASES = {
    "query": "q_proj",
    "key": "k_proj",
    "value": "v_proj",
    "q_proj": "query",
    "k_proj": "key",
    "v_proj": "value",
    "dense": "o_proj",
    "o_proj": "dense",
}
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# bytes per trainable parameter beyond the weight itself in fp32 AdamW training: gradient + two moments
ADAMW_BYTES_PER_TRAINABLE = 4 + 8


@dataclass
class LoraArguments:
    """
    LoRA settings of a run (peft's `LoraConfig`). Every field starts with `lora_` (or is `use_lora`/`merge_lora`) so
    that it never clashes with the other argument groups of one `HfArgumentParser`.

    Args:
        use_lora (`bool`, *optional*, defaults to `False`):
            Train LoRA adapters (and the classifier head) instead of every parameter.
        lora_r (`int`, *optional*, defaults to `16`):
            Rank of the adapters.
        lora_alpha (`int`, *optional*, defaults to `16`):
            Scaling numerator: the adapter update is `(lora_alpha / lora_r) * B A`.
        lora_dropout (`float`, *optional*, defaults to `0.1`):
            Dropout on the adapters' input.
        lora_target_modules (`str`, *optional*, defaults to `"query,value"`):
            Comma-separated names (suffixes) of the linear layers that get adapters; ViT-family attention names.
        lora_modules_to_save (`str`, *optional*):
            Comma-separated modules trained fully and saved with the adapter; defaults to the classifier head(s).
        merge_lora (`bool`, *optional*, defaults to `False`):
            Save (and push) a merged plain checkpoint instead of the adapter.
    """

    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all parameters."})
    lora_r: int = field(default=16, metadata={"help": "Rank of the LoRA adapters."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (update = alpha / r * B A)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA adapters' input."})
    lora_target_modules: str = field(
        default="query,value", metadata={"help": "Comma-separated linear layers that get adapters."}
    )
    lora_modules_to_save: str | None = field(
        default=None, metadata={"help": "Comma-separated modules trained fully (default: the classifier head)."}
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "Save a merged plain checkpoint instead of the adapter."}
    )

    def __post_init__(self):
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}.")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}.")
        if not _names(self.lora_target_modules):
            raise ValueError("lora_target_modules must name at least one module (e.g. 'query,value').")
        if self.merge_lora and not self.use_lora:
            raise ValueError("merge_lora merges LoRA adapters: pass --use_lora too.")

    @property
    def target_modules(self) -> list[str]:
        return _names(self.lora_target_modules)

    def to_dict(self) -> dict:
        """Returns the arguments as a JSON-serialisable dict."""
        return asdict(self)


def _names(text: str | None) -> list[str]:
    return [name for name in re.split(r"[,\s]+", text or "") if name]


def _peft():
    try:
        import peft
    except ImportError as error:
        raise ImportError(
            'LoRA needs the `peft` package: `pip install peft` (or `pip install -e ".[peft]"` in a clone of this '
            "project)."
        ) from error
    return peft


def is_peft_model(model: nn.Module) -> bool:
    """Whether `model` is a `peft.PeftModel` (checked without importing peft)."""
    return any(cls.__module__.startswith("peft.") and cls.__name__ == "PeftModel" for cls in type(model).__mro__)


def classifier_head_names(model: nn.Module) -> list[str]:
    """
    The classifier head(s) of an image classifier: its direct children that are `nn.Linear` with `num_labels`
    outputs (`classifier` for ViT, DeiT, BEiT, DINOv2, Swin; DeiT's distilled model has two).
    """
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    heads = [
        name
        for name, child in model.named_children()
        if isinstance(child, nn.Linear) and (num_labels is None or child.out_features == num_labels)
    ]
    if not heads:
        raise ValueError(
            f"Cannot find the classifier head of {type(model).__name__} (a top-level nn.Linear with num_labels "
            "outputs): pass --lora_modules_to_save."
        )
    return heads


def resolve_target_modules(model: nn.Module, names: list[str]) -> list[str]:
    """
    The layer names LoRA targets in `model`: each requested name as given when some `nn.Linear` ends with it, else
    its spelling in `ATTENTION_ALIASES` (`query` -> `q_proj`, ...).

    Raises:
        `ValueError`: when a name matches no linear layer under either spelling.
    """
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    resolved = []
    for name in names:
        if name in linear:
            resolved.append(name)
        elif ATTENTION_ALIASES.get(name) in linear:
            resolved.append(ATTENTION_ALIASES[name])
        else:
            raise ValueError(
                f"lora_target_modules: no linear layer of {type(model).__name__} is named {name!r}"
                + (f" or {ATTENTION_ALIASES[name]!r}" if name in ATTENTION_ALIASES else "")
                + f". Its linear layers: {sorted(linear)}."
            )
    return list(dict.fromkeys(resolved))


def apply_lora(model: nn.Module, args: LoraArguments, base_model_name: str | None = None) -> nn.Module:
    """
    Wraps `model` in a `peft.PeftModel` with LoRA adapters on `args.target_modules` and the classifier head trained
    fully.

    Args:
        model (`nn.Module`): a Hugging Face image classifier.
        args ([`LoraArguments`]): the LoRA settings.
        base_model_name (`str`, *optional*): the base model recorded in `adapter_config.json`: its Hub id, or a
            local folder as an absolute path (a relative one would only load from the folder it was written in);
            the model's own `name_or_path` by default.

    Returns:
        `peft.PeftModel`: the wrapped model; only adapters and the head require grad.
    """
    peft = _peft()
    modules_to_save = _names(args.lora_modules_to_save) or classifier_head_names(model)
    config = peft.LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=resolve_target_modules(model, args.target_modules),
        modules_to_save=modules_to_save,
        bias="none",
    )
    wrapped = peft.get_peft_model(model, config)
    base_model_name = base_model_name or getattr(model, "name_or_path", None)
    if base_model_name:
        for adapter_config in wrapped.peft_config.values():
            adapter_config.base_model_name_or_path = recorded_base_model(base_model_name)
    return wrapped


def recorded_base_model(name_or_path: str) -> str:
    """A base model as `adapter_config.json` records it: a Hub id as it is, a local folder as an absolute path."""
    return os.path.abspath(name_or_path) if os.path.isdir(name_or_path) else name_or_path


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain model with the adapters merged into its weights (and the trained head in place), no peft left."""
    if not is_peft_model(model):
        raise ValueError(f"merge_lora expects a peft.PeftModel, got {type(model).__name__}.")
    return model.merge_and_unload()


def merge_into_trainer(trainer) -> nn.Module:
    """
    Replaces the trainer's LoRA model by its merged plain model (after training, before `save_model`/`push_to_hub`),
    so the output folder and the pushed repo hold a plain checkpoint. Returns the merged model.
    """
    merged = merge_lora(trainer.accelerator.unwrap_model(trainer.model))
    trainer.model = trainer.model_wrapped = merged
    return merged


def lora_summary(model: nn.Module, merged: bool = False) -> dict:
    """
    The LoRA settings, parameter counts and class names (`labels`, in the order of the trained head: the card's
    snippet loads the base model with them) of a `PeftModel` for the run's results and card (`merged`: whether the
    saved checkpoint is the merged plain model rather than the adapter).
    """
    config = next(iter(model.peft_config.values()))
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    return {
        "r": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "target_modules": sorted(config.target_modules) if config.target_modules else None,
        "modules_to_save": sorted(config.modules_to_save or []),
        "base_model": config.base_model_name_or_path,
        "labels": [str(id2label[i]) for i in sorted(id2label)],
        **parameter_counts(model),
        "merged": merged,
    }


def parameter_counts(model: nn.Module) -> dict:
    """Trainable and total parameters of `model` (a `PeftModel` counts its adapters and the saved head copy)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_percent": 100 * trainable / total if total else 0.0}


def training_state_bytes(trainable: int, total: int) -> int:
    """
    Bytes of the fp32 training state that scales with parameters under AdamW: every weight (4 bytes) plus, per
    trainable parameter, its gradient and the two AdamW moments (12 bytes). Activations are not counted: LoRA keeps
    them (the backward pass still runs through the frozen layers down to the first adapter).
    """
    return 4 * total + ADAMW_BYTES_PER_TRAINABLE * trainable


def lora_savings(model: nn.Module, args: LoraArguments) -> dict:
    """
    Parameter counts and training-state memory of full finetuning vs LoRA for `model` (not modified: a wrapped copy
    is measured on the meta device when possible).

    Returns:
        `dict`: `full` and `lora` parameter counts, their `training_state_bytes`, and `saved_bytes`.
    """
    import copy

    full = parameter_counts(model)
    wrapped = apply_lora(copy.deepcopy(model), args)
    lora = parameter_counts(wrapped)
    lora["total"] = full["total"]  # the adapters' own weights are trainable and counted there
    lora["total_with_adapters"] = sum(p.numel() for p in wrapped.parameters())
    full_bytes = training_state_bytes(full["trainable"], full["total"])
    lora_bytes = training_state_bytes(lora["trainable"], lora["total_with_adapters"])
    return {
        "full": full,
        "lora": lora,
        "full_training_state_bytes": full_bytes,
        "lora_training_state_bytes": lora_bytes,
        "saved_bytes": full_bytes - lora_bytes,
    }
