"""
Throughput (images/s) of the attacks of `hf_nullspace.robustness.attacks`, with torchattacks side by side.

A small ViT (32x32 RGB, patch 4, hidden 192, 6 layers, 3 heads: ViT-Tiny width on CIFAR-size images) with random
weights attacks a batch of random images. Each repeat runs every attack once, in turn (interleaved, so drifts in
machine load hit all attacks alike); the median over repeats is reported. FGSM, PGD (L-inf and L2) and CW also run
through torchattacks 3.5.1 (`pip install --no-deps torchattacks==3.5.1`) with the same parameters, and the ratio
ours / torchattacks is reported. Prints a table and writes JSON.

    python benchmarks/attacks_throughput.py --threads 1
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_nullspace.robustness.attacks import cw_l2, fgsm, patch_fool, pgd, run_attack
from hf_nullspace.robustness.model import PixelSpaceClassifier

EPS_LINF, EPS_L2 = 8 / 255, 0.5


def build_model() -> PixelSpaceClassifier:
    config = ViTConfig(
        image_size=32,
        patch_size=4,
        num_channels=3,
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=10,
    )
    return PixelSpaceClassifier(ViTForImageClassification(config).eval(), (0.5,) * 3, (0.5,) * 3)


def attack_table(model, cw_steps: int, patchfool_steps: int) -> dict:
    """name -> (ours, torchattacks or None, description): callables taking (images, labels)."""
    try:
        import torchattacks
    except ImportError:
        torchattacks = None

    def oracle(build):
        return None if torchattacks is None else build(torchattacks)

    return {
        "fgsm": (
            lambda x, y: fgsm(model, x, y, EPS_LINF),
            oracle(lambda ta: ta.FGSM(model, eps=EPS_LINF)),
            "eps 8/255",
        ),
        "pgd": (
            lambda x, y: pgd(model, x, y, EPS_LINF, 2 / 255, 10),
            oracle(lambda ta: ta.PGD(model, eps=EPS_LINF, alpha=2 / 255, steps=10)),
            "L-inf eps 8/255, step 2/255, 10 steps",
        ),
        "pgd_l2": (
            lambda x, y: pgd(model, x, y, EPS_L2, EPS_L2 / 5, 10, norm="l2"),
            oracle(lambda ta: ta.PGDL2(model, eps=EPS_L2, alpha=EPS_L2 / 5, steps=10)),
            "L2 eps 0.5, step 0.1, 10 steps",
        ),
        "cw": (
            lambda x, y: cw_l2(model, x, y, c=1.0, kappa=0.0, steps=cw_steps, lr=0.01),
            oracle(lambda ta: ta.CW(model, c=1.0, kappa=0.0, steps=cw_steps, lr=0.01)),
            f"c 1, kappa 0, lr 0.01, {cw_steps} steps, early abort",
        ),
        "patchfool": (
            lambda x, y: patch_fool(model, x, y, steps=patchfool_steps),
            None,
            f"1 patch, {patchfool_steps} steps, attention loss on layers 1-2",
        ),
        "autoattack": (
            lambda x, y: run_attack(
                "autoattack", model, x, y, epsilon=EPS_LINF, version="custom", attacks=["apgd-ce"]
            ),
            None,
            "APGD-CE only (5 restarts x 100 steps on unfooled points), eps 8/255",
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cw-steps", type=int, default=50)
    parser.add_argument("--patchfool-steps", type=int, default=50)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "attacks_throughput.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model()
    images = torch.rand(args.batch_size, 3, 32, 32)
    labels = model(images).argmax(dim=1).detach()  # every image starts correctly classified
    table = attack_table(model, args.cw_steps, args.patchfool_steps)
    try:
        import pyautoattack  # noqa: F401
    except ImportError:
        table.pop("autoattack")

    seconds = {
        (name, impl): []
        for name, (_, ta, _) in table.items()
        for impl in ("ours", "torchattacks")
        if ta or impl == "ours"
    }
    for ours, _, _ in table.values():  # warm-up
        ours(images[:2], labels[:2])
    for _ in range(args.repeats):
        for name, (ours, ta, _) in table.items():
            for impl, attack in (("ours", ours), ("torchattacks", ta)):
                if attack is None:
                    continue
                start = time.perf_counter()
                attack(images, labels)
                seconds[name, impl].append(time.perf_counter() - start)

    rows = []
    for name, (_, ta, description) in table.items():
        ours_ips = args.batch_size / statistics.median(seconds[name, "ours"])
        ta_ips = args.batch_size / statistics.median(seconds[name, "torchattacks"]) if ta else None
        rows.append(
            {
                "attack": name,
                "parameters": description,
                "ours_images_per_s": round(ours_ips, 2),
                "torchattacks_images_per_s": None if ta_ips is None else round(ta_ips, 2),
                "ratio_ours_to_torchattacks": None if ta_ips is None else round(ours_ips / ta_ips, 3),
                "seconds_ours": [round(s, 4) for s in seconds[name, "ours"]],
                "seconds_torchattacks": [round(s, 4) for s in seconds[name, "torchattacks"]] if ta else None,
            }
        )

    print(f"{'attack':<11} {'ours img/s':>11} {'torchattacks img/s':>19} {'ratio':>7}  parameters")
    for row in rows:
        ta_ips = row["torchattacks_images_per_s"]
        ratio = row["ratio_ours_to_torchattacks"]
        print(
            f"{row['attack']:<11} {row['ours_images_per_s']:>11.2f} {'-' if ta_ips is None else f'{ta_ips:.2f}':>19} "
            f"{'-' if ratio is None else f'{ratio:.3f}':>7}  {row['parameters']}"
        )

    args.output.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "model": "ViT 32x32, patch 4, hidden 192, 6 layers, 3 heads, 10 labels, random weights",
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "statistic": "median over repeats",
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "device": "cpu",
        "machine": platform.machine(),
        "results": rows,
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
