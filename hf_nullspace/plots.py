"""Figures a person reads instead of tables. Every function writes one PNG and returns its path."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_noise_norm(
    history: list[dict], path: str, title: str = "L2 norm of the learned noise during training"
) -> str:
    """
    The paper's figure: the norm of each newly synthesised noise against the optimiser step it was made at. Refreshes
    that stopped before reaching epsilon are drawn hollow.

    Args:
        history (`list[dict]`): records with `step`, `norm` and `reached` (as saved by `NullspaceTrainer`); a list of
            histories keyed by label is accepted as `{label: history}`.
    """
    runs = history if isinstance(history, dict) else {"noise": history}
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, records in runs.items():
        steps = [r["step"] for r in records]
        norms = [r["norm"] for r in records]
        (line,) = ax.plot(steps, norms, marker="o", label=label)
        missed = [(s, n) for s, n, r in zip(steps, norms, records) if not r.get("reached", True)]
        if missed:
            ax.scatter(*zip(*missed), s=60, facecolors="white", edgecolors=line.get_color(), zorder=3)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("||v||_2")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(runs) > 1 or any(not r.get("reached", True) for rs in runs.values() for r in rs):
        ax.legend(title="hollow: epsilon not reached" if len(runs) == 1 else None, fontsize=8)
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
