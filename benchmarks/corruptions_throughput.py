"""Images per second of each ImageNet-C corruption at 224x224, batch 32, next to the `imagecorruptions` reference.

Run: `python benchmarks/corruptions_throughput.py [--batch 32] [--size 224] [--threads N]`. Prints a Markdown table
and writes `benchmarks/results/corruptions_throughput.json`. The reference (`pip install "setuptools<81"
imagecorruptions==1.1.2`) runs per image on uint8 arrays, with the numpy 2 / scikit-image shims the tests use; it is
timed on the first `--reference-images` images of the batch only, to keep the run short.
"""

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hf_nullspace.robustness.corruptions import CORRUPTIONS, corrupt

RESULTS = Path(__file__).parent / "results" / "corruptions_throughput.json"


def _images(batch: int, size: int) -> torch.Tensor:
    """Real photographs from scikit-image when installed (cycled to fill the batch), else uniform noise."""
    try:
        from skimage import data

        arrays = [getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")]
        arrays = [np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)) for a in arrays]
        stacked = np.stack([arrays[i % len(arrays)] for i in range(batch)])
        return torch.from_numpy(stacked).permute(0, 3, 1, 2).float() / 255
    except ImportError:
        return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _reference():
    """`imagecorruptions.corruptions` patched for numpy 2 and scikit-image >= 0.19, or `None` if not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from imagecorruptions import corruptions as module
        import skimage.filters
    except ImportError:
        return None

    def gaussian(image, sigma, multichannel=False, **kwargs):
        return skimage.filters.gaussian(image, sigma=sigma, channel_axis=-1 if multichannel else None, **kwargs)

    module.gaussian = gaussian
    np.float_ = np.float64
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--reference-images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = _images(args.batch, args.size)
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()[: args.reference_images]
    reference = _reference()
    rows = []
    for name in CORRUPTIONS:
        corrupt(images[:2], name, 3, generator=0)  # warm-up
        start = time.perf_counter()
        for severity in range(1, 6):
            corrupt(images, name, severity, generator=severity)
        ours = 5 * args.batch / (time.perf_counter() - start)
        theirs = None
        if reference is not None:
            np.random.seed(0)
            start = time.perf_counter()
            for severity in range(1, 6):
                for p in pixels:
                    np.asarray(getattr(reference, name)(Image.fromarray(p), severity))
            theirs = 5 * len(pixels) / (time.perf_counter() - start)
        rows.append({"corruption": name, "ours_images_per_s": ours, "reference_images_per_s": theirs})

    print("| corruption | ours (img/s) | imagecorruptions (img/s) | ratio |\n|---|---:|---:|---:|")
    for row in rows:
        theirs = row["reference_images_per_s"]
        ratio = row["ours_images_per_s"] / theirs if theirs else None
        row["ratio"] = ratio
        cells = [f"{theirs:.1f}" if theirs else "n/a", f"{ratio:.1f}x" if ratio else "n/a"]
        print(f"| {row['corruption']} | {row['ours_images_per_s']:.1f} | {cells[0]} | {cells[1]} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "batch": args.batch,
        "size": args.size,
        "severities": [1, 2, 3, 4, 5],
        "reference_images": len(pixels),
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "note": "images/s averaged over the 5 severities; reference timed per image on uint8 arrays",
    }
    RESULTS.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
