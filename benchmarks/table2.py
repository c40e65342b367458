"""A small reproduction of the shape of the paper's Table 2 on the bundled data: nullspace finetuning against plain
finetuning, the random-noise baseline and adversarial training (Madry, TRADES), on clean accuracy, attacks and
corruptions, with the training cost of each mode.

From the bundled pretrained ViT (vit-tiny-mnist), each mode finetunes with the embedded default's settings
(`assets/default_run.json`: batch 32, AdamW lr 1e-4 cosine, epsilon 0.03, automatic noise start, at most 300 noise
updates) but for `--steps` optimiser steps (100 by default instead of 480, noise refreshed every 20 instead of 40, so
the run fits about 15 minutes on 2 shared CPU cores); Madry and TRADES use the paper's recipe (L-inf 8/255, step 2/255,
10 steps, beta 1). Every run is the real main job (`python -m hf_nullspace.finetune`) in its own process with one
thread; all finetuned models and the base model are then scored side by side in one pass of the `mnist` robustness
suite (clean, FGSM 0.02/0.05/0.1, PGD-10 0.02/0.05, 10 corruptions x 5 severities) on the first `--samples` test
images. Writes `benchmarks/results/table2.{json,md}`.

    python benchmarks/table2.py                        # 5 modes x 3 seeds, 100 steps, 300 images (~15 min)
    python benchmarks/table2.py --seeds 0 --steps 40   # a quick look
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
MODES = ("none", "random", "nullspace", "madry", "trades")
# (benchmark, metric, label); accuracies are higher-is-better, the relative mCE (vs the base model) lower-is-better
COLUMNS = (
    ("clean", "accuracy", "clean"),
    ("fgsm@0.02", "accuracy", "fgsm@0.02"),
    ("fgsm@0.05", "accuracy", "fgsm@0.05"),
    ("fgsm@0.1", "accuracy", "fgsm@0.1"),
    ("pgd@0.02", "accuracy", "pgd@0.02"),
    ("pgd@0.05", "accuracy", "pgd@0.05"),
    ("corruption/contrast", "accuracy", "contrast"),
    ("corruption/pixelate", "accuracy", "pixelate"),
    ("corruptions", "accuracy", "corruptions"),
    ("corruptions", "relative_mce", "rel. mCE ↓"),
)
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def train(mode: str, seed: int, args) -> dict:
    """Runs the main job for one mode and seed (skipped when its folder holds a finished run); returns its timing."""
    from hf_nullspace.data.bundled import ASSETS

    out = os.path.join(args.workdir, f"{mode}-seed{seed}")
    if not os.path.isfile(os.path.join(out, "results.json")):
        defaults = json.loads((ASSETS / "default_run.json").read_text())
        overrides = {
            "output_dir": out,
            "seed": seed,
            "nullspace_mode": mode,
            "max_steps": args.steps,
            "noise_refresh_steps": args.refresh,
            "save_strategy": "no",
            "do_eval": False,
            "robustness_suite": "none",
            "disable_tqdm": True,
            "use_cpu": True,
            "logging_steps": 10,
        }
        command = [sys.executable, "-m", "hf_nullspace.finetune"]
        for key, value in {**defaults, **overrides}.items():
            if key in ("save_steps", "save_total_limit", "robustness_max_samples"):
                continue
            command += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
        start = time.perf_counter()
        completed = subprocess.run(command, env=ENV, capture_output=True, text=True, cwd=ROOT)
        if completed.returncode:
            raise RuntimeError(f"{mode} seed {seed} failed:\n{completed.stderr[-3000:]}")
        print(f"  {mode} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    results = json.loads(open(os.path.join(out, "results.json")).read())
    runtime = results["train"]["train_runtime"]
    synthesis = sum(record.get("seconds", 0.0) for record in results.get("noise_history", []))
    return {
        "mode": mode,
        "seed": seed,
        "path": out,
        "steps": args.steps,
        "seconds_per_step": runtime / args.steps,
        "seconds_per_step_without_synthesis": (runtime - synthesis) / args.steps,
        "syntheses": len(results.get("noise_history", [])),
    }


def evaluate(runs: list[dict], args) -> dict:
    """Scores the base model and every run side by side (one pass over the data: corruptions computed once)."""
    import torch

    from hf_nullspace.data.bundled import ASSETS
    from hf_nullspace.robustness import evaluate_robustness

    torch.set_num_threads(1)
    models = {"base": str(ASSETS / "vit-tiny-mnist")}
    models.update({f"{run['mode']}-seed{run['seed']}": run["path"] for run in runs})
    report = evaluate_robustness(
        models, suite="mnist", max_samples=args.samples, batch_size=100, seed=0, progress=False
    ).to_dict()
    return {
        model["name"]: {f"{result['benchmark']}|{result['metric']}": result["value"] for result in model["results"]}
        for model in report["models"]
    }


def summarise(runs: list[dict], scores: dict) -> list[dict]:
    keys = [f"{benchmark}|{metric}" for benchmark, metric, _ in COLUMNS]
    base = scores["base"]
    rows = [
        {
            "mode": "base (no finetuning)",
            "seeds": 1,
            **{k: (base[k], 0.0) if base.get(k) is not None else None for k in keys},
        }
    ]
    for mode in MODES:
        members = [run for run in runs if run["mode"] == mode]
        if not members:
            continue
        row = {"mode": mode, "seeds": len(members)}
        for key in keys:
            values = [scores[f"{mode}-seed{run['seed']}"][key] for run in members]
            row[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        for key in ("seconds_per_step", "seconds_per_step_without_synthesis"):
            row[key] = statistics.mean(run[key] for run in members)
        rows.append(row)
    none = next((row for row in rows if row["mode"] == "none"), None)
    for row in rows:
        if none is not None and "seconds_per_step" in row:
            row["cost_vs_none"] = row["seconds_per_step"] / none["seconds_per_step"]
    return rows


def markdown(rows: list[dict], args) -> str:
    names = [f"{benchmark}|{metric}" for benchmark, metric, _ in COLUMNS]
    finetuned = [row for row in rows if row["mode"] in MODES]
    pick = {name: min if name.endswith("relative_mce") else max for name in names}
    best = {c: pick[c](row[c][0] for row in finetuned) for c in names}
    head = "| mode | " + " | ".join(label for _, _, label in COLUMNS) + " | s / step | × none |"
    lines = [head, "|---|" + "---:|" * (len(names) + 2)]
    for row in rows:
        cells = []
        for c in names:
            if row.get(c) is None:
                cells.append("—")
                continue
            mean, std = row[c]
            text = f"{100 * mean:.1f} ± {100 * std:.1f}" if row["seeds"] > 1 else f"{100 * mean:.1f}"
            cells.append(f"**{text}**" if row["mode"] in MODES and mean == best[c] else text)
        cost = f"{row['seconds_per_step']:.3f}" if "seconds_per_step" in row else "—"
        ratio = f"{row['cost_vs_none']:.1f}" if "cost_vs_none" in row else "—"
        lines.append(f"| {row['mode']} | " + " | ".join(cells) + f" | {cost} | {ratio} |")
    seeds = ", ".join(str(s) for s in args.seeds)
    lines += [
        "",
        f"Top-1 accuracy (%) on the first {args.samples} images of the bundled MNIST test split, mean ± std over "
        f"seeds "
        f"{seeds}; `corruptions` is the mean over 10 corruptions x 5 severities, rel. mCE the corruption error "
        "relative "
        f"to the base model's (%, lower is better). {args.steps} optimiser steps per run "
        f"(batch 32), noise refreshed every {args.refresh} steps; Madry/TRADES: L-inf 8/255, step 2/255, 10 steps, "
        "beta 1. Bold: best finetuned mode per column. s / step: wall seconds per optimiser step as trained (one "
        "thread, data loading and noise synthesis included), × none: relative to plain finetuning.",
    ]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--refresh", type=int, default=20, help="noise refresh (optimiser steps)")
    parser.add_argument("--samples", type=int, default=300, help="test images per robustness evaluation")
    parser.add_argument("--workdir", default="/tmp/hf_nullspace_table2")
    args = parser.parse_args()
    start = time.perf_counter()
    runs = []
    for seed in args.seeds:
        for mode in args.modes:
            runs.append(train(mode, seed, args))
    trained = time.perf_counter()
    print(f"training: {trained - start:.0f} s; scoring {len(runs) + 1} models ...", flush=True)
    scores = evaluate(runs, args)
    print(f"scoring: {time.perf_counter() - trained:.0f} s", flush=True)
    rows = summarise(runs, scores)
    os.makedirs(RESULTS, exist_ok=True)
    settings = {**vars(args), "wall_seconds": round(time.perf_counter() - start, 1)}
    with open(os.path.join(RESULTS, "table2.json"), "w") as f:
        json.dump({"settings": settings, "summary": rows, "runs": runs, "scores": scores}, f, indent=2)
    table = markdown(rows, args)
    with open(os.path.join(RESULTS, "table2.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
