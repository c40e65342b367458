"""Noise synthesis cost: updates to reach epsilon and wall time, on the bundled ViT and real MNIST batches.

For each (epsilon, initial limit) and each of several batches and seeds: updates taken, whether epsilon was reached,
the final statistic, the noise norm and the seconds, with the per-update time. Side by side in one run, the random
baseline on the same batches. JSON to `benchmarks/results/synthesis.json`.

    python benchmarks/synthesis.py
"""

import argparse
import json
import os
import statistics
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batches(count: int, size: int):
    from hf_nullspace.data import SkipCounter, collate_fn, load_image_dataset, prepare_dataset
    from hf_nullspace.data.bundled import BUNDLED_MNIST
    from hf_nullspace.data.transforms import EvalTransform

    dataset = load_image_dataset(BUNDLED_MNIST, split="train")
    transform = EvalTransform(32, 1.0, [0.5] * 3, [0.5] * 3)
    dataset = prepare_dataset(dataset.select(range(count * size)), transform, "image", "label", 10, SkipCounter())
    return [
        collate_fn(dataset.__getitems__(list(range(i * size, (i + 1) * size))))["pixel_values"] for i in range(count)
    ]


def main():
    from hf_nullspace.data.bundled import BUNDLED_MODEL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=BUNDLED_MODEL)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--init-limits", type=float, nargs="+", default=[3.0, 6.0])
    parser.add_argument("--max-updates", type=int, default=3000)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "synthesis.json"))
    args = parser.parse_args()

    from transformers import AutoModelForImageClassification

    from hf_nullspace import NullspaceArguments, synthesize_noise

    model = AutoModelForImageClassification.from_pretrained(args.model).eval()
    data = batches(args.batches, args.batch_size)
    with torch.no_grad():
        forward = time.perf_counter()
        model(pixel_values=data[0])
        forward = time.perf_counter() - forward
    rows = []
    for epsilon in args.epsilons:
        for limit in args.init_limits:
            for mode in ("nullspace", "random"):
                if mode == "random" and limit != args.init_limits[0]:
                    continue  # the random baseline starts from N(0, 1): no limit
                records = []
                for pixel_values in data:
                    for seed in range(args.seeds):
                        nullspace_args = NullspaceArguments(nullspace_mode=mode, noise_epsilon=epsilon,
                                                            noise_init_limit=limit, noise_max_updates=args.max_updates)  # fmt: skip
                        start = time.perf_counter()
                        result = synthesize_noise(model, pixel_values, nullspace_args,
                                                  generator=torch.Generator().manual_seed(seed))  # fmt: skip
                        records.append({**result.summary(), "seconds": time.perf_counter() - start})
                updates = [r["updates"] for r in records]
                seconds = [r["seconds"] for r in records]
                row = {
                    "mode": mode,
                    "epsilon": epsilon,
                    "init_limit": limit if mode == "nullspace" else None,
                    "reached": sum(r["reached"] for r in records) / len(records),
                    "updates_median": statistics.median(updates),
                    "updates_max": max(updates),
                    "seconds_median": statistics.median(seconds),
                    "seconds_per_update": sum(seconds) / max(sum(updates), 1),
                    "norm_median": statistics.median(r["norm"] for r in records),
                    "runs": records,
                }
                rows.append(row)
                print(f"{mode:9s} eps={epsilon:<5g} limit={row['init_limit']!s:5s} reached {row['reached']:.0%} "
                      f"updates {row['updates_median']:.0f} (max {row['updates_max']}) "
                      f"{row['seconds_median']:.3f} s  norm {row['norm_median']:.1f}", flush=True)  # fmt: skip
    result = {
        "device": f"cpu, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "model": os.path.basename(args.model),
        "batch_size": args.batch_size,
        "clean_forward_seconds": forward,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"Written to {args.output}")


if __name__ == "__main__":
    main()
