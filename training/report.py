"""The ``report`` stage: ``report/REPORT.md`` (the seed's table beside ours) and its figures.

Reads what the other stages wrote into the run (``metrics.jsonl``, ``eval/*.json``,
``index/``); a row that was not evaluated shows as "not run".
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.atomic import atomic_write_bytes
from core.datasets import has_split, load_split
from core.home import ArtifactHome
from core.index_files import FILES as INDEX_FILES
from core.index_files import read_index_dir
from core.models import embed
from core.runs import RunPaths
from training import report_figures
from training.config import run_config

# The seed's GPU numbers (its Table 1): ResNet-50, 50 epochs, heads on 10% of the labels.
SEED_TABLE = {
    ("simclr", "finetune"): (0.774, 0.948),
    ("simclr", "linear"): (0.713, 0.936),
    ("random", "finetune"): (0.382, 0.601),
    ("random", "linear"): (0.156, 0.344),
}
NOT_RUN = "not run"
N_QUERIES, N_NEIGHBOURS = 4, 5


def cell(row: dict[str, Any] | None) -> str:
    return NOT_RUN if row is None else f"{row['top1']:.1%} / {row['top3']:.1%}"


def seed_cell(key: tuple[str, str]) -> str:
    top1, top3 = SEED_TABLE[key]
    return f"{top1:.1%} / {top3:.1%}"


def table(results: dict[str, dict[str, Any]]) -> str:
    """The seed's table (rows SimCLR, random init) with our numbers beside the seed's, then the other rows."""
    lines = [
        "| | end-to-end fine-tune, 10% labels | seed | linear eval, 10% labels | seed | linear eval, 100% labels |",
        "|---|---|---|---|---|---|",
    ]
    for kind, name in (("simclr", "SimCLR"), ("random", "random init")):
        lines.append(
            f"| {name} | {cell(results.get(f'{kind}_finetune_10'))} | {seed_cell((kind, 'finetune'))} "
            f"| {cell(results.get(f'{kind}_linear_10'))} | {seed_cell((kind, 'linear'))} "
            f"| {cell(results.get(f'{kind}_linear_100'))} |"
        )
    knn = results.get("simclr_knn")
    knn_name = f"SimCLR, weighted kNN (k={knn['k']}, T={knn['temperature']}), 100% labels" if knn else "SimCLR, weighted kNN, 100% labels"
    lines += [
        "",
        "| | top-1 / top-3 |",
        "|---|---|",
        f"| {knn_name} | {cell(knn)} |",
        f"| supervised from scratch, 10% labels | {cell(results.get('supervised_10'))} |",
        f"| supervised from scratch, 100% labels | {cell(results.get('supervised_100'))} |",
    ]
    return "\n".join(lines)


def distilled_lines(run: RunPaths, results: dict[str, dict[str, Any]]) -> list[str]:
    """The distilled classifiers (``simclr distill``'s student, the baseline row) as table rows, if any."""
    lines = []
    student = run.read_distill()
    if student is not None:
        m = student.metrics
        lines.append(f"| distilled from the SimCLR fine-tune (served), 10% labels | {m['distill_top1']:.1%} / {m['distill_top3']:.1%} |")
    if "random_distill_10" in results:
        lines.append(f"| distilled from the random-init fine-tune, 10% labels | {cell(results['random_distill_10'])} |")
    return lines


def finetune_recipe(results: dict[str, dict[str, Any]]) -> str | None:
    """One sentence naming the end-to-end rows' fine-tune recipe (the first such row's), or None."""
    rows = ("simclr_finetune_10", "random_finetune_10", "supervised_100")
    c = next((results[n]["finetune_config"] for n in rows if "finetune_config" in results.get(n, {})), None)
    if c is None:
        return None
    extras = [
        f"label smoothing {c['label_smoothing']}" if c.get("label_smoothing") else "",
        f"Cutout {c['cutout']} px" if c.get("cutout") else "",
        f"encoder lr x{c['encoder_lr_scale']}" if c.get("encoder_lr_scale", 1.0) != 1.0 else "",
        "head from a linear probe (LP-FT)" if c.get("head_init") == "probe" else "",
        "from the projection head's first layer (SimCLRv2)" if c.get("head_from") == "projection" else "",
    ]
    length = f"{c['time_budget'] / 60:g} min each" if c.get("time_budget") else f"{c['epochs']} epochs each"
    epochs = ", ".join(f"{name} {row['epochs']:.0f}" for name, row in results.items() if "epochs" in row)
    augment = ", ".join(["random crop + flip", *filter(None, extras)])
    return (f"End-to-end rows: Adam lr {c['lr']}, weight decay {c['weight_decay']}, batch {c['batch_size']}, cosine, "
            f"{augment}; {length} (epochs: {epochs}).")


def class_names(run: RunPaths, results: dict[str, dict[str, Any]]) -> list[str] | None:
    for row in results.values():
        if row.get("classes"):
            return list(row["classes"])
    record = run.read_finetune()
    return record.classes if record and record.classes else None


def embedded_items(home: ArtifactHome, run: RunPaths, names: list[str] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(vectors, pixels, labels, class names): from the run's index if it has one, else by embedding the test split."""
    if all((run.index_dir / f).exists() for f in INDEX_FILES):
        items = read_index_dir(run.index_dir)
        vectors = items.index.reconstruct_n(0, items.index.ntotal)
        return vectors, np.asarray(items.pixels), items.labels, names or items.classes
    cfg = run_config(run)
    split = "test" if has_split(cfg.data, "test") else "train"
    data = load_split(cfg.data, split, data_dir=home.data, image_size=cfg.image_size, limit=cfg.limit, seed=cfg.seed)
    progress = functools.partial(tqdm, desc=f"embedding {split}", unit="batch", leave=False)
    vectors = embed(run.load_encoder(), data.images, progress=progress).numpy()
    return vectors, data.images.numpy(), data.labels.numpy(), names or data.classes


def nearest(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = torch.from_numpy(vectors[queries]) @ torch.from_numpy(vectors).T
    sims[torch.arange(len(queries)), torch.from_numpy(queries)] = -float("inf")  # not itself
    return sims.topk(min(k, len(vectors) - 1), dim=1).indices.numpy()


SEED_RUN_ROWS = (  # (label, key in a seed-table run, key in the seed's column)
    ("SimCLR, fine-tuned end to end, 10% labels, top-1", "finetune_top1", "finetune_top1"),
    ("SimCLR, fine-tuned end to end, 10% labels, top-3", "finetune_top3", "finetune_top3"),
    ("SimCLR, linear eval, 10% labels, top-1", "linear_top1", "linear_top1"),
    ("SimCLR, linear eval, 10% labels, top-3", "linear_top3", "linear_top3"),
    ("distilled from the SimCLR fine-tune, top-1", "distill_top1", None),
    ("distilled from the SimCLR fine-tune, top-3", "distill_top3", None),
    ("distilled from the random-init fine-tune (baseline), top-1", "baseline_distill_top1", None),
    ("SimCLR, weighted kNN, all labels, top-1", "knn_top1", None),
    ("validation: fine-tune / linear / distilled / baseline / kNN, top-1", None, None),
    ("minutes: pretraining + fine-tuning, distillation", None, None),
)


def seed_runs_table(result: dict[str, Any]) -> str:
    """A seed table's runs (``benchmarks/seed_table.py``) as Markdown: the mean over the seeds, each run's
    figures and the seed's column; top-1 / top-3 in percent on the test split, validation figures below."""
    runs, mean, paper = result["runs"], result["mean"], result.get("seed_paper", {})
    head = [f"mean of {len(runs)}", *[f"seed {r['seed']}" for r in runs], "the seed's (ResNet-50, GPU)"]
    lines = ["| | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    val_keys = ("finetune_val_top1", "linear_val_top1", "distill_val_top1", "baseline_distill_val_top1", "knn_val_top1")

    def figure(entry: dict[str, Any], key: str | None, label: str) -> str:
        if label.startswith("validation"):
            return " / ".join(f"{entry[k]:.1f}" if k in entry else "-" for k in val_keys)
        if label.startswith("minutes"):
            ft = entry.get("pretrain_minutes", 0) + entry.get("finetune_minutes", 0)
            return f"{ft:.0f}, {entry['distill_minutes']:.0f}" if "distill_minutes" in entry else "-"
        return f"{entry[key]:.1f}" if key in entry else "-"

    for label, key, seed_key in SEED_RUN_ROWS:
        cells = [figure(mean, key, label), *[figure(r, key, label) for r in runs]]
        cells.append(f"{paper[seed_key]:.1f}" if seed_key and seed_key in paper else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(home: ArtifactHome, run: RunPaths, seed: int = 0) -> Path:
    """Write ``report/REPORT.md`` and its PNGs into ``run``; returns the report's path."""
    results = run.eval_rows()
    history = run.metrics_history()
    cfg = run_config(run)
    figures = {}
    if history:
        report_figures.loss_curve(history, run.report_figure("loss"))
        figures["Contrastive loss"] = "loss"
    refs = {f"supervised, {p}% labels": results[f"supervised_{p}"]["top1"] for p in (10, 100) if f"supervised_{p}" in results}
    report_figures.accuracy_curve(history, refs, run.report_figure("accuracy"))
    scored = "Validation" if cfg.validation else "Test"  # the monitor scores the validation split when the run holds one out
    figures[f"{scored} accuracy (weighted kNN) during pretraining, supervised baselines as lines"] = "accuracy"
    vectors, pixels, labels, names = embedded_items(home, run, class_names(run, results))
    if len(vectors) > 1:
        queries = np.sort(np.random.default_rng(seed).choice(len(vectors), size=min(N_QUERIES, len(vectors)), replace=False))
        report_figures.neighbour_grid(pixels, labels, queries, nearest(vectors, queries, N_NEIGHBOURS), names, run.report_figure("neighbours"))
        figures[f"{N_NEIGHBOURS} nearest neighbours of {len(queries)} random images"] = "neighbours"
    epochs = history[-1]["epoch"] if history else 0
    minutes = history[-1].get("train_seconds", 0) / 60 if history else 0
    seconds = {r: round(v.get("seconds", 0.0)) for r, v in results.items()}
    text = "\n".join([
        f"# SimCLR evaluation: run {run.run_id}",
        "",
        f"Encoder {cfg.arch} (width {cfg.width}{f', {cfg.expand} features' if cfg.expand else ''}), "
        f"pretrained {epochs} epochs ({minutes:.0f} min) on `{cfg.data}`: "
        f"batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr}, temperature {cfg.temperature}, projection {cfg.proj_dim}, "
        f"views {f'{cfg.crop_size_start} growing to ' if cfg.crop_size_start else ''}{cfg.crop_size or cfg.image_size} px"
        f"{f' plus {cfg.small_views} of {cfg.small_view_size} px (multi-crop)' if cfg.small_views else ''}.",
        "Top-1 / top-3 on the whole test split. \"seed\": the seed's GPU run (ResNet-50, 50 epochs). "
        "Heads on 10% of the labels use the stratified subset of `simclr finetune`.",
        *([recipe] if (recipe := finetune_recipe(results)) else []),
        "",
        table(results),
        *distilled_lines(run, results),
        "",
        f"Seconds per row (training only): {json.dumps(seconds) if seconds else 'none'}",
        "",
        *[f"## {title}\n\n![{name}]({name}.png)\n" for title, name in figures.items()],
    ])
    atomic_write_bytes(run.report, (text + "\n").encode())
    print(f"report: {run.report}")
    return run.report
