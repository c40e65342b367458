"""Bounded memory: peak RSS of a streamed robustness evaluation at 1,000 vs 10,000 images.

Writes a local parquet of N smooth random 32x32 PNG images (row groups of 100, as on the Hub), then, in a fresh process
per size, streams it through `evaluate_robustness` (clean + FGSM) and reports the peak RSS. Memory should stay flat as
the number of images grows. JSON to `benchmarks/results/eval_memory.json`.

    python benchmarks/eval_memory.py
"""

import argparse
import io
import json
import os
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_data(path: str, num: int) -> str:
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    if os.path.isdir(path):
        return path
    rng = np.random.default_rng(0)

    def rows():
        for i in range(num):
            image = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            PILImage.fromarray(image).resize((32, 32), PILImage.BILINEAR).save(buffer, format="PNG")
            yield {"image": {"bytes": buffer.getvalue(), "path": None}, "label": int(i % 10)}

    features = Features({"image": Image(), "label": ClassLabel(num_classes=10)})
    os.makedirs(path, exist_ok=True)
    # row groups of 100 rows, as the Hub writes image parquet: datasets streams a parquet file one row group at a
    # time, so a file written as one huge row group costs memory in proportion to its size, whatever reads it
    Dataset.from_generator(rows, features=features).to_parquet(os.path.join(path, "test.parquet"), batch_size=100)
    return path


def worker(data: str) -> dict:
    from hf_nullspace.data import spec_from_source
    from hf_nullspace.data.bundled import BUNDLED_MODEL
    from hf_nullspace.robustness import Evaluation, Suite, evaluate_robustness

    suite = Suite(
        "memory",
        [
            Evaluation("clean"),
            Evaluation("fgsm@0.03", group="attack", attack="fgsm", params=(("epsilon", 0.03),)),
        ],
        spec_from_source(data, name="synthetic", num_classes=10),
    )
    report = evaluate_robustness(BUNDLED_MODEL, suite=suite, batch_size=100, progress=False)
    samples = report.to_dict()["models"][0]["results"][0]["num_samples"]
    return {"images": samples, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workdir", default="/tmp/hf_nullspace_eval_memory")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "eval_memory.json"))
    parser.add_argument("--worker")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    rows = []
    for size in args.sizes:
        data = write_data(os.path.join(args.workdir, f"n{size}"), size)
        out = subprocess.run([sys.executable, __file__, "--worker", data], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{rows[-1]['images']:>6} images: peak RSS {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
    result = {"rows": rows, "ratio_largest_to_smallest": rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]}
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"peak RSS ratio {result['ratio_largest_to_smallest']:.3f}; written to {args.output}")


if __name__ == "__main__":
    main()
