"""Small-scale reproduction of the paper's claims on the bundled real data (ALGORITHM.md sections 3-5).

From the bundled pretrained ViT, finetune with the embedded default's settings in modes none, random and nullspace
(same steps and data order per seed, 3 seeds), with the epsilon ablation (0.01, 0.03, 0.1) for random and nullspace,
in two regimes:

- `reached`: a synthesis budget that lets the noise reach epsilon (the method as intended);
- `starved`: one noise update per refresh, so training sees the large initial noise, outside the approximate
  nullspace: this measures plain noise augmentation, not the method.

Each run is the real main job in its own process; each is scored with the `mnist` suite. Writes
`benchmarks/results/reproduction.{json,md}` and figures (noise norm over training, per-column means with std).

    python benchmarks/reproduction.py                 # everything (about 30-40 minutes on 2 CPU cores)
    python benchmarks/reproduction.py --seeds 0 --epsilons 0.03 --regimes reached    # a quick look
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
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


def configurations(args):
    for seed in args.seeds:
        yield {"regime": "-", "mode": "none", "epsilon": None, "seed": seed}
        for regime in args.regimes:
            for mode in ("random", "nullspace"):
                # starved noise gets one update: epsilon only decides the 'reached' flag, so 0.03 alone
                for epsilon in args.epsilons if regime == "reached" else [0.03]:
                    yield {"regime": regime, "mode": mode, "epsilon": epsilon, "seed": seed}


def run(config, args) -> dict:
    from hf_nullspace.data.bundled import ASSETS

    name = f"{config['mode']}-{config['regime']}-eps{config['epsilon']}-seed{config['seed']}"
    out = os.path.join(args.workdir, name)
    results_file = os.path.join(out, "results.json")
    if not os.path.isfile(results_file):
        command = [sys.executable, "-m", "hf_nullspace.finetune", "--output_dir", out, "--seed", str(config["seed"]),
                   "--nullspace_mode", config["mode"], "--save_strategy", "no", "--disable_tqdm", "true",
                   "--robustness_max_samples", str(args.samples)]  # fmt: skip
        defaults = json.load(open(ASSETS / "default_run.json"))
        for key, value in defaults.items():
            if f"--{key}" not in command and key not in ("output_dir", "save_steps", "save_total_limit"):
                command += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
        if config["epsilon"] is not None:
            command += ["--noise_epsilon", str(config["epsilon"])]
        if config["regime"] == "starved":
            command += ["--noise_max_updates", "1"]
        subprocess.run(command, check=True, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    results = json.load(open(results_file))
    finetuned = next(m for m in results["robustness"]["models"] if m["name"] == "finetuned")
    base = next(m for m in results["robustness"]["models"] if m["name"] == "base")

    def value(model, benchmark, metric):
        return next(
            (r["value"] for r in model["results"] if (r["benchmark"], r["metric"]) == (benchmark, metric)), None
        )

    history = results.get("noise_history", [])
    return {
        **config,
        "columns": {f"{b}|{m}": value(finetuned, b, m) for b, m in COLUMNS},
        "base_columns": {f"{b}|{m}": value(base, b, m) for b, m in COLUMNS},
        "refreshes": len(history),
        "reached": sum(r["reached"] for r in history),
        "noise_history": history,
    }


def summarise(runs: list[dict]) -> list[dict]:
    groups = {}
    for r in runs:
        groups.setdefault((r["regime"], r["mode"], r["epsilon"]), []).append(r)
    rows = []
    for (regime, mode, epsilon), members in groups.items():
        row = {"regime": regime, "mode": mode, "epsilon": epsilon, "seeds": len(members)}
        for key in members[0]["columns"]:
            values = [m["columns"][key] for m in members if m["columns"][key] is not None]
            row[key] = (
                (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
            )
        refreshes = sum(m["refreshes"] for m in members)
        row["reached"] = f"{sum(m['reached'] for m in members)}/{refreshes}" if refreshes else "-"
        rows.append(row)
    base = runs[0]["base_columns"]
    rows.insert(0, {"regime": "-", "mode": "base (no finetuning)", "epsilon": None, "seeds": 1, "reached": "-",
                    **{k: (v, 0.0) if v is not None else None for k, v in base.items()}})  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    keys = [f"{b}|{m}" for b, m in COLUMNS]
    head = "| regime | mode | epsilon | " + " | ".join(k.replace("|accuracy", "").replace("|", " ") for k in keys)
    lines = [head + " | reached |", "|" + "---|" * (len(keys) + 4)]
    for row in rows:
        cells = [f"{100 * row[k][0]:.2f} ± {100 * row[k][1]:.2f}" if row.get(k) else "—" for k in keys]
        eps = "" if row["epsilon"] is None else f"{row['epsilon']:g}"
        lines.append(f"| {row['regime']} | {row['mode']} | {eps} | " + " | ".join(cells) + f" | {row['reached']} |")
    return "\n".join(lines) + "\n"


def figures(runs: list[dict], rows: list[dict]) -> list[str]:
    import matplotlib.pyplot as plt

    from hf_nullspace.plots import _save, plot_noise_norm

    histories = {f"seed {r['seed']}": r["noise_history"] for r in runs
                 if r["mode"] == "nullspace" and r["regime"] == "reached" and r["epsilon"] == 0.03}  # fmt: skip
    paths = []
    if histories:
        paths.append(plot_noise_norm(histories, os.path.join(RESULTS, "reproduction_noise_norm.png"),
                                     title="Noise norm over training (nullspace, epsilon 0.03, 3 seeds)"))  # fmt: skip
    keys = [f"{b}|{m}" for b, m in COLUMNS if m == "accuracy"]
    shown = [r for r in rows if r["mode"].startswith(("base", "none")) or (r["epsilon"] == 0.03)]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(shown)
    for i, row in enumerate(shown):
        xs = [j + (i - (len(shown) - 1) / 2) * width for j in range(len(keys))]
        means = [100 * row[k][0] if row.get(k) else 0 for k in keys]
        stds = [100 * row[k][1] if row.get(k) else 0 for k in keys]
        label = row["mode"] + ("" if row["regime"] == "-" else f" ({row['regime']})")
        ax.bar(xs, means, width=width, yerr=stds, capsize=2, label=label)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([k.split("|")[0] for k in keys], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Bundled MNIST, epsilon 0.03: mean ± std over seeds")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    paths.append(_save(fig, os.path.join(RESULTS, "reproduction.png")))
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--regimes", nargs="+", default=["reached", "starved"])
    parser.add_argument("--samples", type=int, default=1000, help="test images per robustness benchmark")
    parser.add_argument("--workdir", default="/tmp/hf_nullspace_reproduction")
    args = parser.parse_args()
    runs = []
    configs = list(configurations(args))
    for i, config in enumerate(configs):
        runs.append(run(config, args))
        print(f"[{i + 1}/{len(configs)}] {config}: clean {runs[-1]['columns']['clean|accuracy']:.4f}", flush=True)
    rows = summarise(runs)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "reproduction.json"), "w") as f:
        json.dump({"settings": vars(args), "summary": rows, "runs": runs}, f, indent=2)
    table = markdown(rows)
    with open(os.path.join(RESULTS, "reproduction.md"), "w") as f:
        f.write(table)
    print(table)
    print("Figures:", figures(runs, rows))


if __name__ == "__main__":
    main()
