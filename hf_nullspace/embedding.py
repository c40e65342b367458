"""Find the patch-embedding projection of a Hugging Face vision model and add noise at its output."""

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from .classifier import unwrap
from .model_inputs import model_inputs, take_rows
from .patch_inputs import conv_weight, takes_patches

# model_type -> dotted suffix of the patch-embedding projection (a Conv2d with kernel = stride = patch size, or for
# the models that take patches, `patch_inputs.PATCH_INPUT_MODEL_TYPES`, a Linear on flattened patches).
# The noise of the paper lives at the output of this projection: after it, before the CLS token and the position
# embeddings are added. `timm_wrapper` is a timm model loaded by transformers (`TimmWrapperForImageClassification`):
# timm's vision transformers (ViT, DeiT, BEiT, EVA, Swin, ...) keep their projection at `patch_embed.proj`.
PATCH_EMBEDDING_MODULES = {
    "vit": "embeddings.patch_embeddings.projection",
    "deit": "embeddings.patch_embeddings.projection",
    "beit": "embeddings.patch_embeddings.projection",
    "data2vec-vision": "embeddings.patch_embeddings.projection",
    "dinov2": "embeddings.patch_embeddings.projection",
    "dinov2_with_registers": "embeddings.patch_embeddings.projection",
    "vit_msn": "embeddings.patch_embeddings.projection",
    "ijepa": "embeddings.patch_embeddings.projection",
    "swin": "embeddings.patch_embeddings.projection",
    "swinv2": "embeddings.patch_embeddings.projection",
    "donut-swin": "embeddings.patch_embeddings.projection",
    "focalnet": "embeddings.patch_embeddings.projection",
    "pvt": "encoder.patch_embeddings.0.projection",
    "clip": "vision_model.embeddings.patch_embedding",
    "metaclip_2": "vision_model.embeddings.patch_embedding",
    "siglip": "vision_model.embeddings.patch_embedding",
    "siglip2": "vision_model.embeddings.patch_embedding",
    "timm_wrapper": "timm_model.patch_embed.proj",
}
PROJECTION_HELP = (
    "Point the library at the projection by its dotted name (a Conv2d with kernel_size == stride and no padding): "
    "`NullspaceArguments(nullspace_patch_embedding_module=NAME)` (`--nullspace_patch_embedding_module NAME` in the "
    "finetuning job; synthesis and training read it there), `module_name=NAME` in `find_patch_embedding`, "
    "`inject_noise` and `patch_embedding_nullspace`, or `hf-nullspace nullspace MODEL --module-name NAME`."
)


class UnsupportedModelError(ValueError):
    """Raised when no patch-embedding projection can be found in a model."""


def find_patch_embedding(model: nn.Module, module_name: str | None = None) -> tuple[str, nn.Conv2d | nn.Linear]:
    """
    Finds the patch-embedding projection of a vision transformer.

    Args:
        model (`nn.Module`):
            A Hugging Face vision model (e.g. `ViTForImageClassification`), possibly wrapped by DDP or accelerate.
        module_name (`str`, *optional*):
            Dotted name of the projection, for architectures outside `PATCH_EMBEDDING_MODULES`.

    Returns:
        `tuple[str, nn.Conv2d | nn.Linear]`: the dotted name and the projection module (a `Linear` for the models
        that take patches, see `patch_inputs.py`).
    """
    model = unwrap(model)
    cached = _found_names.get(model, {}).get(module_name)
    if cached is not None:
        # re-resolved by its path (a few getattr calls), so a module replaced since is still found correctly
        try:
            module = model.get_submodule(cached)
        except AttributeError:
            module = None
        if _is_patch_projection(module, model):
            return cached, module
    found = _search(model, module_name)
    try:
        _found_names.setdefault(model, {})[module_name] = found[0]
    except TypeError:  # a model that cannot be weakly referenced is simply searched every time
        pass
    return found


def _search(model: nn.Module, module_name: str | None) -> tuple[str, nn.Conv2d | nn.Linear]:
    """`find_patch_embedding` without the cache: walks every module of `model`."""
    modules = dict(model.named_modules())
    if module_name is not None:
        if module_name not in modules:
            raise UnsupportedModelError(
                f"The model has no module named {module_name!r}. Patch projections found in it: "
                f"{_candidates(modules, model) or 'none'}. {PROJECTION_HELP}"
            )
        module = modules[module_name]
    else:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        suffix = PATCH_EMBEDDING_MODULES.get(model_type)
        matches = [n for n in modules if suffix is not None and (n == suffix or n.endswith("." + suffix))]
        if not matches:
            reason = (
                f"no module {suffix!r}, where models of type {model_type!r} keep it"
                if suffix is not None
                else f"model type {model_type!r} is not in the built-in table"
            )
            raise UnsupportedModelError(
                f"Cannot find the patch embedding of this {type(model).__name__}: {reason}. Supported model types: "
                f"{', '.join(sorted(PATCH_EMBEDDING_MODULES))} (`timm_wrapper`: timm vision transformers loaded "
                f"with transformers, projection at `patch_embed.proj`). Patch projections found in this model: "
                f"{_candidates(modules, model) or 'none'}. {PROJECTION_HELP}"
            )
        module_name, module = matches[0], modules[matches[0]]
    if not _is_patch_projection(module, model):
        expected = (
            "a Linear on flattened patches"
            if takes_patches(model)
            else "a Conv2d with kernel_size == stride and no padding"
        )
        raise UnsupportedModelError(
            f"{module_name!r} is a {type(module).__name__}, not a patch projection: expected {expected}. "
            f"Patch projections found in this model: "
            f"{_candidates(modules, model) or 'none'}."
        )
    return module_name, module


# model -> {requested module name (None: by model type): dotted name found}. `named_modules()` walks every module of
# the model (hundreds for ViT-B); the name found is cached per model and re-resolved by path on every later call.
_found_names: "weakref.WeakKeyDictionary[nn.Module, dict[str | None, str]]" = weakref.WeakKeyDictionary()


def _is_patch_projection(module, model: nn.Module | None = None) -> bool:
    """A Conv2d with kernel = stride and no padding; in a model that takes patches, a Linear."""
    if isinstance(module, nn.Linear):
        return model is not None and takes_patches(model)
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == module.stride
        and module.padding in (0, (0, 0), "valid")
        and module.dilation == (1, 1)
        and module.groups == 1
    )


def _candidates(modules: dict[str, nn.Module], model: nn.Module, limit: int = 5) -> list[str]:
    """Names of the first `limit` modules that pass as a patch projection (for error messages)."""
    return [name for name, module in modules.items() if _is_patch_projection(module, model)][:limit]


def _tokens_and_dim(output: torch.Tensor) -> tuple[int, int]:
    """(N, D) of a projection output: (B, D, h, w) from a Conv2d, (B, N, D) from a Linear on patches."""
    if output.dim() == 3:
        return output.shape[1], output.shape[2]
    _, dim, height, width = output.shape
    return height * width, dim


def _noise_map(noise: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Reshapes a (1, N, D) token noise to the layout of the projection output: (1, D, h, w), or (1, N, D)."""
    tokens, dim = _tokens_and_dim(output)
    if noise.dim() == 2:
        noise = noise.unsqueeze(0)
    if noise.shape[1:] != (tokens, dim):
        raise ValueError(
            f"Noise of shape {tuple(noise.shape)} does not fit a patch embedding of {tokens} patches x {dim} "
            f"channels: expected (1, {tokens}, {dim}). Was the noise made for another image size?"
        )
    if output.dim() == 3:
        return noise.to(output.dtype)
    return noise.transpose(1, 2).reshape(noise.shape[0], *output.shape[1:]).to(output.dtype)


def _rows_mask(rows: slice, output: torch.Tensor) -> torch.Tensor:
    """A (B, 1, ...) mask of the batch rows in `rows`: 1 there, 0 elsewhere."""
    mask = torch.zeros(output.shape[0], *[1] * (output.dim() - 1), dtype=output.dtype, device=output.device)
    mask[rows] = 1
    return mask


@contextlib.contextmanager
def inject_noise(
    model: nn.Module,
    noise: torch.Tensor,
    rows: slice | None = None,
    module_name: str | None = None,
) -> Iterator[None]:
    """
    Adds a noise to the patch embeddings of every forward pass inside the context.

    The noise has the shape (1, N, D) of the patch tokens (N patches of D channels) and is added to the output of
    the patch projection, before the CLS token and the position embeddings: where the paper puts it. This is the
    API for analysis and synthesis (the noise may require grad); training installs a [`NoiseHook`] once instead.

    Args:
        model (`nn.Module`):
            The vision model.
        noise (`torch.Tensor`):
            Noise of shape (1, N, D) (or (N, D)); it may require grad.
        rows (`slice`, *optional*):
            Rows of the batch that receive the noise (e.g. `slice(B, 2 * B)` for the noisy half of a batch holding
            a clean and a noisy copy). All rows when not given.
        module_name (`str`, *optional*):
            Dotted name of the projection, for architectures outside the built-in table.

    Example:

    ```python
    >>> with inject_noise(model, noise):
    ...     noisy_logits = model(pixel_values=pixel_values).logits
    ```
    """
    _, projection = find_patch_embedding(model, module_name)

    def hook(module, args, output):
        noise_map = _noise_map(noise, output)
        if rows is None:
            return output + noise_map
        return torch.addcmul(output, _rows_mask(rows, output), noise_map)  # output + mask * noise, one kernel

    handle = projection.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class NoiseHook:
    """
    A forward hook on the patch projection, installed once for a whole training run, that adds the current noise
    while it is enabled and does nothing otherwise.

    Nothing is looked up, registered or moved per forward pass: the noise lives on the projection's device in a
    tensor that [`set_noise`] overwrites in place (its identity never changes, so a `torch.compile`d model is not
    recompiled when the noise changes), and the noisy rows are fixed by the layout: `"all"` rows, or `"halves"`, a
    batch of twice B rows whose first B rows are clean and last B rows noisy (the clean and the noisy copy of one
    batch in one forward pass). The noise is added out of place in one broadcast addition (no slicing, no
    concatenation), so autograd and compiled graphs see an ordinary elementwise op.

    Args:
        model (`nn.Module`):
            The vision model (wrappers such as DDP or `torch.compile` are looked through).
        module_name (`str`, *optional*):
            Dotted name of the projection, for architectures outside the built-in table.

    Example:

    ```python
    >>> hook = NoiseHook(model)
    >>> hook.set_noise(noise)                                   # once per refresh
    >>> with hook.enabled("halves"):                            # every step
    ...     logits = model(pixel_values=torch.cat([pixel_values, pixel_values])).logits
    >>> hook.remove()
    ```
    """

    LAYOUTS = ("all", "halves")

    def __init__(self, model: nn.Module, module_name: str | None = None):
        self.name, self.projection = find_patch_embedding(model, module_name)
        self.layout: str | None = None
        self.source: torch.Tensor | None = None
        # (2, 1, D, N): row 0 zeros (the clean half), row 1 the noise; viewed as (2, 1, D, h, w) in the hook (as
        # (2, 1, N, D) for a Linear on patches)
        self._pair: torch.Tensor | None = None
        self._handle = self.projection.register_forward_hook(self._hook)

    def set_noise(self, noise: torch.Tensor) -> None:
        """Makes `noise` (shape (1, N, D) or (N, D)) the noise added from now on; copied to the projection's
        device once, here."""
        tokens = noise.detach().reshape(1, -1, noise.shape[-1]).transpose(1, 2)  # (1, D, N)
        device = self.projection.weight.device
        pair = self._pair
        if pair is not None and pair.shape[1:] == tokens.shape and (pair.dtype, pair.device) == (tokens.dtype, device):
            pair[1].copy_(tokens)
        else:
            pair = torch.zeros(2, *tokens.shape, dtype=tokens.dtype, device=device)
            pair[1].copy_(tokens)
            self._pair = pair
        self.source = noise

    @contextlib.contextmanager
    def enabled(self, layout: str = "all") -> Iterator[None]:
        """Adds the noise to the rows of `layout` (`"all"` or `"halves"`) in the forward passes inside the context."""
        if layout not in self.LAYOUTS:
            raise ValueError(f"layout must be one of {self.LAYOUTS}, got {layout!r}.")
        if self._pair is None:
            raise RuntimeError("NoiseHook.set_noise must be called before the hook is enabled.")
        previous, self.layout = self.layout, layout
        try:
            yield
        finally:
            self.layout = previous

    def _hook(self, module, args, output):
        layout = self.layout
        if layout is None:
            return None
        tokens, dim = _tokens_and_dim(output)
        if self._pair.shape[2:] != (dim, tokens):
            raise ValueError(
                f"Noise of shape (1, {self._pair.shape[3]}, {self._pair.shape[2]}) does not fit a patch embedding of "
                f"{tokens} patches x {dim} channels: expected (1, {tokens}, {dim}). Was the noise made for another "
                "image size?"
            )
        if output.dim() == 3:  # a Linear on patches: (B, N, D)
            pair = self._pair.transpose(2, 3).to(output.dtype)
        else:
            pair = self._pair.view(2, 1, *output.shape[1:]).to(output.dtype)
        if layout == "all":
            return output + pair[1]
        if output.shape[0] % 2:
            raise ValueError(
                f"The 'halves' layout needs an even batch (clean rows, then noisy rows), got {output.shape[0]}."
            )
        return (output.unflatten(0, (2, -1)) + pair).flatten(0, 1)

    def remove(self) -> None:
        """Removes the hook from the model."""
        self._handle.remove()


def projection_weight(model: nn.Module, module_name: str | None = None) -> torch.Tensor:
    """The weight of the patch projection of `model` as a (D, c, r, r) convolution weight (for a Linear on patches,
    that of the Conv2d it equals)."""
    _, projection = find_patch_embedding(model, module_name)
    if isinstance(projection, nn.Linear):
        return conv_weight(model, projection)
    return projection.weight


class _ShapeFound(Exception):
    pass


def noise_shape(
    model: nn.Module, pixel_values: torch.Tensor | dict, module_name: str | None = None
) -> tuple[int, int, int]:
    """
    Returns the shape (1, N, D) of a noise for the patch embeddings of `model` on images like `pixel_values` (a
    tensor, or a batch dict holding the model's other inputs too, see `model_inputs.py`).

    Only the model up to its patch projection runs.
    """
    _, projection = find_patch_embedding(model, module_name)
    shape = []

    def hook(module, args, output):
        shape.extend(_tokens_and_dim(output))
        raise _ShapeFound

    handle = projection.register_forward_hook(hook)
    try:
        with torch.no_grad():
            unwrap(model)(**take_rows(model_inputs(pixel_values), slice(0, 1)))
    except _ShapeFound:
        pass
    finally:
        handle.remove()
    return 1, *shape
