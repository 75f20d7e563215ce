"""The ``simclr`` command: pretrain, finetune, evaluate, report, index, publish, refresh, serve, export.

The top of the project: the one module that imports training, index and service.
Heavy imports (torch, faiss, the service) happen inside each subcommand, so
``simclr --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import replace
from typing import Any

from training.config import PRESETS, DistillConfig, FinetuneConfig, PretrainConfig, with_overrides

P, F, D = PretrainConfig(), FinetuneConfig(), DistillConfig()
EVAL_GROUPS = ("linear", "finetune", "random", "supervised", "knn", "distill")  # training.evaluation_suite.GROUPS, without importing torch
STEMS = ("auto", "cifar", "stride2", "pool")  # "auto" and core.models.STEMS, without importing torch
MIN_IMAGE_SIZE = 16  # the ResNet's last stage is then 2x2 with the CIFAR stem


def duration(text: str) -> float:
    """'90m', '1.5h', '300s' or '300' (seconds) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90m, 1.5h, 300s)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def image_size(text: str) -> int:
    value = int(text)
    if value < MIN_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be >= {MIN_IMAGE_SIZE} pixels, got {value}")
    return value


# One rule for every stage that computes (pretrain, finetune, evaluate, index; refresh passes it to each).
DEVICE_HELP = "where to compute: auto (CUDA when there is one, else the CPU), cpu, cuda, cuda:1 (default: auto)"


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help=DEVICE_HELP)


def recall(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a recall is in (0, 1], got {text}")
    return value


def add_index_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", default="auto", choices=["auto", "exact", "hnsw", "ivf"],
                   help="the FAISS index: exact search, HNSW or IVF; auto = exact while one query costs at most ~8M "
                   "multiply-adds (65k items of 128 dimensions), HNSW above (default: %(default)s)")
    p.add_argument("--target-recall", type=recall, default=0.95,
                   help="recall@10 against exact search that an approximate index's search parameter (efSearch, nprobe) "
                   "is tuned to at build time (default: %(default)s)")


def add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=None, help="artifacts folder (default: $SIMCLR_HOME or ./artifacts)")


def add_data(p: argparse.ArgumentParser, required_default: str | None = "cifar10") -> None:
    default = os.environ.get("SIMCLR_DATA", required_default)
    p.add_argument(
        "--data",
        default=default,
        help="'cifar10' (torchvision download) or an image folder: ImageFolder layout with train/<class>/ and test/<class>/, "
        "or any folder of images without train/ and test/ (all training data; without class subfolders there are no labels: "
        f"no classifier is trained) (default: $SIMCLR_DATA or {required_default})",
    )


def add_pretrain_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pretraining (flags override the preset)")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="a named recipe: quick (minutes on a CPU), cpu (the seed's table in 120 min on 2 cores), seed (the seed's GPU run)")
    g.add_argument("--arch", choices=["resnet18", "resnet34", "resnet50"], help=f"encoder (default: {P.arch})")
    g.add_argument("--width", type=positive_int, help=f"ResNet base width; 32 is a quarter of the FLOPs (default: {P.width})")
    g.add_argument("--expand", type=non_negative_int,
                   help=f"channels of a 1x1 conv + BN + ReLU before pooling, the feature size (0: none, 8 x width features; default: {P.expand})")
    g.add_argument("--image-size", type=image_size,
                   help="side in pixels that images are resized and centre-cropped to, for training, the index and uploads: "
                   "32 suits CIFAR-10, 64 photos (from 64 px a stride-2 stem keeps the cost near 32 px's; a preset's --crop-size "
                   "scales with it) "
                   f"(default: {P.image_size})")
    g.add_argument("--stem", choices=STEMS,
                   help="the encoder's first layer: cifar (3x3 conv, stride 1), stride2 (the same with stride 2: half the "
                   "feature-map side, about a quarter of the cost), pool (cifar then a 2x2 max-pool: half the side, the first "
                   f"layer at full resolution); auto: cifar below 64 px, stride2 from 64 px (default: {P.stem})")
    g.add_argument("--epochs", type=positive_int, help=f"pretraining epochs (default: {P.epochs})")
    g.add_argument("--time-budget", type=duration, help="fit the schedule to this wall-clock time instead of epochs, e.g. 90m (default: none)")
    g.add_argument("--batch-size", type=positive_int, help=f"images per step, two views each (default: {P.batch_size})")
    g.add_argument("--optimizer", choices=["adam", "sgd", "lars"], help=f"sgd is Nesterov momentum (default: {P.optimizer})")
    g.add_argument("--lr", type=float, help=f"peak learning rate (default: {P.lr})")
    g.add_argument("--weight-decay", type=float, help=f"(default: {P.weight_decay})")
    g.add_argument("--temperature", type=float, help=f"NT-Xent temperature (default: {P.temperature})")
    g.add_argument("--crop-size", type=positive_int, help="side of the augmented views in pixels (default: the image size)")
    g.add_argument("--small-views", type=non_negative_int, help=f"multi-crop: this many extra small views per image (default: {P.small_views})")
    g.add_argument("--small-view-size", type=positive_int, help=f"side of the small views in pixels (default: {P.small_view_size})")
    g.add_argument("--crop-size-start", type=positive_int,
                   help="progressive view size: views grow from this side to --crop-size over the schedule (default: none)")
    g.add_argument("--proj-dim", type=positive_int, help=f"projection head output size (default: {P.proj_dim})")
    g.add_argument("--limit", type=positive_int, help="use at most N images of each split, a fixed random subset (default: all)")
    g.add_argument("--knn-bank", type=positive_int, help="train images in the kNN monitor's memory bank (default: all)")
    g.add_argument("--knn-every", type=int, help=f"epochs between kNN accuracy checks, 0 for never (default: {P.knn_every})")
    g.add_argument("--seed", type=int, help=f"seeds the whole run: initialisation, augmentation, order (default: {P.seed})")
    g.add_argument("--validation", type=non_negative_int,
                   help="labelled training images held out of every stage and scored, to choose recipes on instead of the "
                   f"test split; a stratified subset, the same for every seed (default: {P.validation}; the cpu preset: 5000)")
    g.add_argument("--device", help=DEVICE_HELP)
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model: ~1 min to compile, faster steps (default: off)")
    g.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm across torchrun processes (default: off)")


def add_finetune_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    g = p.add_argument_group("fine-tuning")
    g.add_argument(f"--{prefix}epochs", dest="ft_epochs", type=positive_int, help=f"fine-tuning epochs (default: {F.epochs})")
    g.add_argument(f"--{prefix}time-budget", dest="ft_time_budget", type=duration, help="fine-tune for this wall-clock time instead (default: none)")
    g.add_argument("--label-fraction", type=float, help=f"stratified labelled fraction of train (default: {F.label_fraction})")
    g.add_argument(f"--{prefix}lr", dest="ft_lr", type=float, help=f"Adam learning rate of the head (default: {F.lr})")
    g.add_argument("--encoder-lr-scale", type=float, help=f"encoder learning rate = lr x this (default: {F.encoder_lr_scale})")
    g.add_argument("--label-smoothing", type=float, help=f"cross-entropy label smoothing (default: {F.label_smoothing})")
    g.add_argument("--head-init", choices=("random", "probe"), help=f"probe: start from a linear probe's head, LP-FT (default: {F.head_init})")
    g.add_argument("--cutout", type=int, help=f"side in pixels of a Cutout square added to crop + flip, 0 = none (default: {F.cutout})")
    g.add_argument("--head-from", choices=("encoder", "projection"),
                   help=f"projection: fine-tune from the projection head's first layer, SimCLRv2 (default: {F.head_from})")


def add_run_stage(p: argparse.ArgumentParser, what: str) -> None:
    """The options of a stage that trains on a run's images: home, data, run, limit, preset, device."""
    add_home(p)
    add_data(p, None)
    p.add_argument("--run", help="run id (default: the newest run)")
    p.add_argument("--limit", type=positive_int, help="at most N images per split (default: the run's)")
    p.add_argument("--preset", choices=sorted(PRESETS), help=f"take {what} settings from a preset")
    add_device(p)


def add_distill_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distillation (a student trained on every training image against the fine-tuned classifier)")
    g.add_argument("--distill-time", type=duration,
                   help="wall-clock time of distillation, e.g. 30m; 0 for none (default: the preset's; without "
                   "one, refresh does not distil and distill runs --distill-epochs)")
    g.add_argument("--distill-epochs", type=positive_int, help=f"distil for this many epochs instead (default: {D.epochs})")
    g.add_argument("--distill-lr", type=float, help=f"Adam learning rate of the student (default: {D.lr})")
    g.add_argument("--distill-temperature", type=float, help=f"softmax temperature of the teacher's targets (default: {D.temperature})")


def resolve(base: Any, preset: dict[str, Any], flags: dict[str, Any]) -> Any:
    """``base`` with the preset's fields, then the flags given. An explicit epoch
    count without a time budget drops the preset's time budget."""
    cfg = with_overrides(base, preset)
    if flags.get("epochs") is not None and flags.get("time_budget") is None:
        cfg = replace(cfg, time_budget=None)
    return with_overrides(cfg, flags)


def pretrain_config(a: argparse.Namespace) -> PretrainConfig:
    preset = dict(PRESETS.get(a.preset or "", {}).get("pretrain", {}))
    size = getattr(a, "image_size", None)
    if size and "crop_size" in preset:  # a preset's view size is for 32 px images: the same fraction of other sizes
        preset["crop_size"] = max(1, round(preset["crop_size"] * size / P.image_size))
    return resolve(P, preset, vars(a))


def finetune_config(a: argparse.Namespace) -> FinetuneConfig:
    flags = {
        "epochs": a.ft_epochs, "time_budget": a.ft_time_budget, "label_fraction": a.label_fraction, "lr": a.ft_lr,
        "encoder_lr_scale": a.encoder_lr_scale, "label_smoothing": a.label_smoothing, "head_init": a.head_init,
        "head_from": a.head_from, "cutout": a.cutout, "device": a.device,
    }  # fmt: skip
    return resolve(F, PRESETS.get(a.preset or "", {}).get("finetune", {}), flags)


def distill_config(a: argparse.Namespace) -> DistillConfig | None:
    """The distillation settings the flags and preset ask for; None when they ask for none (no preset
    entry and no --distill-* flag, or --distill-time 0)."""
    preset = PRESETS.get(a.preset or "", {}).get("distill")
    flags = {"epochs": a.distill_epochs, "time_budget": a.distill_time, "lr": a.distill_lr,
             "temperature": a.distill_temperature, "device": a.device}
    if a.distill_time == 0 or (preset is None and all(v is None for k, v in flags.items() if k != "device")):
        return None
    return resolve(D, preset or {}, flags)


def cmd_pretrain(a: argparse.Namespace) -> None:
    from core.home import ArtifactHome
    from training import pretrain

    home = ArtifactHome(a.home)
    if a.resume:
        from training.config import run_config

        run = home.run(a.resume)
        pretrain.main(run_config(run), home, run)
    else:
        run = pretrain.main(pretrain_config(a), home)
    if run is not None:  # None on torchrun's other ranks
        print(f"run: {run.dir}")


def cmd_finetune(a: argparse.Namespace) -> None:
    from core.home import ArtifactHome
    from training import finetune

    home = ArtifactHome(a.home)
    finetune.main(finetune_config(a), home, home.run(a.run), data=a.data, limit=a.limit)


def cmd_distill(a: argparse.Namespace) -> None:
    from core.home import ArtifactHome
    from training import distill

    home = ArtifactHome(a.home)
    cfg = distill_config(a)
    if cfg is None:  # the command itself asks for a distillation: the defaults, unless --distill-time 0
        if a.distill_time == 0:
            sys.exit("simclr distill: error: --distill-time 0 asks for no distillation")
        cfg = resolve(D, {}, {"device": a.device})
    distill.main(cfg, home, home.run(a.run), data=a.data, limit=a.limit)


def cmd_index(a: argparse.Namespace) -> None:
    from core.home import ArtifactHome
    from index import build

    home = ArtifactHome(a.home)
    build.main(home.run(a.run), home.data, data=a.data, split=a.split, limit=a.limit, device=a.device or "auto",
               kind=a.index, target_recall=a.target_recall)


def cmd_publish(a: argparse.Namespace) -> None:
    from core.home import ArtifactHome
    from training.publish import publish_run

    home = ArtifactHome(a.home)
    run = home.run(a.run)
    version = publish_run(home, run, make_current=not a.no_current)
    print(f"published {version} -> {home.bundle_dir(version)}")
    if not run.classifier.exists():
        print(f"run {run.run_id} was not fine-tuned: the model has no classifier (POST /classify answers 409); "
              f"`simclr finetune --run {run.run_id} --data DIR` on a folder with class subfolders, then publish, adds one")


def missing_labels(home: Any, run: Any) -> str | None:
    """Why the run's training images cannot fine-tune a classifier, or None if they can (each has a class)."""
    from core.datasets import load_split
    from training.config import run_config

    cfg = run_config(run)
    train = load_split(cfg.data, "train", data_dir=home.data, image_size=cfg.image_size, limit=cfg.limit, seed=cfg.seed)
    if train.labelled:
        return None
    if not train.classes:
        return f"{cfg.data} has no class subfolders, so its images have no labels"
    return f"{int((train.labels < 0).sum())} of the {len(train)} training images of {cfg.data} are not in a class subfolder"


def cmd_refresh(a: argparse.Namespace) -> None:
    from core.home import ArtifactHome
    from index import build
    from training import distill, finetune, pretrain
    from training.publish import publish_run

    home = ArtifactHome(a.home)
    run = pretrain.main(pretrain_config(a), home)
    if run is None:  # torchrun's other ranks: rank 0 fine-tunes, indexes and publishes
        return
    why = missing_labels(home, run)
    if why is None:
        finetune.main(finetune_config(a), home, run)
        dcfg = distill_config(a)
        if dcfg is not None:  # distill.main says so and skips when every training image is labelled
            distill.main(dcfg, home, run)
    else:
        print(f"skipping fine-tuning: {why}. The model is published without a classifier: it serves embeddings and "
              "neighbours, and POST /classify answers 409. For a classifier, put the images in one subfolder per class "
              "(DIR/train/<class>/) and run `simclr refresh --data DIR`")
    build.main(run, home.data, limit=a.limit, device=a.device or "auto", kind=a.index, target_recall=a.target_recall)
    version = publish_run(home, run)
    print(f"published {version}; a running `simclr serve --home {home.root}` picks it up")


def cmd_evaluate(a: argparse.Namespace) -> None:
    from core.home import ArtifactHome
    from training import evaluation_suite

    groups = evaluation_suite.parse_groups(a.rows)
    flags = {"epochs": a.epochs, "time_budget": a.time_budget, "device": a.device}
    cfg = resolve(F, PRESETS.get(a.preset or "", {}).get("finetune", {}), flags)
    home = ArtifactHome(a.home)
    evaluation_suite.main(cfg, home, home.run(a.run), groups, data=a.data, limit=a.limit, distill_cfg=distill_config(a))


def cmd_report(a: argparse.Namespace) -> None:
    from core.home import ArtifactHome
    from training import report

    if a.seed_table:
        import json
        from pathlib import Path

        print(report.seed_runs_table(json.loads(Path(a.seed_table).read_text())))
        return
    home = ArtifactHome(a.home)
    report.main(home, home.run(a.run))


def cmd_serve(a: argparse.Namespace) -> None:
    from service import serve

    serve.main(a)


def cmd_export(a: argparse.Namespace) -> None:
    from pathlib import Path

    from core.collection import CollectionError
    from core.home import ArtifactHome
    from index.export import EMBEDDINGS_FILE, ITEMS_FILE, export

    try:
        done = export(ArtifactHome(a.home), Path(a.out))
    except CollectionError as e:
        sys.exit(f"simclr export: error: {e}")
    print(f"exported {done.count} items ({done.added} added to the collection, {done.reembedded} of them embedded now) of model "
          f"{done.version}: {Path(a.out) / EMBEDDINGS_FILE} (float32, {done.count} x {done.dim}), {Path(a.out) / ITEMS_FILE}")


def build_parser() -> argparse.ArgumentParser:
    from service import serve  # its flags; it imports nothing heavy

    parser = argparse.ArgumentParser(prog="simclr", description="SimCLR image embeddings: train, index, publish, serve.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pretrain", help="self-supervised SimCLR pretraining of an encoder")
    add_home(p)
    add_data(p)
    add_pretrain_flags(p)
    p.add_argument("--resume", metavar="RUN_ID", help="continue this run from its last checkpoint, with its saved config")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune encoder + linear head on a labelled fraction; writes its top-1/top-3 "
                       "on the test split (without one: on the train images it did not train on)")
    add_run_stage(p, "fine-tuning")
    add_finetune_flags(p, prefix="")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("distill", help="train a student classifier on every training image against the fine-tuned one "
                       "(and the labelled fraction's labels); the run then publishes the student")
    add_run_stage(p, "distillation")
    add_distill_flags(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("index", help="embed an image split with a run's encoder into a FAISS index")
    add_home(p)
    add_data(p, None)
    p.add_argument("--run", help="run id (default: the newest run)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="split to index (default: test)")
    p.add_argument("--limit", type=positive_int, help="at most N images (default: all)")
    add_index_flags(p)
    add_device(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("publish", help="pack a run into an immutable model bundle and make it current")
    add_home(p)
    p.add_argument("--run", help="run id (default: the newest run)")
    p.add_argument("--no-current", action="store_true", help="write the bundle but leave the current pointer")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("refresh", help="pretrain, fine-tune (when every image has a class subfolder), index and publish: "
                       "a new model for the running service")
    add_home(p)
    add_data(p)
    add_pretrain_flags(p)
    add_finetune_flags(p, prefix="ft-")
    add_distill_flags(p)
    add_index_flags(p)
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser("evaluate", help="the seed's table for a run: linear eval, fine-tune, random init, supervised, kNN")
    add_home(p)
    add_data(p, None)
    p.add_argument("--run", help="run id (default: the newest run)")
    p.add_argument("--rows", default=",".join(g for g in EVAL_GROUPS if g != "distill"),
                   help="comma-separated row groups: linear (frozen SimCLR encoder, 10%% and 100%% labels), finetune "
                   "(end to end, 10%%), random (linear and fine-tune from a random encoder), supervised (from scratch, "
                   "10%% and 100%%), knn (weighted, k=200, T=0.1), distill (the random-init fine-tune distilled as "
                   "`simclr distill` does: its baseline) (default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, help=f"epochs of every end-to-end row (default: {F.epochs}, or the preset's time budget)")
    p.add_argument("--time-budget", type=duration, help="wall-clock time of every end-to-end row instead, e.g. 25m (default: none)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="take the end-to-end rows' settings from a preset (default: none)")
    p.add_argument("--limit", type=positive_int, help="at most N images per split (default: the run's)")
    add_device(p)
    add_distill_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="write runs/<id>/report/REPORT.md: the seed's table beside ours, loss, accuracy and neighbour figures")
    add_home(p)
    p.add_argument("--run", help="run id (default: the newest run)")
    p.add_argument("--seed-table", help="instead: print the table of a seed-table result (benchmarks/seed_table.py's JSON): "
                   "the mean over its seeds, each run's figures and the seed's column")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="the HTTP service over the current model bundle (the same as `python -m service`)")
    serve.add_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="write the current version's items (the indexed images and the collection's): "
                       "embeddings.npy (float32, N x D) and items.jsonl ({id, payload} per row, same order)")
    add_home(p)
    p.add_argument("--out", required=True, help="folder to write embeddings.npy, items.jsonl and export.json into")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from service.threads import process_defaults

        process_defaults()  # before anything loads torch
    from core.bundles import BundleError
    from core.datasets import DataError
    from training.pretrain import Interrupted

    try:
        args.func(args)
    except (BundleError, DataError, OSError, ValueError) as e:  # a refused bundle, FileNotFoundError, a taken port, ...: one line, no traceback
        sys.exit(f"simclr {args.command}: error: {e}")
    except Interrupted as e:
        print(f"simclr {args.command}: {e}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
