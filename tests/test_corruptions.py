"""Tests for the on-the-fly ImageNet-C corruptions, with `imagecorruptions` 1.1.2 as the reference where installed."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hf_nullspace.robustness import corruptions
from hf_nullspace.robustness.corruptions import CORRUPTIONS, corrupt

RANDOM = {
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "snow",
    "frost",
    "fog",
    "elastic_transform",
}


def _sample_images(size: int) -> torch.Tensor:
    """Four real photographs from scikit-image when it is installed, else smooth synthetic scenes with edges."""
    try:
        from skimage import data

        arrays = [getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")]
    except ImportError:
        generator = np.random.default_rng(0)
        rows, cols = np.mgrid[0:256, 0:256] / 256
        arrays = []
        for _ in range(4):
            phase = generator.uniform(0, 2 * np.pi, size=(3, 1, 1))
            scene = 0.5 + 0.3 * np.sin(6 * rows + 4 * cols + phase) * np.cos(5 * cols - phase)
            scene += 0.2 * ((rows - 0.5) ** 2 + (cols - 0.4) ** 2 < generator.uniform(0.02, 0.06))
            arrays.append((np.clip(scene, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8))
    resized = [np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)) for a in arrays]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def images64():
    return _sample_images(64)


def _ssim_distance(clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """1 - SSIM on grey levels with a 7x7 box window, one value per image."""
    a, b = clean.mean(1, keepdim=True), corrupted.mean(1, keepdim=True)
    mean_a, mean_b = F.avg_pool2d(a, 7, 1), F.avg_pool2d(b, 7, 1)
    var_a = F.avg_pool2d(a * a, 7, 1) - mean_a**2
    var_b = F.avg_pool2d(b * b, 7, 1) - mean_b**2
    cov = F.avg_pool2d(a * b, 7, 1) - mean_a * mean_b
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))
    return 1 - ssim.mean(dim=(1, 2, 3))


def test_names_in_standard_order():
    from hf_nullspace.data.imagenet_c import ALEXNET_ERR

    assert CORRUPTIONS == tuple(ALEXNET_ERR) and len(CORRUPTIONS) == 15  # the order of the published AlexNet table


def test_invalid_arguments(images64):
    with pytest.raises(ValueError, match="gaussian_noise, shot_noise"):
        corrupt(images64, "speckle_noise", 1)
    for severity in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="Severity"):
            corrupt(images64, "fog", severity)
    with pytest.raises(ValueError, match="shape"):
        corrupt(images64[0], "fog", 1)
    with pytest.raises(ValueError, match="floating-point"):
        corrupt((images64 * 255).to(torch.uint8), "fog", 1)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_range_and_determinism(name, images64):
    x = images64[:2]
    state = torch.get_rng_state()
    for severity in range(1, 6):
        out = corrupt(x, name, severity, generator=0)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert torch.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, x)
        assert torch.equal(out, corrupt(x, name, severity, generator=torch.Generator().manual_seed(0)))
        if name in RANDOM:
            assert not torch.equal(out, corrupt(x, name, severity, generator=1))
    assert torch.equal(state, torch.get_rng_state()), "the global RNG must not be used"
    # Other sizes and dtypes work, at the default and at the published pixel scale.
    odd = F.interpolate(x, size=(41, 57), mode="area").double()
    for pixel_scale in (None, 1.0):
        out = corrupt(odd, name, 5, generator=0, pixel_scale=pixel_scale)
        assert out.shape == odd.shape and out.dtype == torch.float64
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_is_monotonic(name):
    """1 - SSIM from the clean image grows with severity (5% slack), except where the published parameters are not
    ordered: glass blur's iterations go 2, 1, 3, 2, 2, so it is left out; elastic_transform's severities 1-2 are a
    large random affine warp and 3-5 a small warp plus local displacement, so each regime is checked on its own."""
    if name == "glass_blur":
        pytest.skip("glass_blur's published severities are not ordered in distortion")
    x = _sample_images(96)
    distance = [_ssim_distance(x, corrupt(x, name, s, generator=0)).mean().item() for s in range(1, 6)]
    chains = ((1, 2), (3, 4, 5)) if name == "elastic_transform" else ((1, 2, 3, 4, 5),)
    for chain in chains:
        for low, high in zip(chain, chain[1:]):
            assert distance[high - 1] >= 0.95 * distance[low - 1], (name, distance)


# ---------------------------------------------------------------------------------------------- reference agreement


@pytest.fixture(scope="module")
def reference():
    """`imagecorruptions.corruptions`, shimmed for numpy 2 (`np.float_`) and scikit-image >= 0.19 (`multichannel`)."""
    pytest.importorskip("skimage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = pytest.importorskip("imagecorruptions.corruptions")
    import skimage.filters

    def gaussian(image, sigma, multichannel=False, **kwargs):
        return skimage.filters.gaussian(image, sigma=sigma, channel_axis=-1 if multichannel else None, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(module, "gaussian", gaussian)
    patch.setattr(np, "float_", np.float64, raising=False)
    yield module
    patch.undo()


def _uint8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _from_reference(outputs) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(o, dtype=np.float64) for o in outputs])).permute(0, 3, 1, 2) / 255


@pytest.mark.parametrize(
    "name, atol",
    [
        ("brightness", 1e-5),
        ("contrast", 1e-5),
        ("defocus_blur", 1e-5),
        ("zoom_blur", 1e-5),
        ("jpeg_compression", 1e-6),
        ("pixelate", 1 / 255 + 1e-5),  # PIL rounds its BOX average to uint8; ours stays float
    ],
)
def test_deterministic_corruptions_match_reference(reference, images64, name, atol):
    pixels = _uint8(images64)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    for severity in range(1, 6):
        expected = _from_reference(getattr(reference, name)(Image.fromarray(p), severity) for p in pixels)
        actual = corrupt(x, name, severity, pixel_scale=1.0).double()
        torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def test_motion_blur_matches_reference_for_the_same_angle(reference, images64):
    pixels = _uint8(images64)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    for severity in range(1, 6):
        expected, angles = [], []
        for seed, p in enumerate(pixels):
            np.random.seed(seed)
            expected.append(reference.motion_blur(Image.fromarray(p), severity))
            np.random.seed(seed)
            angles.append(np.random.uniform(-45, 45))
        radius, sigma = corruptions._MOTION_BLUR[severity - 1]
        actual = corruptions._motion_blur(x, radius, sigma, torch.tensor(angles, dtype=torch.float64))
        torch.testing.assert_close(actual.double(), _from_reference(expected), atol=1e-5, rtol=0)


def test_glass_blur_matches_reference_for_the_same_shifts(reference):
    """The reference's per-pixel "swap" on NumPy views is a copy; the vectorised version reproduces it exactly."""
    x = _sample_images(40)
    pixels = _uint8(x)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).double() / 255
    for severity in range(1, 6):
        sigma, delta, iterations = corruptions._GLASS_BLUR[severity - 1]
        side = 40 - 2 * delta
        expected, shifts = [], []
        for seed, p in enumerate(pixels):
            np.random.seed(seed)
            expected.append(reference.glass_blur(Image.fromarray(p), severity))
            np.random.seed(seed)  # the same (dx, dy) draws, reordered from the reference's reverse raster order
            drawn = np.random.randint(-delta, delta, size=(iterations, side, side, 2))[:, ::-1, ::-1]
            shifts.append(torch.from_numpy(drawn.copy()))
        shifts = torch.stack(shifts, dim=1)
        actual = torch.floor(corruptions._gaussian_blur(x, sigma).clamp(0, 1) * 255) / 255
        for iteration in range(iterations):
            actual = corruptions._local_copy_shuffle(actual, delta, shifts[iteration])
        actual = corruptions._gaussian_blur(actual, sigma).clamp(0, 1)
        torch.testing.assert_close(actual, _from_reference(expected), atol=1e-9, rtol=0)


def _published_elastic_transform(image, severity):
    """`elastic_transform` of make_imagenet_c.py (hendrycks/robustness, Apache-2.0), which `imagecorruptions`
    replaced by a different transform; transcribed here as the oracle."""
    import cv2
    from scipy.ndimage import map_coordinates
    from skimage.filters import gaussian

    gain, sigma, jitter = corruptions._ELASTIC[severity - 1]
    image = np.array(image, dtype=np.float32) / 255.0
    shape = image.shape
    centre = np.float32(shape[:2]) // 2
    side = min(shape[:2]) // 3
    before = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    after = before + np.random.uniform(-jitter, jitter, size=before.shape).astype(np.float32)
    warp = cv2.getAffineTransform(before, after)
    image = cv2.warpAffine(image, warp, shape[1::-1], borderMode=cv2.BORDER_REFLECT_101)
    dx = gaussian(np.random.uniform(-1, 1, size=shape[:2]), sigma, mode="reflect", truncate=3) * gain
    dy = gaussian(np.random.uniform(-1, 1, size=shape[:2]), sigma, mode="reflect", truncate=3) * gain
    cols, rows, channels = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = (rows + dy[..., None]).reshape(-1), (cols + dx[..., None]).reshape(-1), channels.reshape(-1)
    return np.clip(map_coordinates(image, indices, order=1, mode="reflect").reshape(shape), 0, 1) * 255


@pytest.mark.parametrize(
    "name, draws, tolerance",
    [
        ("gaussian_noise", 2, 0.15),
        ("shot_noise", 2, 0.15),
        ("impulse_noise", 2, 0.15),
        ("snow", 6, 0.15),
        ("fog", 6, 0.15),
        ("elastic_transform", 6, 0.15),
        ("frost", 10, 0.2),  # each draw's colour is one of five photographs' (or texture styles'): high variance
    ],
)
def test_random_corruptions_match_reference_statistically(reference, images64, name, draws, tolerance):
    """Mean squared distortion from the clean image within 15% (frost: 20%) of the reference's at every severity."""
    pixels = _uint8(images64)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    function = _published_elastic_transform if name == "elastic_transform" else getattr(reference, name)
    batch = x.repeat(2 * draws, 1, 1, 1)
    for severity in range(1, 6):
        distortions = []
        for draw in range(draws):
            for index, p in enumerate(pixels):
                np.random.seed(100 * draw + index)
                out = np.asarray(function(Image.fromarray(p), severity), dtype=np.float64) / 255
                distortions.append(((out - p / 255.0) ** 2).mean())
        ours = ((corrupt(batch, name, severity, generator=0, pixel_scale=1.0) - batch) ** 2).mean().item()
        ratio = ours / np.mean(distortions)
        assert abs(ratio - 1) < tolerance, (name, severity, ratio)
