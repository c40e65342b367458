"""Properties of learned noise from the paper's analysis: closure, the permuted control, the noise seen in pixels."""

import contextlib

import numpy as np
import torch
from torch import nn

from .classifier import frozen_eval_mode, unwrap
from .embedding import inject_noise, projection_weight
from .synthesis import epsilon_statistic


@torch.no_grad()
def _logits(model: nn.Module, pixel_values: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Logits in eval mode (the model's mode is restored), with `noise` at the patch embeddings if given."""
    model = unwrap(model)
    with frozen_eval_mode(model), inject_noise(model, noise) if noise is not None else contextlib.nullcontext():
        return model(pixel_values=pixel_values).logits.float()


def scaling_closure(
    model: nn.Module, noise: torch.Tensor, pixel_values: torch.Tensor, scales: list[float]
) -> list[dict]:
    """
    The epsilon statistic of a * v for each scale a: the paper reports that scalar multiples of a learned noise stay
    (approximately) inside the epsilon-approximate nullspace.

    Returns:
        `list[dict]`: one `{"scale", "statistic"}` per scale.
    """
    clean = _logits(model, pixel_values)
    return [
        {"scale": float(a), "statistic": float(epsilon_statistic(clean, _logits(model, pixel_values, a * noise)))}
        for a in scales
    ]


def convex_closure(
    model: nn.Module, noise_a: torch.Tensor, noise_b: torch.Tensor, pixel_values: torch.Tensor, weights: list[float]
) -> list[dict]:
    """
    The epsilon statistic of t * v_a + (1 - t) * v_b for each weight t: convex combinations of two learned noises.

    Returns:
        `list[dict]`: one `{"weight", "statistic"}` per weight.
    """
    clean = _logits(model, pixel_values)
    results = []
    for t in weights:
        mixed = t * noise_a + (1 - t) * noise_b
        results.append(
            {"weight": float(t), "statistic": float(epsilon_statistic(clean, _logits(model, pixel_values, mixed)))}
        )
    return results


def permuted_control(
    model: nn.Module, noise: torch.Tensor, pixel_values: torch.Tensor, generator: torch.Generator | None = None
) -> dict:
    """
    The authors' control: top-1 agreement of predictions with and without the noise, against the same noise with its
    entries randomly permuted (same norm, random direction).

    Returns:
        `dict`: `agreement` and `statistic` for the noise, `permuted_agreement` and `permuted_statistic` for the
        control, and the common `norm`.
    """
    permuted = noise.flatten()[torch.randperm(noise.numel(), generator=generator)].reshape(noise.shape)
    clean = _logits(model, pixel_values)
    noisy = _logits(model, pixel_values, noise)
    control = _logits(model, pixel_values, permuted)
    top1 = clean.argmax(-1)
    return {
        "norm": float(noise.norm()),
        "agreement": float((noisy.argmax(-1) == top1).float().mean()),
        "statistic": float(epsilon_statistic(clean, noisy)),
        "permuted_agreement": float((control.argmax(-1) == top1).float().mean()),
        "permuted_statistic": float(epsilon_statistic(clean, control)),
    }


def noise_to_pixels(
    model: nn.Module, noise: torch.Tensor, bounds: tuple[float, float] = (-1.0, 1.0), module_name: str | None = None
) -> tuple[torch.Tensor, float]:
    """
    Maps a patch-embedding noise back to pixels, for looking at it: for every patch, the pixel perturbation x within
    `bounds` that best gives the token change (bounded least squares, min ||W x - v_patch|| s.t. lo <= x <= hi, with
    W the projection weight reshaped to (d, c*r*r)), as the authors did.

    Returns:
        `tuple[torch.Tensor, float]`: the perturbation (c, H, W) in the model's input space, and the relative
        residual ||W x - v|| / ||v|| over all patches (0 when the token change is reachable within the bounds).
    """
    from scipy.optimize import lsq_linear

    weight = projection_weight(model, module_name).detach().double().cpu()
    hidden, channels, rh, rw = weight.shape
    matrix = weight.reshape(hidden, -1).numpy()
    tokens = noise.detach().double().cpu().reshape(-1, hidden).numpy()
    grid = int(round(tokens.shape[0] ** 0.5))
    if grid * grid != tokens.shape[0]:
        raise ValueError(f"noise_to_pixels expects a square patch grid, got {tokens.shape[0]} patches.")
    solutions = np.stack([lsq_linear(matrix, token, bounds=bounds).x for token in tokens])
    residual = np.linalg.norm(solutions @ matrix.T - tokens) / max(np.linalg.norm(tokens), 1e-12)
    pixels = torch.from_numpy(solutions).reshape(grid, grid, channels, rh, rw).permute(2, 0, 3, 1, 4)
    return pixels.reshape(channels, grid * rh, grid * rw).float(), float(residual)
