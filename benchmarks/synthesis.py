"""Noise synthesis: updates to epsilon, wall time, norms and held-out statistics on both bundled ViTs and real batches.

For each bundled model (MNIST digits; colour photo and texture patches) and each setting (the automatic start with
several `noise_init_factor`s, the authors' fixed U(-limit, limit) starts, the random baseline), over several batches
and seeds: updates taken, whether epsilon was reached by the updates, whether the fallback had to shrink the noise,
the statistic on the synthesis batch and on the *next* batch (held out), the noise norm and its ratio to the
patch-embedding norm, and the seconds. A warm-start chain (each synthesis starting from the previous noise, on the
next batch) is measured against fresh starts on the same batches. The model is fixed here (no finetuning between
syntheses); the reproduction benchmark measures warm starts during real training.

`--synthesis-data stream` adds the authors' variant (`noise_synthesis_data="stream"`): each synthesis runs on a
stream of batches (a random order of a pool of `--stream-batches` batches, re-drawn per pass, starting at a different
batch each time), one batch per update with the stop statistic on each new batch before its update, and its held-out
statistic is on the next batch of the stream (one it was never updated on; `heldout_fresh` says whether that batch
was not used by the synthesis at all). The current-batch variant's held-out batch is the next batch of the pool.
JSON to `benchmarks/results/synthesis.json`.

    python benchmarks/synthesis.py
    python benchmarks/synthesis.py --synthesis-data batch stream --epsilons 0.03 --init-factors 2 --init-limits \
        --output benchmarks/results/synthesis_stream.json
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def batches(dataset_dir: str, count: int, size: int):
    from hf_nullspace.data import SkipCounter, collate_fn, load_image_dataset, prepare_dataset
    from hf_nullspace.data.transforms import EvalTransform

    dataset = load_image_dataset(dataset_dir, split="train")
    transform = EvalTransform(32, 1.0, [0.5] * 3, [0.5] * 3)
    dataset = prepare_dataset(dataset.select(range(count * size)), transform, "image", "label", 10, SkipCounter())
    return [
        collate_fn(dataset.__getitems__(list(range(i * size, (i + 1) * size))))["pixel_values"] for i in range(count)
    ]


def measure(model, data, nullspace_args, seeds, warm_start=False):
    from hf_nullspace import synthesize_noise

    records = []
    for seed in range(seeds):
        previous = None
        for i, pixel_values in enumerate(data):
            start = time.perf_counter()
            result = synthesize_noise(
                model,
                pixel_values,
                nullspace_args,
                generator=torch.Generator().manual_seed(seed),
                heldout=data[(i + 1) % len(data)],
                init=previous,
            )
            seconds = time.perf_counter() - start
            if warm_start:
                previous = result.noise
            records.append({**result.summary(), "seconds": seconds, "batch": i, "seed": seed})
    return records


def stream(pool, start: int, seed: int, used: list):
    """Batches of `pool` from `start` on, a random order per pass (seeded), endlessly; appends each index to `used`."""
    generator = torch.Generator().manual_seed(seed)
    order = [start] + [i for i in torch.randperm(len(pool), generator=generator).tolist() if i != start]
    while True:
        for i in order:
            used.append(i)
            yield pool[i]
        order = torch.randperm(len(pool), generator=generator).tolist()


def measure_stream(model, pool, nullspace_args, seeds, starts, unseen_batches):
    """The stream variant: each synthesis on a stream over `pool`; held out: the next batch of that stream, and the
    next `unseen_batches` batches pooled (an estimate of the statistic on the data rather than on one batch)."""
    from hf_nullspace import synthesize_noise
    from hf_nullspace.synthesis import noise_statistic

    records = []
    for seed in range(seeds):
        for i in range(starts):
            used = []
            batches = stream(pool, (i * 7) % len(pool), seed * 1000 + i, used)
            start = time.perf_counter()
            result = synthesize_noise(model, batches, nullspace_args, generator=torch.Generator().manual_seed(seed))
            seconds = time.perf_counter() - start
            unseen = [next(batches) for _ in range(unseen_batches)]
            heldout = noise_statistic(model, unseen[0], result.noise, nullspace_args)
            pooled = noise_statistic(model, unseen, result.noise, nullspace_args)
            record = {**result.summary(), "heldout_statistic": heldout, "seconds": seconds, "batch": i, "seed": seed}
            record["heldout_pooled_statistic"] = pooled
            first_unseen = len(used) - unseen_batches
            record.update(batches_drawn=first_unseen, heldout_fresh=used[first_unseen] not in used[:first_unseen])
            records.append(record)
    return records


def row(label, dataset, epsilon, records, **extra):
    updates = [r["updates"] for r in records]
    seconds = [r["seconds"] for r in records]
    return {
        "dataset": dataset,
        "setting": label,
        "epsilon": epsilon,
        **extra,
        "reached": sum(r["reached"] for r in records) / len(records),
        "fallback": sum(r.get("fallback", False) for r in records) / len(records),
        "inside": sum(r["inside"] for r in records) / len(records),
        "updates_median": statistics.median(updates),
        "updates_max": max(updates),
        "seconds_median": statistics.median(seconds),
        "statistic_median": statistics.median(r["statistic"] for r in records),
        "heldout_statistic_median": statistics.median(r["heldout_statistic"] for r in records),
        "heldout_inside": sum(r["heldout_statistic"] < epsilon for r in records) / len(records),
        **(
            {
                "heldout_pooled_statistic_median": statistics.median(r["heldout_pooled_statistic"] for r in records),
                "heldout_pooled_inside": sum(r["heldout_pooled_statistic"] < epsilon for r in records) / len(records),
            }
            if "heldout_pooled_statistic" in records[0]
            else {}
        ),
        "norm_median": statistics.median(r["norm"] for r in records),
        "norm_ratio_median": statistics.median(r["norm_ratio"] for r in records),
        "runs": records,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "textures"])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--init-factors", type=float, nargs="+", default=[1.5, 2.0, 4.0])
    parser.add_argument("--init-limits", type=float, nargs="*", default=[3.0, 6.0])
    parser.add_argument("--synthesis-data", nargs="+", default=["batch"], choices=["batch", "stream"])
    parser.add_argument("--stream-batches", type=int, default=32, help="batches in the stream variant's pool")
    parser.add_argument(
        "--stop-batches", type=int, nargs="+", default=[1], help="noise_stop_batches values (stream variant)"
    )
    parser.add_argument("--unseen-batches", type=int, default=8, help="stream variant: pooled held-out batches")
    parser.add_argument("--skip-batch", action="store_true", help="measure the stream variant only")
    parser.add_argument("--max-updates", type=int, default=3000)
    parser.add_argument("--workdir", default="/tmp/hf_nullspace_reproduction")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "synthesis.json"))
    args = parser.parse_args()

    from reproduction import DATASETS, dataset_dir
    from transformers import AutoModelForImageClassification

    from hf_nullspace import NullspaceArguments

    rows, forward = [], {}
    for dataset in args.datasets:
        model = AutoModelForImageClassification.from_pretrained(DATASETS[dataset]["model"]).eval()
        count = max(args.batches, args.stream_batches if "stream" in args.synthesis_data else 0)
        pool = batches(dataset_dir(dataset, args.workdir), count, args.batch_size)
        data = pool[: args.batches]
        with torch.no_grad():
            start = time.perf_counter()
            model(pixel_values=data[0])
            forward[dataset] = time.perf_counter() - start
        for epsilon in args.epsilons:
            settings = [(f"auto x{f:g}", dict(noise_init_factor=f), {"init_factor": f}) for f in args.init_factors]
            settings += [
                (f"fixed U(-{lim:g}, {lim:g})", dict(noise_init_limit=lim), {"init_limit": lim})
                for lim in args.init_limits
            ]
            added = 0
            if not args.skip_batch:
                for label, kwargs, extra in settings:
                    nullspace_args = NullspaceArguments(
                        noise_epsilon=epsilon, noise_max_updates=args.max_updates, **kwargs
                    )
                    rows.append(
                        row(label, dataset, epsilon, measure(model, data, nullspace_args, args.seeds), **extra)
                    )
                default = NullspaceArguments(noise_epsilon=epsilon, noise_max_updates=args.max_updates)
                rows.append(
                    row(
                        "auto, warm start",
                        dataset,
                        epsilon,
                        measure(model, data, default, args.seeds, warm_start=True),
                        init_factor=2.0,
                    )
                )
                random = NullspaceArguments(nullspace_mode="random", noise_epsilon=epsilon)
                rows.append(row("random baseline", dataset, epsilon, measure(model, data, random, args.seeds)))
                added = len(settings) + 2
            if "stream" in args.synthesis_data:
                stream_settings = [
                    (
                        f"{label}, stream, stop over {k}",
                        {**kwargs, "noise_stop_batches": k},
                        {**extra, "stop_batches": k},
                    )
                    for label, kwargs, extra in settings + [("random baseline", dict(nullspace_mode="random"), {})]
                    for k in args.stop_batches
                ]
                for label, kwargs, extra in stream_settings:
                    stream_args = NullspaceArguments(
                        noise_epsilon=epsilon,
                        noise_max_updates=args.max_updates,
                        noise_synthesis_data="stream",
                        **kwargs,
                    )
                    records = measure_stream(model, pool, stream_args, args.seeds, args.batches, args.unseen_batches)
                    rows.append(row(label, dataset, epsilon, records, synthesis_data="stream", **extra))
                    rows[-1]["heldout_fresh"] = sum(r["heldout_fresh"] for r in records) / len(records)
                    rows[-1]["batches_drawn_median"] = statistics.median(r["batches_drawn"] for r in records)
                    added += 1
            for r in rows[-added:]:
                print(
                    f"{dataset:8s} eps={epsilon:<5g} {r['setting']:18s} reached {r['reached']:4.0%} "
                    f"fallback {r['fallback']:4.0%} updates {r['updates_median']:5.0f} (max {r['updates_max']:4d}) "
                    f"{r['seconds_median']:.3f} s  norm {r['norm_median']:7.1f} ratio {r['norm_ratio_median']:.2f} "
                    f"stat {r['statistic_median']:.4f} held-out {r['heldout_statistic_median']:.4f} "
                    f"({r['heldout_inside']:.0%} inside)"
                    + (
                        f" pooled {r['heldout_pooled_statistic_median']:.4f} ({r['heldout_pooled_inside']:.0%} inside)"
                        if "heldout_pooled_inside" in r
                        else ""
                    ),
                    flush=True,
                )
    result = {
        "device": f"cpu, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "models": {d: os.path.relpath(DATASETS[d]["model"], ROOT) for d in args.datasets},
        "batch_size": args.batch_size,
        "clean_forward_seconds": forward,
        "heldout": "the statistic of each noise on the next batch (one it was not synthesised on); stream rows: the "
        "next batch of the synthesis stream (one it was never updated on)",
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"Written to {args.output}")


if __name__ == "__main__":
    main()
