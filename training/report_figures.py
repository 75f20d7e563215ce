"""The report's figures (matplotlib, Agg): loss curve, kNN accuracy per epoch, a nearest-neighbour grid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def loss_curve(history: list[dict[str, float]], out: Path) -> None:
    """NT-Xent loss against pretraining epoch (from ``metrics.jsonl``), with the kNN monitor's
    top-1 on a second axis when it was measured."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], marker="o", markersize=3)
    ax.set_xlabel("pretraining epoch")
    ax.set_ylabel("NT-Xent loss")
    ax.set_title("SimCLR contrastive loss")
    ax.grid(alpha=0.3)
    knn = [(h["epoch"], h["knn_top1"]) for h in history if "knn_top1" in h]
    if knn:
        ax2 = ax.twinx()
        ax2.plot(*zip(*knn), color="tab:orange", marker="s", markersize=3)
        ax2.set_ylabel("kNN top-1", color="tab:orange")
    _save(fig, out)


def accuracy_curve(history: list[dict[str, float]], references: dict[str, float], out: Path) -> None:
    """kNN test top-1 against pretraining epoch, with ``references`` (name -> top-1) as horizontal lines."""
    fig, ax = plt.subplots(figsize=(6, 4))
    knn = [(h["epoch"], h["knn_top1"]) for h in history if "knn_top1" in h]
    if knn:
        ax.plot(*zip(*knn), marker="o", markersize=3, label="SimCLR, weighted kNN")
    colors = iter(["tab:red", "tab:green", "tab:purple", "tab:brown", "tab:gray"])
    for name, top1 in references.items():
        ax.axhline(top1, linestyle="--", color=next(colors, "black"), label=f"{name} ({top1:.1%})")
    ax.set_xlabel("pretraining epoch")
    ax.set_ylabel("test top-1")
    ax.set_ylim(0, 1)
    ax.set_title("Test accuracy during pretraining")
    ax.grid(alpha=0.3)
    if knn or references:
        ax.legend(fontsize=8, loc="lower right")
    _save(fig, out)


def neighbour_grid(pixels: np.ndarray, labels: np.ndarray, queries: np.ndarray, neighbours: np.ndarray,
                   class_names: list[str], out: Path) -> None:
    """One row per query: the query image then its nearest neighbours, each titled with its label.

    pixels: ``(N, 3, H, W)`` uint8; queries: ``(Q,)`` ids; neighbours: ``(Q, K)`` ids.
    """
    rows, cols = len(queries), 1 + neighbours.shape[1]
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for r, (q, nbrs) in enumerate(zip(queries, neighbours)):
        for c, i in enumerate([q, *nbrs]):
            ax = axes[r][c]
            ax.imshow(pixels[i].transpose(1, 2, 0))
            label = int(labels[i])
            name = class_names[label] if 0 <= label < len(class_names) else str(label)
            ok = c == 0 or label == int(labels[q])
            ax.set_title(("query: " if c == 0 else "") + name, fontsize=7, color="black" if ok else "tab:red")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Nearest neighbours in embedding space (red: another class)", fontsize=9)
    _save(fig, out)


def _save(fig: plt.Figure, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
