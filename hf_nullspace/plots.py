"""Figures a person reads instead of tables. Every function writes one PNG and returns its path."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _save(fig, path: str, tight_layout: bool = True) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if tight_layout:
        fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # "tight" keeps legends placed outside the axes
    plt.close(fig)
    return path


def _legend_outside(ax, **kwargs):
    """The legend to the right of the axes, where it can cover no bar, line or point."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)


def _benchmark_name(name: str) -> str:
    from .robustness.budgets import readable_benchmark

    return readable_benchmark(name)


def _budget(value: float) -> str:
    from .robustness.budgets import format_budget

    return format_budget(value) if value > 0 else "0"


def plot_noise_norm(
    history: list[dict], path: str, title: str = "L2 norm of the learned noise during training"
) -> str:
    """
    The paper's figure: the norm of each newly synthesised noise against the optimiser step it was made at. Refreshes
    that stopped before reaching epsilon are drawn hollow; refreshes that found no epsilon boundary (`no_boundary`:
    no noise, the clean loss until the next refresh) are drawn as crosses at 0.

    Args:
        history (`list[dict]`): records with `step`, `norm` and `reached` (as saved by `NullspaceTrainer`); a list of
            histories keyed by label is accepted as `{label: history}`.
    """
    runs = history if isinstance(history, dict) else {"noise": history}
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, records in runs.items():
        steps = [r["step"] for r in records]
        norms = [r["norm"] for r in records]
        found = [(s, n) for s, n, r in zip(steps, norms, records) if not r.get("no_boundary")]
        (line,) = ax.plot([s for s, _ in found], [n for _, n in found], marker="o", label=label)
        missed = [
            (s, n) for s, n, r in zip(steps, norms, records) if not r.get("reached", True) and not r.get("no_boundary")
        ]
        if missed:
            ax.scatter(*zip(*missed), s=60, facecolors="white", edgecolors=line.get_color(), zorder=3)
        skipped = [(s, n) for s, n, r in zip(steps, norms, records) if r.get("no_boundary")]
        if skipped:
            ax.scatter(*zip(*skipped), s=60, marker="x", color=line.get_color(), zorder=3)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("||v||_2")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    records = [r for rs in runs.values() for r in rs]
    if len(runs) > 1 or any(not r.get("reached", True) for r in records):
        notes = ["hollow: epsilon not reached"] * any(
            not r.get("reached", True) and not r.get("no_boundary") for r in records
        )
        notes += ["x: no epsilon boundary yet (clean loss)"] * any(r.get("no_boundary") for r in records)
        _legend_outside(ax, title="\n".join(notes) if len(runs) == 1 and notes else None, fontsize=8)
    return _save(fig, path)


def plot_closure(records: list[dict], key: str, epsilon: float, path: str, title: str) -> str:
    """The epsilon statistic over scales (`key="scale"`) or convex weights (`key="weight"`), against epsilon."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot([r[key] for r in records], [r["statistic"] for r in records], marker="o")
    ax.axhline(epsilon, color="red", linestyle="--", label=f"epsilon = {epsilon}")
    ax.set_xlabel(key)
    ax.set_ylabel("epsilon statistic")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_patterns(patterns: torch.Tensor, path: str, title: str) -> str:
    """A row of (c, r, r) patterns (e.g. nullspace basis vectors), each scaled to [0, 1] for display."""
    count = patterns.shape[0]
    fig, axes = plt.subplots(1, max(count, 1), figsize=(1.6 * max(count, 1), 1.9), squeeze=False)
    for ax, pattern in zip(axes[0], patterns):
        image = pattern.float()
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
        ax.imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if image.shape[0] == 1 else None)
        ax.axis("off")
    if count == 0:
        axes[0][0].text(0.5, 0.5, "nullspace is trivial", ha="center", va="center")
        axes[0][0].axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _accuracy_rows(model: dict, key: str = "results") -> list[dict]:
    return [r for r in model[key] if r["metric"] == "accuracy" and r["value"] is not None]


def plot_benchmark_accuracy(report: dict, path: str, title: str = "Top-1 accuracy per benchmark") -> str:
    """Grouped bars: one group per benchmark (clean, attacks, corruptions, shifts), one bar per model."""
    models = report["models"]
    benchmarks = [r["benchmark"] for r in _accuracy_rows(models[0])]
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(benchmarks) + 2), 4))
    for i, model in enumerate(models):
        values = {r["benchmark"]: 100 * r["value"] for r in _accuracy_rows(model)}
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(benchmarks))]
        ax.bar(xs, [values.get(b, 0) for b in benchmarks], width=width, label=model["name"])
    ax.set_xticks(range(len(benchmarks)))
    ax.set_xticklabels([_benchmark_name(b) for b in benchmarks], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.6, len(benchmarks) - 0.4)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(ax, fontsize=8)
    return _save(fig, path)


def plot_corruption_severity(report: dict, path: str, title: str = "Accuracy per corruption severity") -> str:
    """One panel per corruption: accuracy against severity 1-5, one line per model."""
    models = report["models"]
    corruptions = list(dict.fromkeys(r["corruption"] for r in models[0]["details"]))
    columns = min(5, len(corruptions))
    rows = -(-len(corruptions) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.2 * rows), squeeze=False, sharey=True)
    for ax, corruption in zip(axes.flat, corruptions):
        for model in models:
            points = sorted(
                (r["severity"], 100 * r["value"]) for r in model["details"] if r["corruption"] == corruption
            )
            ax.plot(*zip(*points), marker="o", markersize=3, label=model["name"])
        ax.set_title(corruption, fontsize=8)
        ax.set_xticks([1, 2, 3, 4, 5])
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(corruptions) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("top-1 (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return _save(fig, path, tight_layout=False)


def plot_attack_budgets(report: dict, path: str, title: str = "Accuracy against attack budget") -> str:
    """Accuracy against the attack's epsilon (0 = clean), one line per attack and model."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for model in report["models"]:
        clean = next((100 * r["value"] for r in _accuracy_rows(model) if r["benchmark"] == "clean"), None)
        attacks = {}
        for r in _accuracy_rows(model):
            if r["group"] == "attack" and "epsilon" in r["params"]:
                attacks.setdefault(r["benchmark"].split("@")[0], []).append((r["params"]["epsilon"], 100 * r["value"]))
        for attack, points in attacks.items():
            points = ([(0.0, clean)] if clean is not None else []) + sorted(points)
            ax.plot(*zip(*points), marker="o", label=f"{model['name']}: {attack}")
    budgets = sorted({float(x) for line in ax.get_lines() for x in line.get_xdata()})
    ax.set_xticks(budgets)
    ax.set_xticklabels([_budget(b) for b in budgets], rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("epsilon (pixels in [0, 1])")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_outside(ax, fontsize=7)
    return _save(fig, path)
