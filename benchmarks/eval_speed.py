"""
Time of the robustness evaluation, this code against a copy of an earlier commit and against a straightforward
torchattacks loop; plus the early-stop rates behind the protocol cost of docs/cost.md.

Every part runs alone, one after the other, in fresh processes: lanes (threads) use the machine's cores, so the parts
must not share them. Each reports its wall seconds (what a user waits) and its CPU seconds (the work, summed over
threads). Run it on an otherwise idle machine; `--repeats` alternates the runs and reports medians.

1. `make run`'s robustness stage, as `make run` itself times it ("Stage seconds" of `trainer_scripts/run.py`
   under `accelerate launch`, which gives the process one torch thread): this tree against the checkout `--before`
   (`git worktree add DIR COMMIT`), each with its own embedded default, written to /tmp with another output folder
   (`--make-run`, optional: about 2 minutes a run).
2. The same stage's workload with a fixed model: the `mnist` suite with the bundled vit-tiny-mnist scored as "base"
   (a path) and "finetuned" (a model object) on the 1,000 bundled digits, batch size 250, seed 42, one torch thread
   (`OMP_NUM_THREADS=1`, as `accelerate launch` sets it): "before" imports `--before`; "after" this tree with its
   default lanes (the cores that torch's one thread leaves idle); "after, 1 lane" this tree with `workers=1` (what
   the attack changes alone save); "after, 2 threads" one lane with two torch threads (PyTorch's own way to use the
   second core); "floor" this tree, default lanes, without the attack rows. The report rows of
   before and after are compared.
3. `attacks` suite (clean, FGSM and PGD-10 with step eps/4 at eps 1, 2, 4, 8 /255) on both bundled models
   (`--attack-rows` evenly spaced rows of the bundled digits; of the texture test patches, built by
   `trainer_scripts/train_base_model.py`), against a loop that scores the same rows in batches of 250 with
   `torchattacks.FGSM` and `torchattacks.PGD` (random start): one clean forward, then every example attacked and
   scored for every budget. Twice: on one core (one torch thread, one lane: the work), and on the whole machine
   (ours with its default lanes, the loop with one torch thread per core, PyTorch's own way to use them).
4. Early stop on the bundled models for CW-L2 (`suites.CW_PARAMS`) and Patch-Fool (`suites.PATCHFOOL_PARAMS`, with
   patch selection on the average attention of all layers: the bundled ViTs have 4 layers): clean accuracy, share
   of attacked examples never broken, and steps taken by broken and by robust examples, from which docs/cost.md
   recomputes the protocol's passes.

Prints a summary, writes benchmarks/results/eval_speed.json and eval_speed.png.

    git worktree add /tmp/hf-nullspace-before 17a39b1
    python benchmarks/eval_speed.py --before /tmp/hf-nullspace-before --repeats 2 --make-run
"""

import argparse
import json
import os
import platform
import shutil
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
if "floor" in sys.argv:  # the suite without its attack rows
    suite.evaluations = [e for e in suite.evaluations if e.attack is None]
options = {"workers": 1} if "one-lane" in sys.argv or "two-threads" in sys.argv else {}
if "two-threads" in sys.argv:  # the other way to use a second core: PyTorch's own threads
    torch.set_num_threads(2)
start, cpu = time.perf_counter(), time.process_time()
report = evaluate_robustness({"base": path, "finetuned": finetuned}, image_processor=processor, suite=suite,
                             max_samples=1000, batch_size=250, seed=42, progress=False, **options)
seconds, wall = time.process_time() - cpu, time.perf_counter() - start
values = {m["name"]: {r["benchmark"]: r["value"] for r in m["results"]} for m in report.to_dict()["models"]}
print("RESULT " + json.dumps({"seconds": seconds, "wall_seconds": wall, "values": values}))
"""


def run_stage(code_root: str, *flags: str) -> dict:
    """One run of the stage's workload in a fresh process (one torch thread) importing `code_root`."""
    env = dict(os.environ, PYTHONPATH=code_root, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", STAGE, os.path.join(ASSETS, MODELS["mnist"]), *flags]
    done = subprocess.run(command, env=env, cwd=code_root, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the mnist stage failed with exit code {done.returncode}:\n{done.stderr[-2000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


def mnist_stage(before: str, repeats: int) -> dict:
    """The runs one after the other, alternating, `repeats` times (medians): before, after (default lanes), after with
    one lane, and the floor (after, default lanes, without the attack rows)."""
    variants = {
        "before": (before,),
        "after": (ROOT,),
        "after_one_lane": (ROOT, "one-lane"),
        "after_two_threads": (ROOT, "two-threads"),
        "floor": (ROOT, "floor"),
    }
    runs = {label: [] for label in variants}
    for _ in range(repeats):
        for label, arguments in variants.items():
            runs[label].append(run_stage(*arguments))
            last = runs[label][-1]
            print(f"  mnist stage {label}: {last['wall_seconds']:.1f} s wall, {last['seconds']:.1f} s CPU", flush=True)
    wall = {label: statistics.median(r["wall_seconds"] for r in result) for label, result in runs.items()}
    cpu = {label: statistics.median(r["seconds"] for r in result) for label, result in runs.items()}
    values = {label: runs[label][0]["values"] for label in ("before", "after", "after_one_lane", "after_two_threads")}
    same, pgd_not_higher = [], []
    for model, rows in values["before"].items():
        for row, value in rows.items():
            new = values["after"][model][row]
            (pgd_not_higher if row.startswith("pgd") else same).append(
                new <= value if row.startswith("pgd") else new == value
            )
    return {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "runs": runs,
        "ratio": wall["after"] / wall["before"],
        "ratio_one_lane": wall["after_one_lane"] / wall["before"],
        "cpu_ratio": cpu["after"] / cpu["before"],
        "floor_ratio": wall["floor"] / wall["before"],
        "values": values,
        "clean_fgsm_corruption_identical": all(same),
        "pgd_not_higher": all(pgd_not_higher),
        "lanes_identical_to_one_lane": values["after"] == values["after_one_lane"] == values["after_two_threads"],
        "speedup_two_lanes": wall["after_one_lane"] / wall["after"],
        "speedup_two_threads": wall["after_one_lane"] / wall["after_two_threads"],
    }


def make_run_stage(before: str, repeats: int) -> dict:
    """`accelerate launch trainer_scripts/run.py` (the embedded default) in both trees, one after the other: the
    seconds of its "robustness evaluation" stage, as the job prints them."""
    runs = {"before": [], "after": []}
    for _ in range(repeats):
        for label, root in (("before", before), ("after", ROOT)):
            output = os.path.join("/tmp", f"hf_nullspace_eval_speed_run_{label}")
            shutil.rmtree(output, ignore_errors=True)
            # the tree's embedded default with another output folder, as the one argument both trees take
            with open(os.path.join(root, "hf_nullspace", "assets", "default_run.json")) as f:
                config = dict(json.load(f), output_dir=output)
            with open(f"{output}.json", "w") as f:
                json.dump(config, f)
            command = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch"]
            command += ["trainer_scripts/run.py", f"{output}.json"]
            env = dict(os.environ, PYTHONPATH=root, HF_HUB_OFFLINE="1")
            done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("Stage seconds: ")]
            if done.returncode or not lines:
                raise RuntimeError(f"make run ({label}) failed:\n{done.stderr[-2000:]}")
            stages = json.loads(lines[-1][len("Stage seconds: ") :])
            runs[label].append(stages)
            print(f"  make run {label}: robustness stage {stages['robustness evaluation']:.1f} s", flush=True)
    seconds = {label: statistics.median(r["robustness evaluation"] for r in result) for label, result in runs.items()}
    return {"stage_seconds": seconds, "ratio": seconds["after"] / seconds["before"], "runs": runs}


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
    """Ours and the torchattacks loop in turn, on one core and on the whole machine, `repeats` times (medians)."""
    import torch
    from transformers import AutoImageProcessor

    from hf_nullspace.classifier import load_classifier
    from hf_nullspace.data import spec_from_source
    from hf_nullspace.robustness import evaluate_robustness, get_suite
    from hf_nullspace.robustness.evaluate import evaluation_workers
    from hf_nullspace.robustness.model import PixelSpaceClassifier

    torch.manual_seed(0)
    cores = len(os.sched_getaffinity(0))
    budgets = tuple(k / 255 for k in (1, 2, 4, 8))
    path = os.path.join(ASSETS, MODELS[name])
    model = load_classifier(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    data, images, labels = _rows(name, textures_dir, rows)
    suite = get_suite("attacks", data=spec_from_source(data, split="test", name=name, num_classes=10))
    wrapped = PixelSpaceClassifier.from_image_processor(model, processor).eval()
    # (torch threads, workers) of ours, torch threads of the loop
    settings = {"one_core": ((1, 1), 1), "machine": ((1, None), cores)}
    times = {s: {"ours": [], "torchattacks": [], "ours_cpu": [], "torchattacks_cpu": []} for s in settings}
    lanes = {}
    for _ in range(repeats):
        for setting, ((threads, workers), loop_threads) in settings.items():
            torch.set_num_threads(threads)
            lanes[setting] = evaluation_workers("cpu", workers)
            start, cpu = time.perf_counter(), time.process_time()
            report = evaluate_robustness(
                {name: model},
                processor,
                suite=suite,
                max_samples=rows,
                batch_size=250,
                seed=0,
                progress=False,
                workers=workers,
            )
            times[setting]["ours"].append(time.perf_counter() - start)
            times[setting]["ours_cpu"].append(time.process_time() - cpu)
            torch.set_num_threads(loop_threads)
            start, cpu = time.perf_counter(), time.process_time()
            oracle = torchattacks_loop(wrapped, images, labels, budgets, 250)
            times[setting]["torchattacks"].append(time.perf_counter() - start)
            times[setting]["torchattacks_cpu"].append(time.process_time() - cpu)
    ours = {r["benchmark"]: r["value"] for r in report.to_dict()["models"][0]["results"]}
    result = {"rows": rows, "cores": cores, "accuracy": {"ours": ours, "torchattacks": oracle}}
    for setting, ((threads, _), loop_threads) in settings.items():
        wall = {key: statistics.median(times[setting][key]) for key in ("ours", "torchattacks")}
        result[setting] = {
            "ours": f"{threads} torch thread, {lanes[setting]} lane(s)",
            "torchattacks": f"{loop_threads} torch thread(s)",
            "wall_seconds": wall,
            "all_seconds": times[setting],
            "ratio": wall["ours"] / wall["torchattacks"],
        }
    return result


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

    stage = results["mnist_stage"]["wall_seconds"]
    labels, before, after = ["mnist suite\n(default run stage)"], [stage["before"]], [stage["after"]]
    if "make_run" in results:
        run = results["make_run"]["stage_seconds"]
        labels.insert(0, "make run's\nrobustness stage")
        before.insert(0, run["before"])
        after.insert(0, run["after"])
    for name, entry in results["attacks_suite"].items():
        for setting, title in (("one_core", "one core"), ("machine", "whole machine")):
            labels.append(f"attacks suite\n{name}, {title}")
            before.append(entry[setting]["wall_seconds"]["torchattacks"])
            after.append(entry[setting]["wall_seconds"]["ours"])
    fig, ax = plt.subplots(figsize=(10, 4))
    xs = range(len(labels))
    commit = results["before_commit"]
    ax.bar([x - 0.2 for x in xs], before, 0.4, label=f"before ({commit}) / torchattacks loop")
    ax.bar([x + 0.2 for x in xs], after, 0.4, label="this code")
    stage_x = labels.index("mnist suite\n(default run stage)")
    ax.bar([stage_x + 0.2], [stage["floor"]], 0.4, fill=False, hatch="//", label="this code without the attack rows")
    for x, b, a in zip(xs, before, after):
        ax.text(x + 0.2, a, f"{a / b:.2f}x", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("wall seconds, each part alone")
    ax.set_title(f"Robustness evaluation time, {results['machine']['cores']} cores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="checkout of the earlier commit (git worktree add DIR COMMIT)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--make-run", action="store_true", help="also time make run's stage in both trees")
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
    before_commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=args.before, capture_output=True, text=True
    ).stdout.strip()
    load = os.getloadavg()
    results = {
        "machine": {"platform": platform.platform(), "cores": len(os.sched_getaffinity(0)), "load_average": load},
        "measure": "wall and CPU seconds of each part run alone, one after the other, in fresh processes",
        "before_commit": before_commit,
        "repeats": args.repeats,
    }
    if args.make_run:
        results["make_run"] = make_run_stage(args.before, args.repeats)
    results["mnist_stage"] = mnist_stage(args.before, args.repeats)
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    finished = {}
    for part in ("attacks:mnist", "attacks:textures", "early_stop"):  # one at a time: lanes use every core
        command = [sys.executable, __file__, *sys.argv[1:], "--part", part]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"part {part} failed:\n{done.stderr[-2000:]}")
        finished[part] = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
        print(f"  {part} done", flush=True)
    results["attacks_suite"] = {name: finished[f"attacks:{name}"] for name in MODELS}
    results["early_stop"] = finished["early_stop"]
    results["machine"]["load_average_after"] = os.getloadavg()
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "eval_speed.json"), "w") as f:
        json.dump(results, f, indent=2)
    figure(results, os.path.join(RESULTS, "eval_speed.png"))
    stage = results["mnist_stage"]
    if args.make_run:
        run = results["make_run"]
        print(
            f"\nmake run's robustness stage: before {run['stage_seconds']['before']:.1f} s, after "
            f"{run['stage_seconds']['after']:.1f} s, ratio {run['ratio']:.2f}"
        )
    wall, cpu = stage["wall_seconds"], stage["cpu_seconds"]
    print(
        f"mnist suite (default run stage, fixed model): before {wall['before']:.1f} s, after {wall['after']:.1f} s "
        f"wall, ratio {stage['ratio']:.2f} (one lane: {stage['ratio_one_lane']:.2f}; CPU seconds {cpu['before']:.1f} "
        f"-> {cpu['after']:.1f}, {stage['cpu_ratio']:.2f}); clean/FGSM/corruption identical: "
        f"{stage['clean_fgsm_corruption_identical']}, PGD not higher: {stage['pgd_not_higher']}, lanes = one lane: "
        f"{stage['lanes_identical_to_one_lane']}; lanes {stage['speedup_two_lanes']:.2f}x one lane, two threads "
        f"{stage['speedup_two_threads']:.2f}x; without its attack rows {wall['floor']:.1f} s, "
        f"{stage['floor_ratio']:.2f} of before"
    )
    for name, entry in results["attacks_suite"].items():
        for setting in ("one_core", "machine"):
            part = entry[setting]
            print(
                f"attacks suite {name}, {setting}: ours ({part['ours']}) {part['wall_seconds']['ours']:.1f} s, "
                f"torchattacks loop ({part['torchattacks']}) {part['wall_seconds']['torchattacks']:.1f} s, "
                f"ratio {part['ratio']:.2f}"
            )
    print(json.dumps(results["early_stop"], indent=2))


if __name__ == "__main__":
    main()
