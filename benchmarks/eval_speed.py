"""
Time of the robustness evaluation, side by side in one run: this code against a copy of an earlier commit, and
against a straightforward torchattacks loop; plus the early-stop rates behind the protocol cost of docs/cost.md.

1. `mnist` suite, the robustness-evaluation stage of the default run (`hf_nullspace/assets/default_run.json`): the
   bundled vit-tiny-mnist scored as "base" (a path) and "finetuned" (a model object) on the 1,000 bundled digits,
   batch size 250, seed 42. "before" imports a checkout of `--before` (`git worktree add DIR COMMIT`), "after" this
   tree; the two run at the same time in two fresh processes, and the report rows of both are compared. A third
   process ("floor") runs this tree on the suite without its attack rows: clean and the 50 corruption rows, the part
   of the stage that no attack convention changes.
2. `attacks` suite (clean, FGSM and PGD-10 with step eps/4 at eps 1, 2, 4, 8 /255) on both bundled models
   (`--attack-rows` evenly spaced rows of the bundled digits; of the texture test patches, built by
   `trainer_scripts/train_base_model.py`), against a loop that scores the same rows in batches of 250 with
   `torchattacks.FGSM` and `torchattacks.PGD` (random start): one clean forward, then every example attacked and
   scored for every budget. One process per model, ours and the loop in turn.
3. Early stop on the bundled models for CW-L2 (`suites.CW_PARAMS`) and Patch-Fool (`suites.PATCHFOOL_PARAMS`, with
   patch selection on the average attention of all layers: the bundled ViTs have 4 layers): clean accuracy, share
   of attacked examples never broken, and steps taken by broken and by robust examples, from which docs/cost.md
   recomputes the protocol's passes.

All parts run at the same time, one process and one torch thread each; each reports its CPU seconds (the project's
CPU machine is shared, so wall time says more about the other users than about the code). Prints a summary, writes
benchmarks/results/eval_speed.json and eval_speed.png.

    git worktree add /tmp/hf-nullspace-before 17a39b1
    python benchmarks/eval_speed.py --before /tmp/hf-nullspace-before
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "hf_nullspace", "assets")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
MODELS = {"mnist": "vit-tiny-mnist", "textures": "vit-tiny-textures"}

# runs in a subprocess with PYTHONPATH pointing at the code to time; prints one JSON line
STAGE = """
import json, sys, time, torch
torch.set_num_threads(1)
from transformers import AutoImageProcessor
from hf_nullspace.classifier import load_classifier
from hf_nullspace.robustness import evaluate_robustness
from hf_nullspace.robustness import get_suite
path = sys.argv[1]
finetuned = load_classifier(path).eval()
processor = AutoImageProcessor.from_pretrained(path)
suite = get_suite("mnist")
if len(sys.argv) > 2:  # the floor: the suite without its attack rows
    suite.evaluations = [e for e in suite.evaluations if e.attack is None]
start, cpu = time.perf_counter(), time.process_time()
report = evaluate_robustness({"base": path, "finetuned": finetuned}, image_processor=processor, suite=suite,
                             max_samples=1000, batch_size=250, seed=42, progress=False)
seconds, wall = time.process_time() - cpu, time.perf_counter() - start
values = {m["name"]: {r["benchmark"]: r["value"] for r in m["results"]} for m in report.to_dict()["models"]}
print("RESULT " + json.dumps({"seconds": seconds, "wall_seconds": wall, "values": values}))
"""


def start_stage(code_root: str, floor: bool = False) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=code_root, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", STAGE, os.path.join(ASSETS, MODELS["mnist"])]
    command += ["floor"] if floor else []
    return subprocess.Popen(
        command, env=env, cwd=code_root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def stage_result(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode:
        raise RuntimeError(f"the mnist stage failed with exit code {process.returncode}")
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def mnist_stage(before: str, repeats: int) -> dict:
    """Before and after run at the same time (two processes, one thread each), `repeats` times, with a third process:
    this code on the suite without its attack rows (clean and the 50 corruptions: what no attack change can save)."""
    runs = {"before": [], "after": [], "floor": []}
    for _ in range(repeats):
        started = {"before": start_stage(before), "after": start_stage(ROOT), "floor": start_stage(ROOT, floor=True)}
        for label, process in started.items():
            runs[label].append(stage_result(process))
            print(f"  mnist stage {label}: {runs[label][-1]['seconds']:.1f} s CPU", flush=True)
    seconds = {label: statistics.median(r["seconds"] for r in result) for label, result in runs.items()}
    values = {label: runs[label][0]["values"] for label in ("before", "after")}
    same, pgd_not_higher = [], []
    for model, rows in values["before"].items():
        for row, value in rows.items():
            new = values["after"][model][row]
            (pgd_not_higher if row.startswith("pgd") else same).append(
                new <= value if row.startswith("pgd") else new == value
            )
    return {
        "cpu_seconds": seconds,
        "runs": runs,
        "ratio": seconds["after"] / seconds["before"],
        "floor_ratio": seconds["floor"] / seconds["before"],
        "values": values,
        "clean_fgsm_corruption_identical": all(same),
        "pgd_not_higher": all(pgd_not_higher),
    }


def _rows(name: str, textures_dir: str, count: int = 1000):
    """(data path, images in [0, 1] as the evaluation prepares them, labels) of `count` test rows, evenly spaced as
    `evaluate_robustness(max_samples=count)` reads them."""
    import torch
    from transformers import AutoImageProcessor

    from hf_nullspace.data import load_image_dataset, transforms_from_image_processor

    data = os.path.join(ASSETS, "mnist") if name == "mnist" else textures_dir
    processor = AutoImageProcessor.from_pretrained(os.path.join(ASSETS, MODELS[name]))
    _, transform = transforms_from_image_processor(processor, normalize=False)
    rows = load_image_dataset(data, split="test")
    total = len(rows)
    rows = rows.select([i for i in range(total) if ((i + 1) * count) // total > (i * count) // total])
    images = torch.stack([transform(image) for image in rows["image"]])
    return data, images, torch.tensor(rows["label"])


def torchattacks_loop(model, images, labels, budgets, batch_size: int) -> dict:
    """Clean, FGSM and PGD-10 (step eps/4, random start) at every budget, every example attacked: hit counts."""
    import torch
    import torchattacks

    hits = {"clean": 0}
    for start in range(0, len(labels), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        with torch.no_grad():
            hits["clean"] += int((model(x).argmax(-1) == y).sum())
        for eps in budgets:
            for name, attack in (
                ("fgsm", torchattacks.FGSM(model, eps=eps)),
                ("pgd", torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=True)),
            ):
                adv = attack(x, y)
                with torch.no_grad():
                    key = f"{name}@{eps:g}"
                    hits[key] = hits.get(key, 0) + int((model(adv).argmax(-1) == y).sum())
    return {key: value / len(labels) for key, value in hits.items()}


def attacks_suite(name: str, textures_dir: str, repeats: int, rows: int) -> dict:
    import torch
    from transformers import AutoImageProcessor

    from hf_nullspace.classifier import load_classifier
    from hf_nullspace.data import spec_from_source
    from hf_nullspace.robustness import evaluate_robustness, get_suite
    from hf_nullspace.robustness.model import PixelSpaceClassifier

    torch.manual_seed(0)
    budgets = tuple(k / 255 for k in (1, 2, 4, 8))
    path = os.path.join(ASSETS, MODELS[name])
    model = load_classifier(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    data, images, labels = _rows(name, textures_dir, rows)
    suite = get_suite("attacks", data=spec_from_source(data, split="test", name=name, num_classes=10))
    wrapped = PixelSpaceClassifier.from_image_processor(model, processor).eval()
    times = {"ours": [], "torchattacks": []}
    for _ in range(repeats):
        start = time.process_time()
        report = evaluate_robustness(
            {name: model}, processor, suite=suite, max_samples=rows, batch_size=250, seed=0, progress=False
        )
        times["ours"].append(time.process_time() - start)
        model.eval()  # the wrapper of evaluate_robustness leaves the model in train mode (fixed elsewhere)
        start = time.process_time()
        oracle = torchattacks_loop(wrapped, images, labels, budgets, 250)
        times["torchattacks"].append(time.process_time() - start)
    ours = {r["benchmark"]: r["value"] for r in report.to_dict()["models"][0]["results"]}
    seconds = {key: statistics.median(value) for key, value in times.items()}
    return {
        "rows": rows,
        "cpu_seconds": seconds,
        "all_cpu_seconds": times,
        "ratio": seconds["ours"] / seconds["torchattacks"],
        "accuracy": {"ours": ours, "torchattacks": oracle},
    }


def early_stop_rates(textures_dir: str, count: int) -> dict:
    """Clean accuracy, share broken and steps per attacked example of CW and Patch-Fool with early stop."""
    import torch
    from transformers import AutoImageProcessor

    from hf_nullspace.classifier import load_classifier
    from hf_nullspace.robustness.attacks import CarliniWagnerL2, EarlyStopQueue, PatchFool
    from hf_nullspace.robustness.model import PixelSpaceClassifier
    from hf_nullspace.robustness.suites import CW_PARAMS, PATCHFOOL_PARAMS

    attacks = {
        "cw": lambda: CarliniWagnerL2(**CW_PARAMS, early_stop=True),
        "patchfool": lambda: PatchFool(**{**PATCHFOOL_PARAMS, "selection_layer": None}, early_stop=True),
    }
    out = {}
    for name, folder in MODELS.items():
        path = os.path.join(ASSETS, folder)
        processor = AutoImageProcessor.from_pretrained(path)
        classifier = PixelSpaceClassifier.from_image_processor(load_classifier(path).eval(), processor).eval()
        _, images, labels = _rows(name, textures_dir, count)
        with torch.inference_mode():
            correct = classifier(images).argmax(-1) == labels
        out[name] = {"clean_accuracy": float(correct.float().mean()), "examples": count}
        for attack, build in attacks.items():
            queue = EarlyStopQueue(build(), classifier, batch_size=100)
            keep = correct.nonzero().squeeze(1)
            generators = [torch.Generator().manual_seed(int(i)) for i in keep]
            queue.put(images[keep], labels[keep], keep.tolist(), generators)
            results = queue.run(drain=True)
            robust = {key: bool(r) for keys, flags, _ in results for key, r in zip(keys, flags)}
            steps = {flag: [queue.steps_taken[k] for k, r in robust.items() if r == flag] for flag in (True, False)}
            out[name][attack] = {
                "attacked": len(robust),
                "robust_share_of_attacked": len(steps[True]) / len(robust),
                "steps_per_attacked_example": sum(queue.batch_sizes) / len(robust),
                "steps_per_broken_example": statistics.mean(steps[False]) if steps[False] else None,
                "steps_per_robust_example": statistics.mean(steps[True]) if steps[True] else None,
            }
            print(f"  {name} {attack}: {out[name][attack]}", flush=True)
    return out


def figure(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stage = results["mnist_stage"]["cpu_seconds"]
    labels, before, after = ["mnist suite\n(default run stage)"], [stage["before"]], [stage["after"]]
    for name, entry in results["attacks_suite"].items():
        labels.append(f"attacks suite\n{name}")
        before.append(entry["cpu_seconds"]["torchattacks"])
        after.append(entry["cpu_seconds"]["ours"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], before, 0.4, label="before (17a39b1) / torchattacks loop")
    ax.bar([x + 0.2 for x in xs], after, 0.4, label="this code")
    floor = results["mnist_stage"]["cpu_seconds"]["floor"]
    ax.bar([0.2], [floor], 0.4, fill=False, hatch="//", label="this code without the attack rows (mnist suite)")
    for x, b, a in zip(xs, before, after):
        ax.text(x + 0.2, a, f"{a / b:.2f}x", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("CPU seconds (1 torch thread)")
    ax.set_title("Robustness evaluation time, side by side")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="checkout of the earlier commit (git worktree add DIR COMMIT)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--attack-rows", type=int, default=500, help="rows per model of the attacks suite")
    parser.add_argument("--textures-dir", default="/tmp/hf_nullspace_eval_speed/textures-data")
    parser.add_argument("--early-stop-examples", type=int, default=200)
    parser.add_argument("--part", help=argparse.SUPPRESS)  # one part, run by the main process in a subprocess
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.part:
        name, _, model = args.part.partition(":")
        if name == "attacks":
            result = attacks_suite(model, args.textures_dir, args.repeats, args.attack_rows)
        else:
            result = early_stop_rates(args.textures_dir, args.early_stop_examples)
        print("RESULT " + json.dumps(result))
        return
    if not os.path.isfile(os.path.join(args.textures_dir, "test.parquet")):
        script = os.path.join(ROOT, "trainer_scripts", "train_base_model.py")
        command = [sys.executable, script, "--dataset", "textures", "--data-only", "--data-dir", args.textures_dir]
        subprocess.run(command, check=True, capture_output=True)
    # the parts run at the same time, one process and one thread each (the machine is shared: CPU time is reported)
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    parts = {}
    for part in ("attacks:mnist", "attacks:textures", "early_stop"):
        command = [sys.executable, __file__, *sys.argv[1:], "--part", part]
        parts[part] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    before_commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=args.before, capture_output=True, text=True
    ).stdout.strip()
    stage = mnist_stage(args.before, args.repeats)
    finished = {}
    for part, process in parts.items():
        out, _ = process.communicate()
        finished[part] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    results = {
        "machine": {"platform": platform.platform(), "torch_threads": 1, "load_average": os.getloadavg()},
        "measure": "CPU seconds of each process (one torch thread), all parts running at the same time",
        "before_commit": before_commit,
        "repeats": args.repeats,
        "mnist_stage": stage,
        "attacks_suite": {name: finished[f"attacks:{name}"] for name in MODELS},
        "early_stop": finished["early_stop"],
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "eval_speed.json"), "w") as f:
        json.dump(results, f, indent=2)
    figure(results, os.path.join(RESULTS, "eval_speed.png"))
    print(
        f"\nmnist suite (default run stage): before {stage['cpu_seconds']['before']:.1f} s, after "
        f"{stage['cpu_seconds']['after']:.1f} s CPU, ratio {stage['ratio']:.2f}; clean/FGSM/corruption identical: "
        f"{stage['clean_fgsm_corruption_identical']}, PGD not higher: {stage['pgd_not_higher']}; without its attack "
        f"rows {stage['cpu_seconds']['floor']:.1f} s CPU, {stage['floor_ratio']:.2f} of before"
    )
    for name, entry in results["attacks_suite"].items():
        print(
            f"attacks suite {name}: ours {entry['cpu_seconds']['ours']:.1f} s, torchattacks loop "
            f"{entry['cpu_seconds']['torchattacks']:.1f} s CPU, ratio {entry['ratio']:.2f}"
        )
    print(json.dumps(results["early_stop"], indent=2))


if __name__ == "__main__":
    main()
