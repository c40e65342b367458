"""Find the patch-embedding projection of a Hugging Face vision model and add noise at its output."""

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .classifier import unwrap

# model_type -> dotted suffix of the patch-embedding projection (a Conv2d with kernel = stride = patch size).
# The noise of the paper lives at the output of this projection: after it, before the CLS token and the position
# embeddings are added.
PATCH_EMBEDDING_MODULES = {
    "vit": "embeddings.patch_embeddings.projection",
    "deit": "embeddings.patch_embeddings.projection",
    "beit": "embeddings.patch_embeddings.projection",
    "data2vec-vision": "embeddings.patch_embeddings.projection",
    "dinov2": "embeddings.patch_embeddings.projection",
    "dinov2_with_registers": "embeddings.patch_embeddings.projection",
    "vit_msn": "embeddings.patch_embeddings.projection",
    "swin": "embeddings.patch_embeddings.projection",
    "swinv2": "embeddings.patch_embeddings.projection",
}


class UnsupportedModelError(ValueError):
    """Raised when no patch-embedding projection can be found in a model."""


def find_patch_embedding(model: nn.Module, module_name: str | None = None) -> tuple[str, nn.Conv2d]:
    """
    Finds the patch-embedding projection of a vision transformer.

    Args:
        model (`nn.Module`):
            A Hugging Face vision model (e.g. `ViTForImageClassification`), possibly wrapped by DDP or accelerate.
        module_name (`str`, *optional*):
            Dotted name of the projection, for architectures outside `PATCH_EMBEDDING_MODULES`.

    Returns:
        `tuple[str, nn.Conv2d]`: the dotted name and the projection module.
    """
    model = unwrap(model)
    modules = dict(model.named_modules())
    if module_name is not None:
        if module_name not in modules:
            raise UnsupportedModelError(
                f"The model has no module named {module_name!r}. Modules ending in 'projection' or 'patch_embed': "
                f"{[n for n in modules if n.endswith(('projection', 'patch_embed', 'proj'))][:10]}."
            )
        module = modules[module_name]
    else:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        suffix = PATCH_EMBEDDING_MODULES.get(model_type)
        matches = [n for n in modules if suffix is not None and (n == suffix or n.endswith("." + suffix))]
        if not matches:
            raise UnsupportedModelError(
                f"Cannot find the patch embedding of a model of type {model_type!r} ({type(model).__name__}). "
                f"Supported model types: {', '.join(sorted(PATCH_EMBEDDING_MODULES))}. For another vision "
                "transformer, pass the dotted name of its patch-embedding projection (a Conv2d with kernel = stride "
                "= patch size) as `nullspace_patch_embedding_module` / `module_name`."
            )
        module_name, module = matches[0], modules[matches[0]]
    if not isinstance(module, nn.Conv2d) or module.kernel_size != module.stride or module.padding not in (0, (0, 0)):
        raise UnsupportedModelError(
            f"{module_name!r} is a {type(module).__name__}, not a patch projection: expected a Conv2d with "
            "kernel_size == stride and no padding."
        )
    return module_name, module


def _noise_map(noise: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Reshapes a (1, N, D) token noise to the (1, D, h, w) layout of the projection output."""
    _, dim, height, width = output.shape
    if noise.dim() == 2:
        noise = noise.unsqueeze(0)
    if noise.shape[1:] != (height * width, dim):
        raise ValueError(
            f"Noise of shape {tuple(noise.shape)} does not fit a patch embedding of {height * width} patches x {dim} "
            f"channels: expected (1, {height * width}, {dim}). Was the noise made for another image size?"
        )
    return noise.transpose(1, 2).reshape(noise.shape[0], dim, height, width).to(output.dtype)


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
    the patch projection, before the CLS token and the position embeddings: where the paper puts it.

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
        start, stop, _ = rows.indices(output.shape[0])
        return torch.cat([output[:start], output[start:stop] + noise_map, output[stop:]])

    handle = projection.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _ShapeFound(Exception):
    pass


def noise_shape(model: nn.Module, pixel_values: torch.Tensor, module_name: str | None = None) -> tuple[int, int, int]:
    """
    Returns the shape (1, N, D) of a noise for the patch embeddings of `model` on images like `pixel_values`.

    Only the model up to its patch projection runs.
    """
    _, projection = find_patch_embedding(model, module_name)
    shape = []

    def hook(module, args, output):
        shape.extend(output.shape)
        raise _ShapeFound

    handle = projection.register_forward_hook(hook)
    try:
        with torch.no_grad():
            unwrap(model)(pixel_values=pixel_values[:1])
    except _ShapeFound:
        pass
    finally:
        handle.remove()
    _, dim, height, width = shape
    return 1, height * width, dim
