"""Models that take their images already cut into patches (SigLIP2), and their `Linear` patch projection.

`Siglip2ForImageClassification` takes `pixel_values` of shape (B, N, r*r*c): each image cut into r x r patches, each
patch flattened in (row, column, channel) order, padded to N patches, with `pixel_attention_mask` (B, N) marking the
real patches and `spatial_shapes` (B, 2) the grid of patches (its image processor's NaFlex format). Its patch
projection is a `Linear` on the flattened patches: the `Conv2d` of the other families, applied patch by patch.

This library keeps images as (B, c, H, W) tensors up to the model. [`PatchInputs`] cuts a batch of images of one size
into the model's inputs: in the collator of the training data ([`PatchingCollator`]) and in the pixel-space wrapper
of the attacks and corruptions (after normalisation, so attacks still act on pixels). `conv_weight` views the
`Linear` weight as the (D, c, r, r) weight of that `Conv2d`, so the exact nullspace acts on images as for every other
family. The noise lives at the projection output, (1, N, D), as for every family; on padding patches it has no effect
(they are masked out of attention and pooling).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .classifier import unwrap
from .data.rows import collate_fn

# model types whose forward takes patches, with `config.vision_config.patch_size` and `num_channels`
PATCH_INPUT_MODEL_TYPES = ("siglip2",)


def _vision_config(model: nn.Module):
    config = unwrap(model).config
    return getattr(config, "vision_config", config)


def takes_patches(model: nn.Module) -> bool:
    """Whether `model` (or the model inside a wrapper) takes images cut into patches (`PATCH_INPUT_MODEL_TYPES`)."""
    config = getattr(unwrap(model), "config", None)
    return getattr(config, "model_type", None) in PATCH_INPUT_MODEL_TYPES


def conv_weight(model: nn.Module, projection: nn.Linear) -> torch.Tensor:
    """The (D, c, r, r) weight of the `Conv2d` that `projection`, the `Linear` patch projection of `model` on
    (row, column, channel)-flattened patches, equals."""
    vision = _vision_config(model)
    size, channels = vision.patch_size, vision.num_channels
    return projection.weight.reshape(-1, size, size, channels).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class PatchInputs:
    """
    Cuts images of shape (B, c, H, W) into the inputs of a model that takes patches, as SigLIP2's image processor
    does after its resize: `pixel_values` (B, N, r*r*c), `pixel_attention_mask` (B, N) and `spatial_shapes` (B, 2).

    Args:
        patch_size (`int`):
            r, the side of a patch; H and W must be multiples of it.
        max_num_patches (`int`, *optional*):
            N: the patches are padded with zeros to this many, as the image processor pads them. Not padded when not
            given.
    """

    patch_size: int
    max_num_patches: int | None = None

    @classmethod
    def for_model(cls, model: nn.Module, processor=None) -> "PatchInputs | None":
        """The patching of `model`'s inputs, padded as `processor` pads (its `max_num_patches`), or `None` for a
        model that takes images."""
        if not takes_patches(model):
            return None
        return cls(_vision_config(model).patch_size, getattr(processor, "max_num_patches", None))

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, channels, height, width = images.shape
        size = self.patch_size
        if height % size or width % size:
            raise ValueError(f"Images of {height}x{width} pixels do not tile into patches of {size}x{size}.")
        rows, columns = height // size, width // size
        count = rows * columns
        length = self.max_num_patches or count
        if count > length:
            raise ValueError(f"Images of {height}x{width} pixels give {count} patches, more than {length}.")
        patches = images.reshape(batch, channels, rows, size, columns, size).permute(0, 2, 4, 3, 5, 1)
        patches = nn.functional.pad(patches.reshape(batch, count, -1), (0, 0, 0, length - count))
        mask = torch.zeros(batch, length, dtype=torch.int32, device=images.device)
        mask[:, :count] = 1
        shapes = torch.tensor([[rows, columns]], dtype=torch.long, device=images.device).repeat(batch, 1)
        return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}


class PatchingCollator:
    """
    A collate function for models that take patches: `collate` (which stacks (B, c, H, W) `pixel_values`), then
    [`PatchInputs`] on the batch's images.

    Args:
        patch_inputs ([`PatchInputs`]): the model's patching.
        collate (`Callable`, *optional*, defaults to `data.collate_fn`): the collate function of images.
    """

    def __init__(self, patch_inputs: PatchInputs, collate: Callable = collate_fn):
        self.patch_inputs = patch_inputs
        self.collate = collate

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.collate(examples)
        batch.update(self.patch_inputs(batch["pixel_values"]))
        return batch


def collator_for(model: nn.Module, processor=None, collate: Callable = collate_fn) -> Callable:
    """The collate function of `model`'s batches: `collate` for a model that takes images, a [`PatchingCollator`]
    padded as `processor` pads for one that takes patches."""
    patch_inputs = PatchInputs.for_model(model, processor)
    return collate if patch_inputs is None else PatchingCollator(patch_inputs, collate)
