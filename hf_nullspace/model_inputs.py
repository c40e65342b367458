"""The inputs of a model's forward pass in a batch: `pixel_values`, and whatever else the model takes with them.

A batch is a dict from the collator; everything in it but `labels` goes to every forward pass (training, noise
synthesis, noise statistics): tensors row-aligned with `pixel_values`, and flags (non-tensors) as they are. Most
families take `pixel_values` alone; SigLIP2 takes `pixel_attention_mask` and `spatial_shapes` with its patches (see
`patch_inputs.py`). A bare tensor is `pixel_values` alone.
"""

import torch


def model_inputs(batch: torch.Tensor | dict) -> dict[str, torch.Tensor]:
    """The keyword arguments of the model's forward pass in `batch`: a tensor is `pixel_values`; a dict loses its
    `labels`."""
    if isinstance(batch, torch.Tensor):
        return {"pixel_values": batch}
    return {key: value for key, value in batch.items() if key != "labels"}


def take_rows(inputs: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """The rows `rows` of every tensor input (flags as they are)."""
    return {key: value[rows] if torch.is_tensor(value) else value for key, value in inputs.items()}


def repeat_rows(inputs: dict[str, torch.Tensor], times: int = 2) -> dict[str, torch.Tensor]:
    """Every tensor input as `times` copies of its rows, one after the other (the clean and the noisy copy of a
    batch); flags as they are."""
    return {key: torch.cat([value] * times) if torch.is_tensor(value) else value for key, value in inputs.items()}
