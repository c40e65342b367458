"""Training cost side by side: per-step time and peak memory of NullspaceTrainer (modes none, random, nullspace; shared
or separate clean/noisy forward) against a plain `transformers.Trainer` and a straightforward implementation of the
authors' loop (ALGORITHM.md section 3), on the same model, batch and data.

Each variant runs in its own process (so peak RSS is its own), repeats are interleaved (A B C A B C ...) and the
report gives medians and ratios to the plain Trainer measured in the same run.

    python benchmarks/training_cost.py                      # bundled ViT and MNIST, 40 steps = one refresh period
    python benchmarks/training_cost.py --steps 80 --repeats 5 --refresh 40
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("plain_trainer", "none", "random", "nullspace", "nullspace_separate", "authors_loop")


def load_data(num: int):
    import torch

    from hf_nullspace.data import SkipCounter, collate_fn, load_image_dataset, prepare_dataset
    from hf_nullspace.data.bundled import BUNDLED_MNIST
    from hf_nullspace.data.transforms import EvalTransform

    dataset = load_image_dataset(BUNDLED_MNIST, split="train")
    dataset = prepare_dataset(dataset.select(range(num)), EvalTransform(32, 1.0, [0.5] * 3, [0.5] * 3), "image",
                              "label", 10, SkipCounter())  # fmt: skip
    batch = collate_fn(dataset.__getitems__(list(range(num))))
    return torch.utils.data.TensorDataset(batch["pixel_values"], batch["labels"])


class Rows(__import__("torch").utils.data.Dataset):
    def __init__(self, tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors)

    def __getitem__(self, i):
        pixel_values, labels = self.tensors[i]
        return {"pixel_values": pixel_values, "labels": labels}


class LoaderPixels:
    """Re-iterable pixel batches of a loader: a fresh batch per update, nothing reused."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return (batch[0] for batch in self.loader)


def authors_loop(model, data, args, nullspace_args):
    """The authors' loop, straightforwardly: separate clean and noisy passes, a fresh noise every refresh steps,
    synthesised on successive loader batches with a clean forward per update (no reuse)."""
    import torch
    import torch.nn.functional as F

    from hf_nullspace.embedding import inject_noise
    from hf_nullspace.synthesis import synthesize_noise

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = iter(loader)
    synthesis_seconds, start, step = 0.0, time.perf_counter(), 0
    while step < args.steps:
        try:
            pixel_values, labels = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        if step % args.refresh == 0:
            t = time.perf_counter()
            noise = synthesize_noise(model, LoaderPixels(loader), nullspace_args).noise
            synthesis_seconds += time.perf_counter() - t
        model.train()
        clean = model(pixel_values=pixel_values).logits
        with inject_noise(model, noise):
            noisy = model(pixel_values=pixel_values).logits
        loss = F.cross_entropy(clean, labels) + F.cross_entropy(noisy, labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
    return time.perf_counter() - start, synthesis_seconds


def worker(args) -> dict:
    import torch
    from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

    from hf_nullspace import NullspaceArguments, NullspaceTrainer

    torch.manual_seed(0)
    data = load_data(args.samples)
    model = AutoModelForImageClassification.from_pretrained(args.model)
    mode = {"plain_trainer": "none", "nullspace_separate": "nullspace", "authors_loop": "nullspace"}.get(
        args.variant, args.variant
    )
    nullspace_args = NullspaceArguments(
        nullspace_mode=mode,
        noise_refresh_steps=args.refresh,
        noise_max_updates=args.max_updates,
        noise_init_limit=args.init_limit,
        noise_shared_forward=args.variant != "nullspace_separate",
    )
    if args.variant == "authors_loop":
        seconds, synthesis = authors_loop(model, data, args, nullspace_args)
        updates = None
    else:
        training = TrainingArguments(
            output_dir=os.path.join(args.workdir, args.variant), max_steps=args.steps, use_cpu=True,
            per_device_train_batch_size=args.batch_size, learning_rate=1e-4, report_to="none", save_strategy="no",
            logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0,
        )  # fmt: skip
        common = dict(model=model, args=training, train_dataset=Rows(data))
        trainer = (
            Trainer(**common)
            if args.variant == "plain_trainer"
            else NullspaceTrainer(**common, nullspace_args=nullspace_args)
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        history = getattr(trainer, "noise_history", [])
        synthesis = sum(r["seconds"] for r in history)
        updates = [r["updates"] for r in history]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "synthesis_seconds": synthesis, "peak_rss_mb": peak_mb, "updates": updates}


def profile(args) -> dict:
    """Where the time of one nullspace step goes: forward+backward of the doubled batch, optimiser, synthesis."""
    import torch
    from transformers import AutoModelForImageClassification

    from hf_nullspace import NullspaceArguments, synthesize_noise
    from hf_nullspace.embedding import inject_noise

    torch.manual_seed(0)
    data = load_data(args.batch_size * 4)
    model = AutoModelForImageClassification.from_pretrained(args.model)
    pixel_values, labels = data.tensors[0][: args.batch_size], data.tensors[1][: args.batch_size]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    result = synthesize_noise(model, pixel_values, NullspaceArguments(noise_max_updates=args.max_updates,
                                                                      noise_init_limit=args.init_limit))  # fmt: skip
    timings = {"forward_backward_clean": [], "forward_backward_doubled": [], "optimizer_step": []}
    model.train()
    for _ in range(10):
        t = time.perf_counter()
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        timings["forward_backward_clean"].append(time.perf_counter() - t)
        t = time.perf_counter()
        with inject_noise(model, result.noise, rows=slice(args.batch_size, 2 * args.batch_size)):
            model(pixel_values=torch.cat([pixel_values] * 2), labels=torch.cat([labels] * 2)).loss.backward()
        timings["forward_backward_doubled"].append(time.perf_counter() - t)
        t = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        timings["optimizer_step"].append(time.perf_counter() - t)
    t = time.perf_counter()
    again = synthesize_noise(model, pixel_values, NullspaceArguments(noise_max_updates=args.max_updates,
                                                                     noise_init_limit=args.init_limit))  # fmt: skip
    synthesis = time.perf_counter() - t
    medians = {k: statistics.median(v) for k, v in timings.items()}
    medians["synthesis_per_refresh"] = synthesis
    medians["synthesis_updates"] = again.updates
    return medians


def main():
    from hf_nullspace.data.bundled import BUNDLED_MODEL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=BUNDLED_MODEL)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--refresh", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--max-updates", type=int, default=300)
    parser.add_argument("--init-limit", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "training_cost.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="/tmp/hf_nullspace_training_cost")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        args.variant = args.worker
        print(json.dumps(profile(args) if args.worker == "profile" else worker(args)))
        return

    variants = args.variants.split(",")
    runs = {v: [] for v in variants}
    forwarded = ["--model", args.model, "--steps", str(args.steps), "--refresh", str(args.refresh), "--batch-size",
                 str(args.batch_size), "--samples", str(args.samples), "--max-updates", str(args.max_updates),
                 "--init-limit", str(args.init_limit), "--workdir", args.workdir]  # fmt: skip
    for repeat in range(args.repeats):
        for variant in variants:  # interleaved: every variant sees the same machine state within a repeat
            out = subprocess.run([sys.executable, __file__, "--worker", variant, *forwarded], capture_output=True,
                                 text=True, check=True)  # fmt: skip
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"repeat {repeat + 1}/{args.repeats} {variant}: {runs[variant][-1]['seconds']:.2f} s", flush=True)
    out = subprocess.run([sys.executable, __file__, "--worker", "profile", *forwarded], capture_output=True, text=True,
                         check=True)  # fmt: skip
    breakdown = json.loads(out.stdout.strip().splitlines()[-1])

    summary = {}
    for variant, records in runs.items():
        seconds = statistics.median(r["seconds"] for r in records)
        synthesis = statistics.median(r["synthesis_seconds"] for r in records)
        summary[variant] = {
            "median_seconds": seconds,
            "seconds_per_step": seconds / args.steps,
            "synthesis_share": synthesis / seconds if seconds else 0.0,
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in records),
            "updates_per_refresh": records[0]["updates"],
        }
    reference = summary.get("plain_trainer", next(iter(summary.values())))["median_seconds"]
    for row in summary.values():
        row["ratio_to_plain_trainer"] = row["median_seconds"] / reference
    result = {
        "device": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "output", "workdir")},
        "summary": summary,
        "profile_one_step": breakdown,
        "runs": runs,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print("\n| variant | s/step | x plain Trainer | synthesis share | peak RSS MB |\n|---|---|---|---|---|")
    for variant, row in summary.items():
        print(f"| {variant} | {row['seconds_per_step']:.4f} | {row['ratio_to_plain_trainer']:.2f} | "
              f"{100 * row['synthesis_share']:.1f}% | {row['peak_rss_mb']:.0f} |")  # fmt: skip
    print(f"\nOne step, medians (s): {json.dumps(breakdown)}\nWritten to {args.output}")


if __name__ == "__main__":
    main()
