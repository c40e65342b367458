"""Image transforms written with PIL, numpy and torch (torchvision is not a dependency).

Both transforms return float tensors of shape `(3, H, W)` with values in [0, 1], or normalised with the model's
mean and std when those are given. Geometry follows torchvision: `TrainTransform` is `RandomResizedCrop` +
`RandomHorizontalFlip`, `EvalTransform` is `Resize(size / crop_pct)` + `CenterCrop(size)`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

# Modes that PIL converts to RGB without loss of meaning: palettes, grey, colour spaces, bilevel.
_DIRECT_TO_RGB = {"RGB", "L", "P", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
# Modes with an alpha channel: "La" and "RGBa" hold premultiplied colour.
_WITH_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def _integer_to_uint8(values: np.ndarray, bits: int) -> np.ndarray:
    return np.round(values.astype(np.float64) * (255.0 / (2**bits - 1))).astype(np.uint8)


def to_rgb(image: Image.Image, background: tuple[int, int, int] | None = None) -> Image.Image:
    """Converts a PIL image of any well-defined mode to 8-bit RGB.

    Alpha is dropped by default (as `image.convert("RGB")` does in torchvision's `ImageFolder` loader and in
    transformers' image-classification example), so scores stay comparable with published evaluations. Pass
    `background` to composite transparent images onto a colour instead. 16-bit images (`I;16*`) are scaled by
    255 / 65535, never clipped at 255. 32-bit integer images (`I`) are scaled by the smallest bit depth of 8, 16 or
    32 that holds their largest value. Float images (`F`) with values in [0, 1] are scaled by 255, others are
    clipped to [0, 255].

    Args:
        image (`PIL.Image.Image`):
            The image to convert.
        background (`tuple[int, int, int]`, *optional*):
            RGB colour to composite images with an alpha channel onto, e.g. `(255, 255, 255)` for white. By default
            alpha is dropped.

    Returns:
        `PIL.Image.Image`: an image in mode `RGB` (the same object when it is already RGB).

    Raises:
        `ValueError`: for modes without a well-defined RGB meaning (e.g. multi-band float or `I;16S`).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _DIRECT_TO_RGB:
        if mode == "P" and "transparency" in image.info:
            return to_rgb(image.convert("RGBA"), background)
        return image.convert("RGB")
    if mode in _WITH_ALPHA:
        rgba = image.convert("RGBA") if mode in ("RGBa", "La", "PA", "LA") else image
        if background is None:
            return rgba.convert("RGB")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image).astype(np.uint32)
        return Image.fromarray(_integer_to_uint8(values, 16), mode="L").convert("RGB")
    if mode == "I":
        values = np.asarray(image).astype(np.int64).clip(min=0)
        peak = int(values.max()) if values.size else 0
        bits = next(b for b in (8, 16, 32) if peak <= 2**b - 1)
        return Image.fromarray(_integer_to_uint8(values, bits), mode="L").convert("RGB")
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.round(values.clip(0, 255)).astype(np.uint8), mode="L").convert("RGB")
    raise ValueError(
        f"Cannot convert a PIL image of mode {mode!r} to RGB: the conversion is not well defined. Supported modes: "
        f"{sorted(_DIRECT_TO_RGB | _WITH_ALPHA | _SIXTEEN_BIT | {'I', 'F'})}."
    )


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _to_tensor(image: Image.Image, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    array = np.asarray(to_rgb(image), dtype=np.uint8)
    pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)
    if mean is not None:
        pixels = (pixels - mean) / std
    return pixels


def _normalisation(
    image_mean: Sequence[float] | None, image_std: Sequence[float] | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if (image_mean is None) != (image_std is None):
        raise ValueError("Pass both `image_mean` and `image_std`, or neither.")
    if image_mean is None:
        return None, None
    mean = torch.tensor(image_mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(image_std, dtype=torch.float32).view(-1, 1, 1)
    if mean.numel() != 3 or std.numel() != 3:
        raise ValueError(f"`image_mean` and `image_std` need 3 values, got {list(image_mean)} and {list(image_std)}.")
    return mean, std


class TrainTransform:
    """Random resized crop and horizontal flip, as torchvision's `RandomResizedCrop` + `RandomHorizontalFlip`.

    Args:
        size (`int` or `tuple[int, int]`):
            Output size, an int for a square or `(height, width)`.
        scale (`tuple[float, float]`, *optional*, defaults to `(0.08, 1.0)`):
            Range of the crop area as a fraction of the image area.
        ratio (`tuple[float, float]`, *optional*, defaults to `(3 / 4, 4 / 3)`):
            Range of the crop aspect ratio (width / height), sampled log-uniformly.
        flip (`bool`, *optional*, defaults to `True`):
            Whether to flip horizontally with probability 0.5. Turn it off for data where a mirror image changes the
            class (digits, text).
        image_mean (`Sequence[float]`, *optional*):
            Per-channel mean to normalise with. Without it, pixels stay in [0, 1].
        image_std (`Sequence[float]`, *optional*):
            Per-channel std to normalise with.
        resample (`int`, *optional*, defaults to `PIL.Image.Resampling.BILINEAR`):
            PIL resampling filter.
        seed (`int`, *optional*):
            Seed of the transform's own `random.Random`, and of `rng_for`. Calls with an explicit `rng` do not touch
            it.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        resample: int = Image.Resampling.BILINEAR,
        seed: int | None = None,
    ):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"`scale` must satisfy 0 < min <= max <= 1, got {scale}.")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"`ratio` must satisfy 0 < min <= max, got {ratio}.")
        self.size = _pair(size)
        self.scale = scale
        self.ratio = ratio
        self.flip = flip
        self.resample = int(resample)
        self.mean, self.std = _normalisation(image_mean, image_std)
        self.seed = seed
        self.rng = random.Random(seed)
        self.epoch = 0

    def rng_for(self, key) -> random.Random:
        """A random source determined by (seed, epoch, key) alone: the augmentation of a row does not depend on the
        order rows are loaded in, so a run resumed mid-epoch (whose loader read ahead) draws the same crops."""
        return random.Random(f"{self.seed}:{self.epoch}:{key}")

    def crop_box(self, width: int, height: int, rng: random.Random | None = None) -> tuple[int, int, int, int]:
        """Samples a crop as torchvision's `RandomResizedCrop.get_params`: 10 tries, then a central fallback.

        Args:
            width (`int`): Image width.
            height (`int`): Image height.
            rng (`random.Random`, *optional*): Random source; the transform's own by default.

        Returns:
            `tuple[int, int, int, int]`: the crop as `(left, top, crop_width, crop_height)`, inside the image.
        """
        rng = rng or self.rng
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            crop_w = round(math.sqrt(target_area * aspect))
            crop_h = round(math.sqrt(target_area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                return rng.randint(0, width - crop_w), rng.randint(0, height - crop_h), crop_w, crop_h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            crop_w, crop_h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            crop_w, crop_h = round(height * self.ratio[1]), height
        else:
            crop_w, crop_h = width, height
        return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        """Crops, resizes, maybe flips and converts one image.

        Args:
            image (`PIL.Image.Image`): Input image of any mode `to_rgb` accepts.
            rng (`random.Random`, *optional*): Random source; the transform's own by default.

        Returns:
            `torch.Tensor`: float tensor `(3, height, width)`.
        """
        rng = rng or self.rng
        image = to_rgb(image)
        left, top, crop_w, crop_h = self.crop_box(*image.size, rng=rng)
        height, width = self.size
        image = image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), self.resample)
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _to_tensor(image, self.mean, self.std)


class EvalTransform:
    """Resize, then centre crop `size`: by default the shorter side to `floor(size / crop_pct)` (ImageNet's
    256 -> 224); with `resize_to`, a resize to exactly that `(height, width)`, aspect ratio not kept (what ViT's image
    processor does, "squash").

    Args:
        size (`int` or `tuple[int, int]`):
            Output size, an int for a square or `(height, width)`.
        crop_pct (`float`, *optional*, defaults to `0.875`):
            Fraction of the resized image kept by the centre crop, in (0, 1]. `1.0` resizes the shorter side to the
            output size and crops the longer one. Not used with `resize_to`.
        image_mean (`Sequence[float]`, *optional*):
            Per-channel mean to normalise with. Without it, pixels stay in [0, 1].
        image_std (`Sequence[float]`, *optional*):
            Per-channel std to normalise with.
        resample (`int`, *optional*, defaults to `PIL.Image.Resampling.BILINEAR`):
            PIL resampling filter.
        resize_to (`tuple[int, int]`, *optional*):
            Resize to exactly this `(height, width)` (no resize when the image has that size already), then centre
            crop `size` (no crop when equal).
        crop_rounding (`str`, *optional*, defaults to `"round"`):
            How the crop offset `(resized - size) / 2` is rounded: `"round"` (torchvision's `CenterCrop`) or `"floor"`
            (Hugging Face image processors).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        crop_pct: float = 0.875,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        resample: int = Image.Resampling.BILINEAR,
        resize_to: int | Sequence[int] | None = None,
        crop_rounding: str = "round",
    ):
        if not 0 < crop_pct <= 1:
            raise ValueError(f"`crop_pct` must be in (0, 1], got {crop_pct}.")
        if crop_rounding not in ("round", "floor"):
            raise ValueError(f"`crop_rounding` must be 'round' or 'floor', got {crop_rounding!r}.")
        self.size = _pair(size)
        self.crop_pct = crop_pct
        self.resample = int(resample)
        self.resize_to = None if resize_to is None else _pair(resize_to)
        if self.resize_to is not None and (self.resize_to[0] < self.size[0] or self.resize_to[1] < self.size[1]):
            raise ValueError(f"`resize_to` {self.resize_to} is smaller than the output size {self.size}.")
        self.crop_rounding = crop_rounding
        self.mean, self.std = _normalisation(image_mean, image_std)

    @property
    def geometry(self) -> tuple:
        """What decides the output pixels apart from normalisation (transforms with equal geometry agree)."""
        return (
            self.size,
            self.crop_pct if self.resize_to is None else None,
            self.resize_to,
            self.resample,
            self.crop_rounding,
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The `(width, height)` after the resize step (torchvision's `Resize(int)`, or `resize_to`)."""
        if self.resize_to is not None:
            return self.resize_to[1], self.resize_to[0]
        short = math.floor(min(self.size) / self.crop_pct)
        if width <= height:
            return short, int(short * height / width)
        return int(short * width / height), short

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        """Resizes, centre crops and converts one image (`rng` is accepted for symmetry and unused).

        Args:
            image (`PIL.Image.Image`): Input image of any mode `to_rgb` accepts.

        Returns:
            `torch.Tensor`: float tensor `(3, height, width)`.
        """
        image = to_rgb(image)
        new_w, new_h = self.resized_size(*image.size)
        if (new_w, new_h) != image.size:
            image = image.resize((new_w, new_h), self.resample)
        height, width = self.size
        if self.crop_rounding == "floor":
            top, left = (new_h - height) // 2, (new_w - width) // 2
        else:
            top, left = int(round((new_h - height) / 2.0)), int(round((new_w - width) / 2.0))
        if (new_w, new_h) != (width, height):
            image = image.crop((left, top, left + width, top + height))
        return _to_tensor(image, self.mean, self.std)


def precropped_transform(transform: EvalTransform) -> EvalTransform:
    """The eval transform for a benchmark stored already resized and centre-cropped to `image_size` (ImageNet-C,
    DAmageNet, Stylized-ImageNet: 224x224): no second resize-and-crop. Images of the model's input size pass
    unchanged; otherwise they are resized once, straight to the input size (the content is already framed)."""
    return EvalTransform(
        transform.size,
        crop_pct=1.0,
        resample=transform.resample,
        resize_to=transform.size,
        image_mean=None if transform.mean is None else transform.mean.flatten().tolist(),
        image_std=None if transform.std is None else transform.std.flatten().tolist(),
    )


def _size_entry(size, key: str):
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def transforms_from_image_processor(
    processor, normalize: bool = True, flip: bool = True, crop_pct: float | None = None, seed: int | None = None
) -> tuple[TrainTransform, EvalTransform]:
    """Builds the train and eval transforms matching an HF image processor's size, geometry and normalisation.

    The output size is the processor's `crop_size` when it centre crops, else its `size`. The eval transform does
    what the processor does:

    - `size={"height", "width"}` (ViT, DeiT, BEiT): resize to exactly that size, aspect ratio not kept ("squash"),
      then centre crop `crop_size` if the processor crops;
    - `size={"shortest_edge"}` with `crop_pct` (ConvNeXt): below 384, the shorter side to `shortest_edge / crop_pct`
      and a centre crop of `shortest_edge`; from 384, a squash to `shortest_edge`;
    - `size={"shortest_edge"}` (BiT, CLIP-like): the shorter side to `shortest_edge`, then the centre crop;
    - no size but `patch_size` and `max_num_patches` (SigLIP2, which cuts each image into at most that many patches,
      keeping its aspect ratio): a squash to the largest square of whole patches that fits, `patch_size` x
      `floor(sqrt(max_num_patches))` pixels a side (square images get what the processor gives them).

    Crop offsets are floored, as Hugging Face processors do. Passing `crop_pct` instead gives the torchvision
    recipe `Resize(size / crop_pct)` + `CenterCrop(size)` whatever the processor does.

    Args:
        processor (`BaseImageProcessor`):
            e.g. `AutoImageProcessor.from_pretrained(...)` (`ViTImageProcessorPil` without torchvision).
        normalize (`bool`, *optional*, defaults to `True`):
            Normalise with `image_mean`/`image_std` when the processor has `do_normalize`; otherwise pixels stay in
            [0, 1] (normalisation then belongs to the model wrapper).
        flip (`bool`, *optional*, defaults to `True`):
            Random horizontal flip in the train transform.
        crop_pct (`float`, *optional*):
            Use the torchvision recipe with this crop fraction instead of the processor's geometry.
        seed (`int`, *optional*):
            Seed of the train transform's random source.

    Returns:
        `tuple[TrainTransform, EvalTransform]`
    """
    size = getattr(processor, "size", None)
    crop_size = getattr(processor, "crop_size", None)
    centre_crops = bool(getattr(processor, "do_center_crop", False)) and crop_size is not None
    do_resize = getattr(processor, "do_resize", True) is not False

    def height_width(entry) -> tuple[int, int] | None:
        height, width = _size_entry(entry, "height"), _size_entry(entry, "width")
        return (int(height), int(width)) if height and width else None

    shortest = _size_entry(size, "shortest_edge")
    exact = height_width(size)
    output = height_width(crop_size) if centre_crops else None
    output = output or exact or ((int(shortest), int(shortest)) if shortest else None)
    max_num_patches = getattr(processor, "max_num_patches", None)
    if output is None and max_num_patches and getattr(processor, "patch_size", None):
        side = int(processor.patch_size) * math.isqrt(int(max_num_patches))
        exact = output = (side, side)
    if output is None:
        raise ValueError(f"Cannot read an output size from the image processor's size={size!r}, crop={crop_size!r}.")

    mean = std = None
    if normalize and getattr(processor, "do_normalize", False):
        mean, std = processor.image_mean, processor.image_std
    resample = getattr(processor, "resample", None)
    resample = Image.Resampling.BILINEAR if resample is None else int(resample)
    common = dict(image_mean=mean, image_std=std, resample=resample)

    if crop_pct is not None:
        evaluation = EvalTransform(output, crop_pct=crop_pct, **common)
    elif not do_resize:
        evaluation = EvalTransform(output, crop_pct=1.0, crop_rounding="floor", **common)
    elif exact is not None:
        evaluation = EvalTransform(output, resize_to=exact, crop_rounding="floor", **common)
    else:
        processor_crop_pct = getattr(processor, "crop_pct", None)
        if processor_crop_pct is not None and not centre_crops:  # ConvNeXt's rule
            if shortest >= 384:
                evaluation = EvalTransform(output, resize_to=output, crop_rounding="floor", **common)
            else:
                evaluation = EvalTransform(output, crop_pct=processor_crop_pct, crop_rounding="floor", **common)
        else:
            fraction = min(1.0, min(output) / int(shortest))
            evaluation = EvalTransform(output, crop_pct=fraction, crop_rounding="floor", **common)
    train = TrainTransform(output, flip=flip, seed=seed, **common)
    return train, evaluation
