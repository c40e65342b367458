"""A [0, 1] pixel-space view of a Hugging Face image classifier, the common interface of all attacks."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..patch_inputs import PatchInputs


class PixelSpaceClassifier(nn.Module):
    """
    Wraps a Hugging Face image classifier so that it takes images in [0, 1] and returns logits.

    The normalisation `(images - mean) / std` of the model's image processor is applied here and only here: attacks
    perturb and clamp images in [0, 1] pixel space, so their budgets (e.g. `epsilon=1/255`) mean what they say. A
    model that takes patches (SigLIP2) gets the normalised images cut into its patches here too (`patch_inputs.py`).

    With `label_subset`, the logits are restricted to those columns (in the given order): the output has
    `len(label_subset)` columns and labels must be positions in `label_subset`
    (see [`~PixelSpaceClassifier.to_subset_labels`]).
    The top-1 prediction equals the one of the full logits with all other classes masked to `-inf` (ImageNet-A/-R
    protocol), and losses that compare logits (CW margin, AutoAttack's DLR) stay finite, which they would not with
    `-inf` columns.

    Args:
        model (`nn.Module`):
            An image classifier called as `model(pixel_values=...)` whose output has `.logits`, e.g. from
            `AutoModelForImageClassification`.
        mean (`Sequence[float]`):
            Per-channel mean of the normalisation, e.g. `processor.image_mean`.
        std (`Sequence[float]`):
            Per-channel standard deviation of the normalisation, e.g. `processor.image_std`.
        label_subset (`Sequence[int]`, *optional*):
            Class indices to keep, e.g. the 200 ImageNet-A classes among the 1000 ImageNet classes.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        label_subset: Sequence[int] | None = None,
    ):
        super().__init__()
        self.model = model
        self.training = model.training  # the wrapper never switches the model's mode: it takes the model's own
        self.patch_inputs = PatchInputs.for_model(model)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        if label_subset is None:
            self.label_subset = None
        else:
            subset = torch.as_tensor(list(label_subset), dtype=torch.long)
            if subset.unique().numel() != subset.numel():
                raise ValueError("`label_subset` contains duplicate class indices.")
            self.register_buffer("label_subset", subset, persistent=False)

    @classmethod
    def from_image_processor(
        cls, model: nn.Module, processor, label_subset: Sequence[int] | None = None
    ) -> "PixelSpaceClassifier":
        """
        Builds the wrapper with the normalisation of an image processor: its `image_mean` and `image_std` when it has
        `do_normalize`, else none (mean 0, std 1), as the training data is prepared (`data.transforms`).

        Args:
            model (`nn.Module`):
                The image classifier.
            processor (`BaseImageProcessor`):
                Its image processor.
            label_subset (`Sequence[int]`, *optional*):
                Class indices to keep, see the class docstring.
        """
        if not getattr(processor, "do_normalize", False):
            return cls(model, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], label_subset=label_subset)
        return cls(model, processor.image_mean, processor.image_std, label_subset=label_subset)

    @property
    def config(self):
        """The wrapped model's config (attacks read `patch_size` from it)."""
        return self.model.config

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Maps images in [0, 1] to the model's input space: `(images - mean) / std`."""
        return (images - self.mean) / self.std

    def model_inputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's inputs for images in [0, 1]: normalised, and cut into patches for a model that takes them."""
        pixel_values = self.normalize(images)
        return {"pixel_values": pixel_values} if self.patch_inputs is None else self.patch_inputs(pixel_values)

    def _restrict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.label_subset is None else logits[:, self.label_subset]

    def to_subset_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """
        Maps class indices of the full model to positions in `label_subset`.

        Args:
            labels (`torch.Tensor` of shape `(batch_size,)`):
                Class indices of the full model, all of them in `label_subset`.
        """
        if self.label_subset is None:
            return labels
        matches = labels.unsqueeze(1) == self.label_subset.unsqueeze(0)
        if not bool(matches.any(dim=1).all()):
            raise ValueError("Some labels are not in `label_subset`.")
        return matches.int().argmax(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """
        Args:
            images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Images in [0, 1].

        Returns:
            `torch.Tensor` of shape `(batch_size, num_classes)`: the logits, restricted to `label_subset` if given.
        """
        return self._restrict(self.model(**self.model_inputs(images)).logits)

    @contextmanager
    def eager_attention(self) -> Iterator[None]:
        """
        Switches the wrapped model to the `"eager"` attention implementation for the duration of the block.

        In transformers 5, `sdpa` and flash attention return no attention weights (`output_attentions=True` gives an
        empty tuple); only `"eager"` does. The previous implementation is restored on exit.
        """
        previous = getattr(self.model.config, "_attn_implementation", None)
        if previous == "eager":
            yield
            return
        if not hasattr(self.model, "set_attn_implementation"):
            raise ValueError(f"{type(self.model).__name__} cannot switch to eager attention to return attentions.")
        self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.model.set_attn_implementation(previous)

    def logits_and_attentions(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """
        Logits and the attention maps of every layer.

        Args:
            images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Images in [0, 1].

        Returns:
            `tuple(torch.Tensor, tuple(torch.Tensor))`: the logits (restricted as in `forward`) and, per layer, the
            attention probabilities of shape `(batch_size, num_heads, num_tokens, num_tokens)`.

        Raises:
            `ValueError`: if the model returns no attentions (e.g. a CNN).
        """
        with self.eager_attention():
            outputs = self.model(**self.model_inputs(images), output_attentions=True)
        attentions = getattr(outputs, "attentions", None)
        if not attentions:
            raise ValueError(f"{type(self.model).__name__} returns no attentions: a ViT-family model is required.")
        return self._restrict(outputs.logits), tuple(attentions)


class _TiledConvolution(torch.autograd.Function):
    """A frozen convolution whose kernel tiles the image (stride = kernel size, no padding), as the patch embedding of
    a ViT: the forward is the convolution itself; the input gradient is one matrix product, each pixel lying in one
    patch (on CPU, PyTorch's convolution backward is about 10x slower for this shape; the result is the same sums)."""

    @staticmethod
    def forward(ctx, images, weight, bias):
        ctx.save_for_backward(weight)
        ctx.shape, ctx.dtype = images.shape, images.dtype
        return F.conv2d(images, weight, bias, stride=weight.shape[-2:])

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        batch, channels, height, width = ctx.shape
        out_channels, _, kernel_h, kernel_w = weight.shape
        grid_h, grid_w = grad.shape[-2:]
        columns = grad.permute(0, 2, 3, 1).reshape(-1, out_channels) @ weight.to(grad.dtype).reshape(out_channels, -1)
        images = columns.view(batch, grid_h, grid_w, channels, kernel_h, kernel_w).permute(0, 3, 1, 4, 2, 5)
        images = images.reshape(batch, channels, grid_h * kernel_h, grid_w * kernel_w)
        images = F.pad(images, (0, width - grid_w * kernel_w, 0, height - grid_h * kernel_h))
        return images.to(ctx.dtype), None, None


def _tiles(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and tuple(module.stride) == tuple(module.kernel_size)
        and module.padding in ((0, 0), "valid")
        and tuple(module.dilation) == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


@contextmanager
def tiled_convolution_gradients(model: nn.Module) -> Iterator[None]:
    """
    Within the block, the frozen convolutions of `model` whose kernel tiles the image (a ViT's patch embedding) take
    their input gradient on CPU as one matrix product (`_TiledConvolution`); the forward is unchanged. Attacks run
    under it: most of a CPU attack step's convolution time was PyTorch's backward of the patch embedding.
    """
    # modules whose forward is already replaced on the instance (accelerate's device hooks) are left alone
    patched = [m for m in model.modules() if _tiles(m) and not m.weight.requires_grad and "forward" not in vars(m)]
    for module in patched:

        def forward(images, module=module):
            if images.device.type != "cpu" or not torch.is_grad_enabled():
                return type(module).forward(module, images)
            return _TiledConvolution.apply(images, module.weight, module.bias)

        module.forward = forward
    try:
        yield
    finally:
        for module in patched:
            del module.forward
