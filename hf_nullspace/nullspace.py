"""The exact nullspace of the linear patch projection of a vision transformer (paper, Section 3.1)."""

from dataclasses import dataclass

import torch
from torch import nn

from .embedding import projection_weight


@dataclass
class PatchNullspace:
    """
    The nullspace of a patch projection with weight W of shape (d, c, r, r), taken as the linear map W reshaped to
    (d, c*r*r) on whole patches (all channels together). A `Linear` projection on flattened patches (SigLIP2) is
    taken as the Conv2d it equals, so perturbations are images here too.

    Attributes:
        basis (`torch.Tensor`): orthonormal float64 basis of shape (c*r*r, dimension), in the (c, r, r) order of a
            patch.
        dimension (`int`): c*r*r - rank(W).
        rank (`int`): numerical rank of W.
        num_channels (`int`): c.
        patch_size (`tuple[int, int]`): (r, r).
        hidden_size (`int`): d.
    """

    basis: torch.Tensor
    dimension: int
    rank: int
    num_channels: int
    patch_size: tuple[int, int]
    hidden_size: int

    @property
    def patch_dim(self) -> int:
        """c * r * r: the dimension of one flattened patch."""
        return self.num_channels * self.patch_size[0] * self.patch_size[1]

    def _patches(self, images: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = images.shape
        (rh, rw) = self.patch_size
        if channels != self.num_channels or height % rh or width % rw:
            raise ValueError(
                f"Perturbations of shape {tuple(images.shape)} do not tile into {self.num_channels}x{rh}x{rw} "
                "patches: the channels must match and height and width must be multiples of the patch size."
            )
        patches = images.reshape(batch, channels, height // rh, rh, width // rw, rw)
        return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, height // rh, width // rw, self.patch_dim)

    def _images(self, patches: torch.Tensor) -> torch.Tensor:
        batch, grid_h, grid_w, _ = patches.shape
        (rh, rw) = self.patch_size
        patches = patches.reshape(batch, grid_h, grid_w, self.num_channels, rh, rw).permute(0, 3, 1, 4, 2, 5)
        return patches.reshape(batch, self.num_channels, grid_h * rh, grid_w * rw)

    def project(self, perturbation: torch.Tensor) -> torch.Tensor:
        """
        Projects a pixel perturbation of shape (B, c, H, W) onto the nullspace, patch by patch. The result changes
        no patch token: the projection's output is the same with and without it (up to float rounding).
        """
        basis = self.basis.to(perturbation.device, perturbation.dtype)
        patches = self._patches(perturbation)
        return self._images((patches @ basis) @ basis.T)

    def sample(
        self, shape: tuple[int, int, int, int], norm: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """
        Draws a random nullspace perturbation of `shape` (B, c, H, W), each image scaled to L2 `norm`. Zero when the
        nullspace is trivial.
        """
        noise = torch.randn(shape, generator=generator)
        noise = self.project(noise)
        norms = noise.flatten(1).norm(dim=1).clamp_min(torch.finfo(noise.dtype).tiny)
        return noise * (norm / norms).view(-1, 1, 1, 1)

    def patterns(self, count: int) -> torch.Tensor:
        """The first `count` basis vectors as (count, c, r, r) images (for looking at them)."""
        count = min(count, self.dimension)
        return self.basis[:, :count].T.reshape(count, self.num_channels, *self.patch_size)


def patch_embedding_nullspace(
    model: nn.Module, module_name: str | None = None, rtol: float | None = None
) -> PatchNullspace:
    """
    Computes the exact nullspace of the patch projection of `model`.

    By rank-nullity the nullspace of W reshaped to (d, c*r*r) has dimension c*r*r - rank(W), positive whenever
    c*r*r > d (ViT-S/16: 768 - 384 >= 384). A perturbation whose every patch lies in it leaves the patch tokens, and
    so the whole model output, unchanged. A model with c*r*r <= d and full rank has dimension 0 (reported, not
    raised).

    Args:
        model (`nn.Module`):
            A Hugging Face vision transformer.
        module_name (`str`, *optional*):
            Dotted name of the projection, for architectures outside the built-in table.
        rtol (`float`, *optional*):
            Singular values below `rtol * max(singular values)` count as zero. Defaults to
            `max(d, c*r*r) * machine epsilon` of float64 (numpy's `matrix_rank` rule) applied to W in float64.

    Returns:
        [`PatchNullspace`]: basis, dimension and the patch-wise projection.
    """
    weight = projection_weight(model, module_name).detach().to(torch.float64).cpu()
    hidden_size, channels, rh, rw = weight.shape
    matrix = weight.reshape(hidden_size, channels * rh * rw)
    _, singular_values, vh = torch.linalg.svd(matrix, full_matrices=True)
    if rtol is None:
        rtol = max(matrix.shape) * torch.finfo(torch.float64).eps
    rank = int((singular_values > rtol * singular_values.max()).sum()) if singular_values.numel() else 0
    basis = vh[rank:].T.contiguous()
    return PatchNullspace(
        basis=basis,
        dimension=basis.shape[1],
        rank=rank,
        num_channels=channels,
        patch_size=(rh, rw),
        hidden_size=hidden_size,
    )
