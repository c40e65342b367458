"""LoRA against full finetuning: trainable parameters and training memory, on the bundled model and at ViT-B/16 shape.

For each model (the bundled vit-tiny-mnist, and ViT-B/16 at 224 px with 1,000 classes built from its config, random
weights: no download), with the library's LoRA defaults (r 16, alpha 16, adapters on the attention query and value
projections, the classifier head trained fully):

- parameter counts (trainable / total) and the fp32 AdamW training state that scales with parameters: weights
  (4 bytes each) plus gradient and two moments per trainable parameter (12 bytes);
- the measured peak resident memory of a few AdamW steps on CPU (one process per configuration, `ru_maxrss` after
  the steps minus the resident memory before the first step: gradients, optimiser state and activations).

Writes `benchmarks/results/lora_memory.json` and prints a Markdown table.

    python benchmarks/lora_memory.py               # both models, batch 32 (tiny) and 8 (ViT-B/16)
"""

import argparse
import json
import os
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
MODELS = {"vit-tiny-mnist (bundled)": ("bundled", 32), "ViT-B/16 (224 px, 1000 classes)": ("vit-b16", 8)}


def build(name: str):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from hf_nullspace.classifier import load_classifier
    from hf_nullspace.data.bundled import ASSETS

    torch.manual_seed(0)
    if name == "bundled":
        return load_classifier(str(ASSETS / "vit-tiny-mnist"))
    return ViTForImageClassification(ViTConfig(num_labels=1000))  # the google/vit-base-patch16-224 shape


def measure(name: str, lora: bool, batch_size: int, steps: int) -> dict:
    """A few AdamW steps in this process; returns the peak resident memory they added (bytes)."""
    import torch

    from hf_nullspace.lora import LoraArguments, apply_lora, parameter_counts

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = build(name)
    if lora:
        model = apply_lora(model, LoraArguments(use_lora=True))
    model.train()
    size = model.config.image_size
    pixel_values = torch.randn(batch_size, 3, size, size)
    labels = torch.randint(0, model.config.num_labels, (batch_size,))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(pixel_values=pixel_values).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, as between Trainer steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_added_bytes": peak - before, **parameter_counts(model)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--measure", nargs=4, metavar=("NAME", "LORA", "BATCH", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child process
        name, lora, batch, steps = args.measure
        print(json.dumps(measure(name, lora == "1", int(batch), int(steps))))
        return

    from hf_nullspace.lora import LoraArguments, lora_savings

    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1")
    rows = []
    for label, (name, batch) in MODELS.items():
        savings = lora_savings(build(name), LoraArguments(use_lora=True))
        measured = {}
        for lora in (False, True):
            command = [sys.executable, __file__, "--measure", name, "1" if lora else "0", str(batch), str(args.steps)]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=ROOT).stdout
            measured["lora" if lora else "full"] = json.loads(out.strip().splitlines()[-1])
        rows.append({"model": label, "batch_size": batch, "steps": args.steps, **savings, "measured": measured})
        print(f"{label}: done", flush=True)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "lora_memory.json"), "w") as f:
        json.dump(
            {"settings": {**vars(args), "lora": LoraArguments(use_lora=True).to_dict()}, "rows": rows}, f, indent=2
        )
    mib = 2**20
    print(
        "| model | trainable (full) | trainable (LoRA) | % | AdamW state full → LoRA (MiB) | saved (MiB) | "
        "measured peak added, full → LoRA (MiB), batch |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        full, lora = row["measured"]["full"], row["measured"]["lora"]
        print(
            f"| {row['model']} | {row['full']['trainable']:,} | {row['lora']['trainable']:,} | "
            f"{row['lora']['trainable_percent']:.2f} | {row['full_training_state_bytes'] / mib:.1f} → "
            f"{row['lora_training_state_bytes'] / mib:.1f} | {row['saved_bytes'] / mib:.1f} | "
            f"{full['peak_added_bytes'] / mib:.0f} → {lora['peak_added_bytes'] / mib:.0f}, {row['batch_size']} |"
        )


if __name__ == "__main__":
    main()
