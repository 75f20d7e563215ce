"""Fine-tune recipes on one pretrained encoder, compared on held-out training images.

usage: python experiments/finetune_trials.py --home H --run RUN_ID --epochs 100 \\
           --trial preset: --trial v2:head_from=projection [--out FILE]

Each trial fine-tunes the run's encoder as ``simclr finetune --preset cpu`` does (the
stratified 10% labelled subset, same seed), with the named FinetuneConfig fields
changed, for a fixed number of epochs: a time budget would make trials depend on the
machine's load. It reports top-1 on other *training* images (the figure to choose a recipe
by: the run's validation split when pretraining held one out, as the cpu preset does;
for older runs, --validation-images drawn from outside the labelled subset) and top-1 / top-3
on the test split (recorded, not for choosing). Trials run one after the other with every core the
process may use (``taskset`` runs two side by side). Writes JSON with the command.

At 5,000 validation images one top-1 figure has a standard error of ~0.6 points, as large
as the differences between recipes; ``--validation-images 45000`` (every training image
outside the labelled 10%, ~0.2 points) costs one more forward pass over them per trial.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from core.datasets import load_split, outside, split_train
from core.devices import set_threads
from core.home import ArtifactHome
from core.models import feature_dim
from training.config import CPU, FinetuneConfig, run_config, with_overrides, with_run_seed
from training.evaluate import predict, topk_accuracy
from training.finetune import finetune

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from machine import result_header, scrub_paths  # noqa: E402


def parse_trial(text: str) -> tuple[str, dict[str, object]]:
    """``name:field=value,field=value`` -> (name, overrides), values typed as the field's default."""
    name, _, rest = text.partition(":")
    types = {f.name: type(f.default) for f in dataclasses.fields(FinetuneConfig)}
    overrides: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"unknown FinetuneConfig field {key!r}; choose from {', '.join(types)}")
        overrides[key] = types[key](value) if types[key] is not type(None) else float(value)
    return name, overrides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True, help="artifact home holding the run")
    p.add_argument("--run", required=True, help="run id (a folder under HOME/runs)")
    p.add_argument("--epochs", type=int, default=100, help="fine-tuning epochs per trial (default: %(default)s)")
    p.add_argument("--trial", action="append", required=True, help="name:field=value,... over the cpu preset's fine-tune")
    p.add_argument("--validation-images", type=int, default=5000,
                   help="training images outside the labelled subset to choose by, at most 45000 for CIFAR-10 (default: %(default)s)")
    p.add_argument("--out", default="experiments/results/finetune_trials.json", help="(default: %(default)s)")
    a = p.parse_args()
    if a.validation_images < 1:
        p.error(f"--validation-images must be at least 1, got {a.validation_images}")
    set_threads()
    home = ArtifactHome(a.home)
    try:
        run = home.run(a.run)
    except FileNotFoundError as e:
        p.error(str(e))
    pcfg = run_config(run)
    train = load_split(pcfg.data, "train", data_dir=home.data, image_size=pcfg.image_size, seed=pcfg.seed)
    test = load_split(pcfg.data, "test", data_dir=home.data, image_size=pcfg.image_size, seed=pcfg.seed)
    # The preset's recipe without its time budget: epochs, so that machine load does not change a trial.
    preset = {k: v for k, v in CPU["finetune"].items() if k != "time_budget"}
    base = with_run_seed(with_overrides(FinetuneConfig(), {**preset, "epochs": a.epochs}), pcfg)
    split = split_train(train.labels, base.label_fraction, pcfg.validation)
    if pcfg.validation:  # the run held a validation split out of pretraining: choose on it
        val_idx = split.validation
    else:  # a run made before validation splits: training images outside the labelled subset
        others = outside(split.labelled, len(train))
        if a.validation_images > len(others):
            p.error(f"--validation-images {a.validation_images}: only {len(others)} training images are outside the labelled subset")
        val_idx = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(1))[: a.validation_images]]
    labelled, val = train.subset(split.labelled), train.subset(val_idx)
    trials = []
    for text in a.trial:
        name, overrides = parse_trial(text)
        cfg = dataclasses.replace(base, **overrides)
        projection = run.load_projection_layer() if cfg.head_from == "projection" else None
        model, metrics = finetune(run.load_encoder(), feature_dim(pcfg.encoder_spec), labelled, val, cfg, projection=projection)
        test_acc = topk_accuracy(predict(model, test.images), test.labels, (1, 3))
        trials.append({"name": name, "overrides": overrides, "config": cfg.as_dict(), "epochs": metrics["finetune_epochs"],
                       "seconds": round(metrics["finetune_seconds"], 1), "validation_top1": metrics["finetune_top1"],
                       "test_top1": test_acc["top1"], "test_top3": test_acc["top3"]})
        print(f"{name}: validation {metrics['finetune_top1']:.1%}, test {test_acc['top1']:.1%} / {test_acc['top3']:.1%}", flush=True)
        paths = {a.home: "<home>", pcfg.data: "<data>"}
        result = scrub_paths({**result_header("finetune_trials", sys.argv, paths), "run": a.run, "pretrain_config": pcfg.as_dict(),
                              "validation": (f"the run's validation split ({len(val_idx)} training images held out of pretraining)" if pcfg.validation
                                             else f"{len(val_idx)} training images outside the labelled subset"), "trials": trials}, paths)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")  # after each trial: a stopped run keeps what it did


if __name__ == "__main__":
    main()
