"""Small-scale reproduction of the paper's claims on two real datasets and their bundled ViTs (docs/method.md).

For each dataset (the bundled MNIST digits; colour photo and texture patches cut from scikit-image's sample images,
built here), from its bundled pretrained ViT, finetune in the four modes with the same steps and data order per seed:

- `none`: plain finetuning;
- `random`: the authors' random baseline, N(0, 1) shrunk until inside epsilon;
- `norm_matched`: each refresh synthesises the learned noise, then trains on a random direction of exactly its norm
  (separates the noise's direction from its magnitude);
- `nullspace`: the learned epsilon-approximate nullspace noise (the method), with an epsilon ablation;

plus optional variants of the method (`--variants`, e.g. a warm start). Each run is the real main job
(`python -m hf_nullspace.finetune`) in its own process, with the embedded default's settings and the library's
synthesis defaults, shortened (`--steps`) and scored with the `mnist` suite (attacks and corruptions) on `--samples`
test images. Writes `benchmarks/results/reproduction.{json,md}` and figures (per-dataset accuracy bars with seed
std, noise norm over training).

    python benchmarks/reproduction.py                                   # about 40 minutes on 2 CPU cores
    python benchmarks/reproduction.py --datasets textures --seeds 0 --epsilons 0.03     # a quick look
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
ASSETS = os.path.join(ROOT, "hf_nullspace", "assets")
DATASETS = {
    "mnist": {
        "title": "MNIST digits (bundled)",
        "model": os.path.join(ASSETS, "vit-tiny-mnist"),
        "data": os.path.join(ASSETS, "mnist"),
        "args": {"train_flip": False},
    },
    "textures": {
        "title": "photo and texture patches (scikit-image)",
        "model": os.path.join(ASSETS, "vit-tiny-textures"),
        "data": None,  # built by trainer_scripts/train_base_model.py in the work folder
        "args": {"train_flip": True},
    },
}
# name -> extra arguments of a variant of the nullspace mode (run at epsilon 0.03)
VARIANTS = {
    "warm_start": {"noise_warm_start": True},
    "sub_batch": {"noise_synthesis_batch_size": 8},  # synthesis on a quarter of the batch of 32, the rest held out
    "beta0.5": {"noisy_loss_weight": 0.5},
    "fixed_start3": {"noise_init_limit": 3.0},
    "factor4": {"noise_init_factor": 4.0},
}
COLUMNS = [
    ("clean", "accuracy"),
    ("fgsm@0.05", "accuracy"),
    ("fgsm@0.1", "accuracy"),
    ("pgd@0.05", "accuracy"),
    ("corruption/contrast", "accuracy"),
    ("corruption/pixelate", "accuracy"),
    ("corruptions", "accuracy"),
    ("corruptions", "relative_mce"),
]
ROBUST = ["fgsm@0.05|accuracy", "fgsm@0.1|accuracy", "pgd@0.05|accuracy", "corruptions|accuracy"]


def dataset_dir(dataset: str, workdir: str) -> str:
    """The dataset's folder; the texture patches are built (deterministically, from scikit-image) on first use."""
    if DATASETS[dataset]["data"] is not None:
        return DATASETS[dataset]["data"]
    folder = os.path.join(workdir, f"{dataset}-data")
    if not os.path.isfile(os.path.join(folder, "test.parquet")):
        subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "trainer_scripts", "train_base_model.py"),
                "--dataset",
                dataset,
                "--data-only",
                "--data-dir",
                folder,
            ],
            check=True,
            capture_output=True,
        )
    return folder


def configurations(args):
    # seed-major, so that a partial run already covers every dataset and mode
    for seed in args.seeds:
        for dataset in args.datasets:
            yield {"dataset": dataset, "mode": "none", "variant": "-", "epsilon": None, "seed": seed}
            for mode in ("random", "norm_matched"):
                yield {"dataset": dataset, "mode": mode, "variant": "-", "epsilon": 0.03, "seed": seed}
            for epsilon in args.epsilons:
                yield {"dataset": dataset, "mode": "nullspace", "variant": "-", "epsilon": epsilon, "seed": seed}
            for variant in args.variants:
                yield {"dataset": dataset, "mode": "nullspace", "variant": variant, "epsilon": 0.03, "seed": seed}


def command(config, args, out) -> list[str]:
    spec = DATASETS[config["dataset"]]
    overrides = {
        "output_dir": out,
        "seed": config["seed"],
        "nullspace_mode": config["mode"],
        "save_strategy": "no",
        "disable_tqdm": True,
        "max_steps": args.steps,
        "robustness_max_samples": args.samples,
        "model_name_or_path": spec["model"],
        "dataset_name": dataset_dir(config["dataset"], args.workdir),
        **spec["args"],
        **VARIANTS.get(config["variant"], {}),
    }
    if config["epsilon"] is not None:
        overrides["noise_epsilon"] = config["epsilon"]
    defaults = json.load(open(os.path.join(ASSETS, "default_run.json")))
    values = {k: v for k, v in defaults.items() if k not in ("save_steps", "save_total_limit")}
    values.update(overrides)
    cmd = [sys.executable, "-m", "hf_nullspace.finetune"]
    for key, value in values.items():
        cmd += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return cmd


def run(config, args) -> dict:
    name = f"{config['dataset']}-{config['mode']}-{config['variant']}-eps{config['epsilon']}-seed{config['seed']}"
    out = os.path.join(args.workdir, name)
    results_file = os.path.join(out, "results.json")
    seconds = None
    if not os.path.isfile(results_file):
        start = time.perf_counter()
        # one thread per run: on a shared 2-core machine several runs with 2 threads each spin against each other
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
        subprocess.run(command(config, args, out), check=True, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
    results = json.load(open(results_file))
    finetuned = next(m for m in results["robustness"]["models"] if m["name"] == "finetuned")
    base = next(m for m in results["robustness"]["models"] if m["name"] == "base")

    def value(model, benchmark, metric):
        return next(
            (r["value"] for r in model["results"] if (r["benchmark"], r["metric"]) == (benchmark, metric)), None
        )

    columns = {f"{b}|{m}": value(finetuned, b, m) for b, m in COLUMNS}
    columns["robust mean|accuracy"] = statistics.mean(columns[k] for k in ROBUST)
    base_columns = {f"{b}|{m}": value(base, b, m) for b, m in COLUMNS}
    base_columns["robust mean|accuracy"] = statistics.mean(base_columns[k] for k in ROBUST)
    return {
        **config,
        "seconds": seconds,
        "columns": columns,
        "base_columns": base_columns,
        "noise_history": results.get("noise_history", []),
    }


def refresh_stats(histories: list[list[dict]]) -> dict:
    records = [r for history in histories for r in history]
    if not records:
        return {}

    def median(key):
        values = [r[key] for r in records if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "refreshes": len(records),
        "reached": sum(bool(r["reached"]) for r in records),
        "fallback": sum(bool(r.get("fallback")) for r in records),
        "inside": sum(bool(r.get("inside", r["reached"])) for r in records),
        "updates_median": median("updates"),
        "updates_mean": statistics.mean(r["updates"] for r in records),
        "seconds_median": median("seconds"),
        "norm_median": median("norm"),
        "norm_ratio_median": median("norm_ratio"),
        "statistic_median": median("statistic"),
        "learned_statistic_median": median("learned_statistic"),
    }


def summarise(runs: list[dict]) -> list[dict]:
    groups = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["mode"], r["variant"], r["epsilon"]), []).append(r)
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        base = next(r for r in runs if r["dataset"] == dataset)["base_columns"]
        rows.append(
            {
                "dataset": dataset,
                "mode": "base (no finetuning)",
                "variant": "-",
                "epsilon": None,
                "seeds": 1,
                **{k: (v, 0.0) for k, v in base.items() if v is not None},
            }
        )
        for (group_dataset, mode, variant, epsilon), members in groups.items():
            if group_dataset != dataset:
                continue
            row = {"dataset": dataset, "mode": mode, "variant": variant, "epsilon": epsilon, "seeds": len(members)}
            for key in members[0]["columns"]:
                values = [m["columns"][key] for m in members if m["columns"][key] is not None]
                row[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
            row["synthesis"] = refresh_stats([m["noise_history"] for m in members])
            seconds = [m["seconds"] for m in members if m["seconds"]]
            row["run_seconds_median"] = statistics.median(seconds) if seconds else None
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    keys = [f"{b}|{m}" for b, m in COLUMNS] + ["robust mean|accuracy"]
    head = "| dataset | mode | epsilon | " + " | ".join(k.replace("|accuracy", "").replace("|", " ") for k in keys)
    lines = [head + " | eps met (updates) | fallback | updates | norm ratio |", "|" + "---|" * (len(keys) + 7)]
    for row in rows:
        cells = [f"{100 * row[k][0]:.2f} ± {100 * row[k][1]:.2f}" if row.get(k) else "—" for k in keys]
        eps = "" if row["epsilon"] is None else f"{row['epsilon']:g}"
        mode = row["mode"] + ("" if row["variant"] == "-" else f" ({row['variant']})")
        s = row.get("synthesis") or {}
        extra = (
            [
                f"{s['reached']}/{s['refreshes']}",
                str(s["fallback"]),
                f"{s['updates_median']:g}",
                f"{s['norm_ratio_median']:.2f}" if s.get("norm_ratio_median") is not None else "—",
            ]
            if s
            else ["-", "-", "-", "-"]
        )
        lines.append(f"| {row['dataset']} | {mode} | {eps} | " + " | ".join(cells + extra) + " |")
    return "\n".join(lines) + "\n"


def figures(runs: list[dict], rows: list[dict], datasets: list[str]) -> list[str]:
    import matplotlib.pyplot as plt

    from hf_nullspace.plots import _save, plot_noise_norm

    paths = []
    for dataset in datasets:
        histories = {
            f"seed {r['seed']}": r["noise_history"]
            for r in runs
            if r["dataset"] == dataset and r["mode"] == "nullspace" and r["variant"] == "-" and r["epsilon"] == 0.03
        }
        if histories:
            path = os.path.join(RESULTS, f"reproduction_noise_norm_{dataset}.png")
            paths.append(
                plot_noise_norm(
                    histories, path, title=f"Learned noise norm over training ({dataset}, epsilon 0.03, 3 seeds)"
                )
            )
    keys = [f"{b}|{m}" for b, m in COLUMNS if m == "accuracy"] + ["robust mean|accuracy"]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(11, 3.6 * len(datasets)), squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets):
        shown = [r for r in rows if r["dataset"] == dataset and r["variant"] == "-" and (r["epsilon"] in (None, 0.03))]
        width = 0.8 / max(len(shown), 1)
        for i, row in enumerate(shown):
            xs = [j + (i - (len(shown) - 1) / 2) * width for j in range(len(keys))]
            means = [100 * row[k][0] if row.get(k) else 0 for k in keys]
            stds = [100 * row[k][1] if row.get(k) else 0 for k in keys]
            ax.bar(xs, means, width=width, yerr=stds, capsize=2, label=row["mode"])
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([k.split("|")[0] for k in keys], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{DATASETS[dataset]['title']}, epsilon 0.03: mean ± std over seeds", fontsize=10)
        ax.legend(fontsize=7, ncol=5, loc="upper right")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(RESULTS, "reproduction.png")))
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--variants", nargs="*", default=["warm_start"], choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=240, help="optimiser steps per run")
    parser.add_argument("--samples", type=int, default=500, help="test images per robustness benchmark")
    parser.add_argument("--workdir", default="/tmp/hf_nullspace_reproduction")
    parser.add_argument("--name", default="reproduction", help="file stem of the results")
    parser.add_argument("--workers", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = parser.parse_args()
    from concurrent.futures import ThreadPoolExecutor

    configs = list(configurations(args))
    for dataset in args.datasets:
        dataset_dir(dataset, args.workdir)  # build once, before the workers start

    def one(indexed):
        i, config = indexed
        result = run(config, args)
        seconds = result["seconds"]
        print(
            f"[{i + 1}/{len(configs)}] {config}: clean {result['columns']['clean|accuracy']:.4f}"
            + (f" ({seconds:.0f} s)" if seconds else ""),
            flush=True,
        )
        return result

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        runs = list(pool.map(one, enumerate(configs)))
    rows = summarise(runs)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump({"settings": vars(args), "summary": rows, "runs": runs}, f, indent=2)
    table = markdown(rows)
    with open(os.path.join(RESULTS, f"{args.name}.md"), "w") as f:
        f.write(table)
    print(table)
    if args.name == "reproduction":
        print("Figures:", figures(runs, rows, args.datasets))


if __name__ == "__main__":
    main()
