"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019), applied on the fly to batches of tensors.

The per-severity parameters are those of `make_imagenet_c.py` in `hendrycks/robustness`, the script that produced the
published ImageNet-C. Everything is vectorised with torch over the batch except `jpeg_compression` (PIL, per image);
all randomness is drawn from a `torch.Generator`, never from a global random state.

Where this module deliberately follows the published script rather than the `imagecorruptions` package (which
re-implemented it without ImageMagick):

- `pixelate` up-samples with PIL's BOX filter in the script, which for an enlargement picks the same source pixel as
  nearest-neighbour; `imagecorruptions` uses nearest-neighbour, so both agree.
- `elastic_transform` is the script's version (a random affine warp followed by a smoothed random displacement field);
  `imagecorruptions` replaced it by a different, displacement-only transform.
- `motion_blur` follows ImageMagick's `MotionBlurImage` (one-sided Gaussian along a line, edge pixels repeated), as
  the script called it; `imagecorruptions` re-implemented the same kernel, so both agree.
- `glass_blur` reproduces what the script's "swap" loop really does: `x[h, w], x[h2, w2] = x[h2, w2], x[h, w]` on
  NumPy views copies `x[h2, w2]` into `x[h, w]` and leaves `x[h2, w2]` unchanged. The sequential copies, visited in
  reverse raster order, are resolved exactly and in parallel by pointer jumping.
- `frost` overlays a procedural frost texture instead of the script's six frost photographs, whose provenance and
  licence are unknown, so they are not shipped here. The texture has ice-crystal streaks over a low-frequency fractal
  and, per image, the per-channel mean and standard deviation of one of the five photographs the script draws from
  (measured once; the script never draws the sixth).

Size: the script works on 224x224 images. Constants that are lengths in pixels (defocus radius, glass-blur sigma and
displacement, motion-blur length, snow-flake size and streak length, frost crystal length, elastic smoothing, warp
and displacement) are multiplied by `pixel_scale`, by default `min(H, W) / 224`, so a 224x224 batch gets the published
parameters exactly and other sizes get the same corruption relative to the image. The elastic displacement gain is
multiplied by `pixel_scale**2` (a Gaussian-smoothed noise field shrinks as 1/sigma) so that displacements scale with
the image too. Zoom factors, pixelate factors and the fog fractal (drawn on the next power of two above the image
side, 256 for 224) are already relative to the image; the noises, brightness, contrast and JPEG work per pixel.

Outputs are not quantised to 8 bits (the published data went through uint8 and a JPEG at quality 85 when saved);
quantisations inside a corruption (glass blur's uint8 copy, the snow layer's 8-bit round trips) are kept.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.imagenet_c import IMAGENET_C_CORRUPTIONS

__all__ = ["CORRUPTIONS", "corrupt"]

CORRUPTIONS = IMAGENET_C_CORRUPTIONS  # the 15 in the standard order

_REFERENCE_SIDE = 224

# Per-severity parameters of make_imagenet_c.py.
_GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)
_SHOT_NOISE = (60, 25, 12, 5, 3)
_IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)
_DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # disk radius, anti-alias sigma
_GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # sigma, max delta, iterations
_MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # ImageMagick radius, sigma
_ZOOM_BLUR = (  # the script's np.arange calls, float end-point behaviour included (12, 16, 11, 13, 11 zooms)
    np.arange(1, 1.11, 0.01),
    np.arange(1, 1.16, 0.01),
    np.arange(1, 1.21, 0.02),
    np.arange(1, 1.26, 0.02),
    np.arange(1, 1.31, 0.03),
)
_SNOW = (  # loc, scale, zoom, threshold, blur radius, blur sigma, image mix
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)
_FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # image weight, frost weight
_FOG = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))  # strength, fractal wibble decay
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)
_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
_ELASTIC = (  # displacement gain, displacement smoothing sigma, affine jitter ("244 should have been 224")
    (244 * 2, 244 * 0.7, 244 * 0.1),
    (244 * 2, 244 * 0.08, 244 * 0.2),
    (244 * 0.05, 244 * 0.01, 244 * 0.02),
    (244 * 0.07, 244 * 0.01, 244 * 0.02),
    (244 * 0.12, 244 * 0.01, 244 * 0.02),
)
_PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)
_JPEG_QUALITY = (25, 18, 15, 10, 7)

# Per-channel (RGB) mean and standard deviation of the five frost photographs the script draws from (frost2 and
# frost3 are the same photograph), used to colour the procedural texture.
_FROST_MEAN = (
    (0.305, 0.585, 0.650),
    (0.787, 0.805, 0.841),
    (0.787, 0.805, 0.841),
    (0.540, 0.599, 0.648),
    (0.441, 0.484, 0.528),
)
_FROST_STD = (
    (0.106, 0.065, 0.060),
    (0.084, 0.087, 0.089),
    (0.084, 0.087, 0.089),
    (0.112, 0.112, 0.117),
    (0.174, 0.170, 0.163),
)


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    generator: torch.Generator | int | None = None,
    pixel_scale: float | None = None,
) -> torch.Tensor:
    """
    Apply one ImageNet-C corruption at one severity to a batch of images.

    Args:
        images (`torch.Tensor`):
            Float tensor of shape `(batch, 3, height, width)` with RGB values in [0, 1].
        name (`str`):
            One of [`CORRUPTIONS`].
        severity (`int`):
            Severity from 1 (mildest) to 5.
        generator (`torch.Generator` or `int`, *optional*):
            Source of randomness: a generator (advanced in place) or an integer seed. `None` seeds a fresh generator
            from the operating system. The global random state is never used.
        pixel_scale (`float`, *optional*):
            Factor applied to the reference's pixel-length constants. Defaults to `min(height, width) / 224`, which
            gives the published parameters at 224x224; `1.0` keeps the published constants at any size.

    Returns:
        `torch.Tensor`: The corrupted batch, same shape, dtype and device as `images`, values in [0, 1].
    """
    if name not in _FUNCTIONS:
        raise ValueError(f"Unknown corruption {name!r}; valid names are: {', '.join(CORRUPTIONS)}.")
    if isinstance(severity, bool) or severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"Severity must be an integer from 1 to 5, got {severity!r}.")
    if not (isinstance(images, torch.Tensor) and images.is_floating_point()):
        raise ValueError("`images` must be a floating-point torch.Tensor.")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"`images` must have shape (batch, 3, height, width), got {tuple(images.shape)}.")
    if pixel_scale is None:
        pixel_scale = min(images.shape[-2:]) / _REFERENCE_SIDE
    if isinstance(generator, torch.Generator):
        rng = generator
    else:
        rng = torch.Generator()
        if generator is None:
            rng.seed()
        else:
            rng.manual_seed(int(generator))
    x = images.float().clamp(0, 1)
    out = _FUNCTIONS[name](x, severity - 1, rng, float(pixel_scale))
    return out.clamp(0, 1).to(images.dtype)


# ----------------------------------------------------------------------------------------------------------- helpers


def _rand(rng: torch.Generator, shape, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) draws of `shape` from `rng`, moved to the device of `like`."""
    return torch.rand(shape, generator=rng, device=rng.device).to(like.device)


def _randn(rng: torch.Generator, shape, like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws of `shape` from `rng`, moved to the device of `like`."""
    return torch.randn(shape, generator=rng, device=rng.device).to(like.device)


def _fold_index(index: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Map out-of-range indices into [0, size) with SciPy's `nearest` or `reflect` (d c b a | a b c d) extension."""
    if mode == "nearest":
        return np.clip(index, 0, size - 1)
    index = np.mod(index, 2 * size)
    return np.where(index >= size, 2 * size - 1 - index, index)


def _gaussian_matrix(size: int, sigma: float, truncate: float, mode: str) -> np.ndarray:
    """The (size, size) matrix of SciPy's 1-D `gaussian_filter1d` with the given boundary mode."""
    radius = int(truncate * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    matrix = np.zeros((size, size))
    rows = np.repeat(np.arange(size), taps.size)
    cols = _fold_index(np.arange(size)[:, None] + taps[None, :], size, mode).ravel()
    np.add.at(matrix, (rows, cols), np.tile(weights, size))
    return matrix


def _gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0, mode: str = "nearest") -> torch.Tensor:
    """Separable Gaussian blur over the last two axes, as `skimage.filters.gaussian` (SciPy `gaussian_filter`)."""
    rows = torch.as_tensor(_gaussian_matrix(x.shape[-2], sigma, truncate, mode), dtype=x.dtype, device=x.device)
    cols = torch.as_tensor(_gaussian_matrix(x.shape[-1], sigma, truncate, mode), dtype=x.dtype, device=x.device)
    return rows @ x @ cols.T


def _zoom_center(x: torch.Tensor, zoom: float, height: int, width: int) -> torch.Tensor:
    """SciPy `zoom(order=1)` of `x` by `zoom` (corner-aligned bilinear), then the centred `height` x `width` window."""
    out_h, out_w = round(x.shape[-2] * zoom), round(x.shape[-1] * zoom)
    x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=True)
    top, left = (out_h - height) // 2, (out_w - width) // 2
    return x[..., top : top + height, left : left + width]


def _clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Zoom into the centre of `x` by `zoom` >= 1, keeping its size (the script's `clipped_zoom`)."""
    height, width = x.shape[-2:]
    crop_h, crop_w = math.ceil(height / zoom), math.ceil(width / zoom)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return _zoom_center(x[..., top : top + crop_h, left : left + crop_w], zoom, height, width)


def _motion_blur(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """
    ImageMagick's `MotionBlurImage`: each pixel becomes a one-sided Gaussian-weighted mean of the pixels along a line
    at `angles` (degrees, one per image), edge pixels repeated beyond the border.

    Args:
        x (`torch.Tensor`): Batch of shape `(batch, channels, height, width)`.
        radius (`float`): Line length radius; the kernel has `2 * ceil(radius) + 1` taps.
        sigma (`float`): Standard deviation of the one-sided Gaussian weights, in pixels.
        angles (`torch.Tensor`): Float64 tensor of shape `(batch,)`.
    """
    batch, _, height, width = x.shape
    taps = 2 * math.ceil(radius) + 1
    steps = torch.arange(taps, dtype=torch.float64)
    kernel = torch.exp(-(steps**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).tolist()
    radians = torch.deg2rad(angles.double().cpu())
    point_y, point_x = taps * torch.sin(radians), taps * torch.cos(radians)
    hypot = torch.hypot(point_y, point_x)
    offset_y = torch.ceil(steps[None, :] * point_y[:, None] / hypot[:, None] - 0.5).long().tolist()
    offset_x = torch.ceil(steps[None, :] * point_x[:, None] / hypot[:, None] - 0.5).long().tolist()
    padded = F.pad(x, (taps, taps, taps, taps), mode="replicate")
    out = torch.zeros_like(x)
    for image in range(batch):
        accumulator = out[image]
        for i in range(taps):
            top, left = taps + offset_y[image][i], taps + offset_x[image][i]
            accumulator.add_(padded[image, :, top : top + height, left : left + width], alpha=kernel[i])
    return out


def _plasma_fractal(batch: int, size: int, decay: float, rng: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Diamond-square height maps of shape `(batch, size, size)` in [0, 1], `size` a power of two (the script's
    `plasma_fractal`, batched)."""
    heights = torch.zeros(batch, size, size, dtype=torch.float64, device=like.device)
    step, wibble = size, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(total.shape, generator=rng, dtype=torch.float64, device=rng.device).to(like.device)
        return total / 4 + wibble * wibble * (2 * noise - 1)

    while step >= 2:
        half = step // 2
        corners = heights[:, ::step, ::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        heights[:, half::step, half::step] = wibbled_mean(squares)
        centres, corners = heights[:, half::step, half::step], heights[:, ::step, ::step]
        heights[:, ::step, half::step] = wibbled_mean(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        heights[:, half::step, ::step] = wibbled_mean(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step //= 2
        wibble /= decay
    heights = heights - heights.amin(dim=(1, 2), keepdim=True)
    return (heights / heights.amax(dim=(1, 2), keepdim=True)).to(like.dtype)


def _disk_kernel(radius: int, alias_blur: float, pixel_scale: float) -> torch.Tensor:
    """The script's anti-aliased disk: a normalised binary disk smoothed by a small Gaussian (OpenCV
    `GaussianBlur`, reflect-101 border), with the radius and support scaled by `pixel_scale`. At a scale other than 1
    the disk is rasterised by pixel coverage (8x8 sub-samples) so that radii of a pixel or two still blur."""
    scaled = radius * pixel_scale
    half, ksize = (math.ceil(8 * pixel_scale), 3) if radius <= 8 else (math.ceil(scaled), 5)
    grid = np.arange(-half, half + 1, dtype=np.float64)
    sub = (np.arange(8) + 0.5) / 8 - 0.5 if pixel_scale != 1 else np.zeros(1)
    rows = grid[:, None, None, None] + sub[None, None, :, None]
    cols = grid[None, :, None, None] + sub[None, None, None, :]
    disk = (rows**2 + cols**2 <= scaled**2).mean(axis=(2, 3))
    disk /= disk.sum()
    taps = np.arange(ksize) - (ksize - 1) / 2
    gauss = np.exp(-(taps**2) / (2 * alias_blur**2))
    gauss /= gauss.sum()
    pad = ksize // 2
    padded = np.pad(disk, pad, mode="reflect")
    rows = sum(gauss[i] * padded[i : i + disk.shape[0]] for i in range(ksize))
    smoothed = sum(gauss[i] * rows[:, i : i + disk.shape[1]] for i in range(ksize))
    return torch.as_tensor(smoothed, dtype=torch.float32)


def _pil_box_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The (out_size, in_size) resampling matrix of PIL's BOX filter when shrinking (Pillow `precompute_coeffs`)."""
    scale = in_size / out_size
    support = 0.5 * scale
    matrix = np.zeros((out_size, in_size))
    for out_index in range(out_size):
        centre = (out_index + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), in_size)
        taps = (np.arange(first, last) - centre + 0.5) / scale
        weights = ((taps > -0.5) & (taps <= 0.5)).astype(np.float64)
        matrix[out_index, first:last] = weights / weights.sum()
    return matrix


def _local_copy_shuffle(x: torch.Tensor, delta: int, shifts: torch.Tensor) -> torch.Tensor:
    """
    One pass of the script's glass-blur loop, which visits `(h, w)` from `(H - delta, W - delta)` down to
    `(delta + 1, delta + 1)` in reverse raster order and sets `x[h, w] = x[h + dy, w + dx]` with `dx, dy` uniform
    integers in `[-delta, delta)`. A visited pixel whose source was visited before it takes that source's final value,
    otherwise its source's current value; the chains are followed by pointer jumping. `shifts` holds `(dx, dy)` for
    each visited pixel, shape `(batch, H - 2 * delta, W - 2 * delta, 2)`, rows and columns in increasing order.
    """
    batch, channels, height, width = x.shape
    rows = torch.arange(delta + 1, height - delta + 1, device=x.device)
    cols = torch.arange(delta + 1, width - delta + 1, device=x.device)
    if rows.numel() == 0 or cols.numel() == 0:
        return x
    shifts = shifts.to(x.device)
    targets = (rows[None, :, None] + shifts[..., 1]) * width + cols[None, None, :] + shifts[..., 0]
    here = (rows[:, None] * width + cols[None, :]).reshape(-1)
    targets = targets.reshape(batch, -1)
    visited = torch.zeros(height * width, dtype=torch.bool, device=x.device)
    visited[here] = True
    chained = visited[targets] & (targets > here[None, :])

    identity = torch.arange(height * width, device=x.device).expand(batch, -1)
    jump, source = identity.clone(), identity.clone()
    jump[:, here] = torch.where(chained, targets, here[None, :])
    source[:, here] = torch.where(chained, here[None, :], targets)
    for _ in range(max(1, math.ceil(math.log2(height * width))) + 1):
        next_jump = jump.gather(1, jump)
        if torch.equal(next_jump, jump):
            break
        jump = next_jump
    source = source.gather(1, jump)
    flat = x.reshape(batch, channels, -1)
    return flat.gather(2, source[:, None, :].expand(-1, channels, -1)).reshape(x.shape)


def _frost_texture(x: torch.Tensor, pixel_scale: float, rng: torch.Generator) -> torch.Tensor:
    """Procedural frost-on-glass textures, one per image, in [0, 1] (see the module docstring)."""
    batch, _, height, width = x.shape
    base = _plasma_fractal(batch, 2 ** math.ceil(math.log2(max(height, width, 2))), 1.8, rng, x)
    base = base[:, None, :height, :width]
    # Crystal streaks: sparse seeds motion-blurred along random directions, drawn at half resolution for speed.
    half_h, half_w = (height + 1) // 2, (width + 1) // 2
    crystals = torch.zeros(batch, 1, half_h, half_w, device=x.device)
    for radius, density in ((3, 0.02), (6, 0.01), (10, 0.004)):
        seeds = (_rand(rng, (batch, 1, half_h, half_w), x) < density).float()
        angles = _rand(rng, (batch,), x).double() * 360
        crystals += _motion_blur(seeds, max(radius * pixel_scale, 1.0), max(radius * pixel_scale / 2, 0.5), angles)
    crystals = F.interpolate(crystals, size=(height, width), mode="bilinear", align_corners=False)
    pattern = 0.5 * _standardise(base) + 0.85 * _standardise(crystals)
    pattern = _standardise(pattern)
    style = torch.randint(len(_FROST_MEAN), (batch,), generator=rng, device=rng.device).to(x.device)
    mean = torch.tensor(_FROST_MEAN, device=x.device)[style][..., None, None]
    std = torch.tensor(_FROST_STD, device=x.device)[style][..., None, None]
    return (mean + std * pattern).clamp(0, 1)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation per image over channels and pixels."""
    centred = x - x.mean(dim=(1, 2, 3), keepdim=True)
    return centred / centred.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)


def _affine_warp(x: torch.Tensor, matrices: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """Bilinear resampling of `x` at `matrices @ (col, row, 1)` (pixel coordinates, one 2x3 matrix per image), with
    reflect-101 borders when `align_corners` else half-sample reflection (SciPy `reflect`)."""
    batch, _, height, width = x.shape
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=x.dtype, device=x.device),
        torch.arange(width, dtype=x.dtype, device=x.device),
        indexing="ij",
    )
    points = torch.stack([cols, rows, torch.ones_like(rows)], dim=-1).reshape(-1, 3)
    source = (points @ matrices.transpose(1, 2)).reshape(batch, height, width, 2)
    return _sample(x, source[..., 0], source[..., 1], align_corners)


def _sample(x: torch.Tensor, source_x: torch.Tensor, source_y: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """Bilinear `grid_sample` at pixel coordinates `(source_x, source_y)` of shape `(batch, height, width)`."""
    height, width = x.shape[-2:]
    if align_corners:
        grid = torch.stack([2 * source_x / max(width - 1, 1) - 1, 2 * source_y / max(height - 1, 1) - 1], dim=-1)
    else:
        grid = torch.stack([(2 * source_x + 1) / width - 1, (2 * source_y + 1) / height - 1], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=align_corners)


# ------------------------------------------------------------------------------------------------------- corruptions


def _gaussian_noise(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    return x + _GAUSSIAN_NOISE[level] * _randn(rng, x.shape, x)


def _shot_noise(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    photons = _SHOT_NOISE[level]
    rates = (x * photons).to(rng.device)
    return torch.poisson(rates, generator=rng).to(x.device) / photons


def _impulse_noise(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    flipped = _rand(rng, x.shape, x) < _IMPULSE_NOISE[level]
    salt = (_rand(rng, x.shape, x) < 0.5).to(x.dtype)
    return torch.where(flipped, salt, x)


def _defocus_blur(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    kernel = _disk_kernel(*_DEFOCUS_BLUR[level], pixel_scale).to(x.device)
    half = kernel.shape[0] // 2
    padded = F.pad(x, (half, half, half, half), mode="reflect" if half < min(x.shape[-2:]) else "replicate")
    return F.conv2d(padded, kernel.expand(3, 1, -1, -1), groups=3)


def _glass_blur(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    sigma, delta, iterations = _GLASS_BLUR[level]
    sigma, delta = sigma * pixel_scale, max(1, round(delta * pixel_scale))
    x = torch.floor(_gaussian_blur(x, sigma).clamp(0, 1) * 255) / 255  # the script's np.uint8(... * 255)
    batch, _, height, width = x.shape
    for _ in range(iterations):
        shape = (batch, max(height - 2 * delta, 0), max(width - 2 * delta, 0), 2)
        x = _local_copy_shuffle(x, delta, torch.randint(-delta, delta, shape, generator=rng, device=rng.device))
    return _gaussian_blur(x, sigma)


def _motion_blur_corruption(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    radius, sigma = _MOTION_BLUR[level]
    angles = _rand(rng, (x.shape[0],), x).double() * 90 - 45
    return _motion_blur(x, radius * pixel_scale, sigma * pixel_scale, angles)


def _zoom_blur(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    zooms = _ZOOM_BLUR[level]
    total = x.clone()
    for zoom in zooms:
        total += _clipped_zoom(x, float(zoom))
    return total / (len(zooms) + 1)


def _snow(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    loc, scale, zoom, threshold, radius, sigma, mix = _SNOW[level]
    batch, _, height, width = x.shape
    zoom = zoom * pixel_scale
    # A centred crop of i.i.d. noise is i.i.d. noise of the crop's size: draw only the part that `clipped_zoom` keeps.
    noise_h, noise_w = math.ceil(height / zoom), math.ceil(width / zoom)
    layer = loc + scale * _randn(rng, (batch, 1, noise_h, noise_w), x)
    layer = _zoom_center(layer, zoom, height, width)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255) / 255  # the script's uint8 PNG handed to ImageMagick
    angles = _rand(rng, (batch,), x).double() * 90 - 135
    layer = _motion_blur(layer, radius * pixel_scale, sigma * pixel_scale, angles)
    layer = torch.round(layer * 255) / 255  # ImageMagick's 8-bit output
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]) * 1.5 + 0.5
    x = mix * x + (1 - mix) * torch.maximum(x, gray)
    return x + layer + layer.flip(-1, -2)


def _frost(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    image_weight, frost_weight = _FROST[level]
    return image_weight * x + frost_weight * _frost_texture(x, pixel_scale, rng)


def _fog(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    strength, decay = _FOG[level]
    batch, _, height, width = x.shape
    size = 2 ** math.ceil(math.log2(max(height, width, 2)))
    fractal = _plasma_fractal(batch, size, decay, rng, x)[:, None, :height, :width]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * fractal) * peak / (peak + strength)


def _brightness(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    # HSV value + c with hue and saturation kept is a rescaling of the RGB triple (grey for black pixels).
    value = x.amax(dim=1, keepdim=True)
    new_value = (value + _BRIGHTNESS[level]).clamp(max=1)
    return torch.where(value > 0, x * new_value / value.clamp_min(1e-12), new_value)


def _contrast(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * _CONTRAST[level] + means


def _elastic_transform(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    gain, sigma, jitter = _ELASTIC[level]
    gain, sigma, jitter = gain * pixel_scale**2, sigma * pixel_scale, jitter * pixel_scale
    batch, _, height, width = x.shape
    # Random affine: three points around the centre moved by up to `jitter` pixels (OpenCV getAffineTransform and
    # warpAffine, bilinear, reflect-101 border).
    centre_x, centre_y, side = float(width // 2), float(height // 2), float(min(height, width) // 3)
    before = torch.tensor(
        [[centre_x + side, centre_y + side], [centre_x + side, centre_y - side], [centre_x - side, centre_y - side]],
        dtype=torch.float64,
    )
    after = before + (_rand(rng, (batch, 3, 2), x).double().cpu() * 2 - 1) * jitter
    homogeneous = torch.cat([before, torch.ones(3, 1, dtype=torch.float64)], dim=1)
    forward = torch.linalg.solve(homogeneous, after).transpose(1, 2)  # (batch, 2, 3): before -> after
    square = torch.cat([forward, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(batch, 1, 3)], dim=1)
    inverse = torch.linalg.inv(square)[:, :2].to(device=x.device, dtype=x.dtype)
    x = _affine_warp(x, inverse, align_corners=True)
    # Smoothed random displacement field (SciPy map_coordinates, bilinear, half-sample reflection).
    fields = _rand(rng, (batch, 2, height, width), x) * 2 - 1
    fields = _gaussian_blur(fields.double(), sigma, truncate=3.0, mode="reflect").to(x.dtype) * gain
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=x.dtype, device=x.device),
        torch.arange(width, dtype=x.dtype, device=x.device),
        indexing="ij",
    )
    return _sample(x, cols + fields[:, 0], rows + fields[:, 1], align_corners=False)


def _pixelate(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    height, width = x.shape[-2:]
    small_h, small_w = int(height * _PIXELATE[level]), int(width * _PIXELATE[level])
    down_rows = torch.as_tensor(_pil_box_matrix(height, small_h), dtype=x.dtype, device=x.device)
    down_cols = torch.as_tensor(_pil_box_matrix(width, small_w), dtype=x.dtype, device=x.device)
    small = down_rows @ x @ down_cols.T
    # Enlarging with PIL's BOX filter picks the source pixel floor((i + 0.5) * in / out), as nearest-neighbour does.
    up_rows = ((torch.arange(height, dtype=torch.float64) + 0.5) * small_h / height).floor().long().to(x.device)
    up_cols = ((torch.arange(width, dtype=torch.float64) + 0.5) * small_w / width).floor().long().to(x.device)
    return small[..., up_rows, :][..., up_cols]


def _jpeg_compression(x: torch.Tensor, level: int, rng: torch.Generator, pixel_scale: float) -> torch.Tensor:
    pixels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=_JPEG_QUALITY[level])
        buffer.seek(0)
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    return torch.from_numpy(np.stack(decoded)).to(x.device).permute(0, 3, 1, 2).to(x.dtype) / 255


_FUNCTIONS = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur_corruption,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
}
