"""The ``evaluate`` stage: every row of the seed's table (and more) for one run, one JSON per row.

Rows (``eval/<row>.json`` in the run, each with top-1 / top-3 on the whole test split):

- ``linear``:     SimCLR encoder frozen, linear classifier on 10% and on 100% of the labels
- ``finetune``:   SimCLR encoder + linear head trained end to end on the 10% subset
- ``random``:     the same three from a randomly initialised encoder of the same architecture
- ``supervised``: a random-init classifier trained end to end (crop + flip) on 10% and 100%
                  of the labels; the 10% row *is* the random-init fine-tune, so it is reused
                  when that row ran with the same settings
- ``knn``:        weighted kNN (k, T of the run's config: 200, 0.1 by default), all train labels
- ``distill``:    the baseline of ``simclr distill``: the random-init fine-tune on 10% (the
                  ``random_finetune_10`` row, trained again unless this evaluation just did) as
                  the teacher, distilled the same way on every training image

The labelled 10% is the stratified subset ``training.finetune`` uses (``core.datasets.split_train``).
When the run holds out a validation split, no row trains on it ("all labels" are those outside
it) and every row also records ``val_top1`` / ``val_top3`` on it.
Features for the linear and kNN rows are computed once per encoder.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from core.datasets import DataError, ImageSet, has_split, load_split, split_train
from core.devices import pick_device, set_threads
from core.home import ArtifactHome
from core.models import Classifier, build_encoder, embed, feature_dim
from core.runs import RunPaths
from training.config import DistillConfig, FinetuneConfig, run_config, with_run_seed
from training.distill import distill
from training.evaluate import topk_accuracy, weighted_knn_predict
from training.finetune import finetune
from training.linear_eval import linear_probe
from training.runtime import keep_freed_memory

GROUPS: dict[str, tuple[str, ...]] = {
    "linear": ("simclr_linear_10", "simclr_linear_100"),
    "finetune": ("simclr_finetune_10",),
    "random": ("random_linear_10", "random_linear_100", "random_finetune_10"),
    "supervised": ("supervised_10", "supervised_100"),
    "knn": ("simclr_knn",),
    "distill": ("random_distill_10",),
}
FRACTION = 0.1  # the labelled subset of every "_10" row, as in the seed
ALL_ROWS = tuple(row for rows in GROUPS.values() for row in rows)


def _bar(desc: str) -> Callable[[Iterable[int]], Iterable[int]]:
    return functools.partial(tqdm, desc=desc, unit="batch", leave=False)


def parse_groups(text: str) -> list[str]:
    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise ValueError(f"unknown evaluation rows {unknown or text!r}; choose from {','.join(GROUPS)}")
    return groups


class Suite:
    """One run's evaluation: its data on the device, its encoders and their features."""

    def __init__(self, home: ArtifactHome, run: RunPaths, cfg: FinetuneConfig, data: str | None = None, limit: int | None = None,
                 distill_cfg: DistillConfig | None = None) -> None:
        self.run = run
        self.pcfg = run_config(run)
        self.cfg = with_run_seed(cfg, self.pcfg)
        self.distill_cfg = with_run_seed(distill_cfg or DistillConfig(device=cfg.device), self.pcfg)
        self.spec = self.pcfg.encoder_spec
        self.device = pick_device(cfg.device)
        self.src = data or self.pcfg.data
        lim = limit if limit is not None else self.pcfg.limit
        train = load_split(self.src, "train", data_dir=home.data, image_size=self.pcfg.image_size, limit=lim, seed=self.pcfg.seed)
        if not train.labelled:
            raise DataError(f"evaluation needs labels: {self.src} must have one subfolder per class")
        self.test_split = "test" if has_split(self.src, "test") else "train"
        test = load_split(self.src, self.test_split, data_dir=home.data, image_size=self.pcfg.image_size, limit=lim, seed=self.pcfg.seed)
        self.split = split_train(train.labels, FRACTION, self.pcfg.validation)
        self.train = train.to(self.device)
        self.test = test.to(self.device)
        self.validation: ImageSet | None = self.train.subset(self.split.validation.to(self.device)) if len(self.split.validation) else None
        self.classes = train.classes
        self._features: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        self.models: dict[str, Classifier] = {}  # end-to-end rows' classifiers, for the distillation baseline
        self.results: dict[str, dict[str, Any]] = {}

    def encoder(self, kind: str) -> torch.nn.Module:
        """A fresh copy of the run's SimCLR encoder, or a random one (seeded) of the same architecture."""
        if kind == "simclr":
            return self.run.load_encoder()
        torch.manual_seed(self.cfg.seed)
        return build_encoder(self.spec)

    def labelled(self, fraction: float) -> torch.Tensor:
        """The labelled images of a row: the 10% subset, or every image outside the validation split."""
        if fraction >= 1:
            return self.split.unlabelled_pool.to(self.device)
        if fraction != FRACTION:
            return split_train(self.train.labels.cpu(), fraction, self.pcfg.validation).labelled.to(self.device)
        return self.split.labelled.to(self.device)

    def features(self, kind: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        if kind not in self._features:
            t = time.perf_counter()
            enc = self.encoder(kind).to(self.device).to(memory_format=torch.channels_last)
            train_x = embed(enc, self.train.images, device=self.device, progress=_bar(f"{kind} features (train)"))
            test_x = embed(enc, self.test.images, device=self.device, progress=_bar(f"{kind} features (test)"))
            self._features[kind] = (train_x, test_x, time.perf_counter() - t)
        return self._features[kind]

    def save(self, row: str, acc: dict[str, float], **info: Any) -> dict[str, Any]:
        val = {k: acc[k] for k in ("val_top1", "val_top3") if k in acc}
        if val:
            val["n_val"] = len(self.split.validation)
        record = {
            "row": row, "top1": acc["top1"], "top3": acc["top3"], "n_test": len(self.test), "test_split": self.test_split, **val,
            "data": self.src, "classes": self.classes, "run_id": self.run.run_id, **info,
        }
        self.run.write_eval_row(row, record)
        self.results[row] = record
        print(f"{row}: top-1 {acc['top1']:.1%}, top-3 {acc['top3']:.1%}")
        return record

    def linear(self, kind: str, fraction: float) -> dict[str, Any]:
        train_x, test_x, feat_s = self.features(kind)
        keep = self.labelled(fraction)
        t = time.perf_counter()
        held = self.split.validation.to(self.device)
        validation = (train_x[held], self.train.labels[held]) if len(held) else None
        acc = linear_probe(train_x[keep], self.train.labels[keep], test_x, self.test.labels, len(self.classes), seed=self.cfg.seed,
                           validation=validation)
        row = f"{kind}_linear_{round(fraction * 100)}"
        return self.save(row, acc, encoder=kind, method="linear", label_fraction=fraction, n_train=len(keep),
                         weight_decay=acc["weight_decay"], seconds=time.perf_counter() - t, feature_seconds=feat_s)

    def end_to_end(self, kind: str, fraction: float, row: str, method: str = "finetune") -> dict[str, Any]:
        cfg = replace(self.cfg, label_fraction=fraction)
        keep = self.labelled(fraction)
        labelled = self.train.subset(keep)
        print(f"{row}: end to end on {len(labelled)} labelled images ({fraction:.0%}), {kind} init")
        # SimCLRv2's start from the projection head's first layer exists for the pretrained encoder only;
        # the random-init rows get the same layer at random (finetune).
        projection = self.run.load_projection_layer() if kind == "simclr" and cfg.head_from == "projection" else None
        model, m = finetune(self.encoder(kind), feature_dim(self.spec), labelled, self.test, cfg, self.validation, projection=projection)
        self.models[row] = model
        return self.save(row, {k.removeprefix("finetune_"): v for k, v in m.items()}, encoder=kind, method=method,
                         label_fraction=fraction, n_train=len(keep), seconds=m["finetune_seconds"],
                         epochs=m["finetune_epochs"], finetune_config=cfg.as_dict())

    def knn(self) -> dict[str, Any]:
        train_x, test_x, feat_s = self.features("simclr")
        t = time.perf_counter()
        bank = self.split.unlabelled_pool.to(self.device)

        def knn_accuracy(x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
            scores = weighted_knn_predict(train_x[bank], self.train.labels[bank], x, n_classes=len(self.classes),
                                          k=self.pcfg.knn_k, temperature=self.pcfg.knn_temperature)
            return topk_accuracy(scores.cpu(), labels.cpu(), (1, 3))

        acc = knn_accuracy(test_x, self.test.labels)
        held = self.split.validation.to(self.device)
        if len(held):
            acc |= {f"val_{k}": v for k, v in knn_accuracy(train_x[held], self.train.labels[held]).items()}
        return self.save("simclr_knn", acc, encoder="simclr", method="knn", label_fraction=1.0, n_train=len(bank),
                         k=self.pcfg.knn_k, temperature=self.pcfg.knn_temperature, seconds=time.perf_counter() - t,
                         feature_seconds=feat_s)

    def supervised_10(self) -> dict[str, Any]:
        """The random-init fine-tune on 10% is this baseline: reuse it when it ran with these settings."""
        random_row = self.results.get("random_finetune_10") or self.run.eval_rows().get("random_finetune_10")
        want = replace(self.cfg, label_fraction=FRACTION).as_dict()
        if random_row and random_row.get("finetune_config") == want:
            info = {k: v for k, v in random_row.items() if k not in ("row", "top1", "top3")}
            return self.save("supervised_10", random_row, **{**info, "method": "supervised", "same_as": "random_finetune_10"})
        return self.end_to_end("random", FRACTION, "supervised_10", "supervised")

    def random_distill(self) -> dict[str, Any]:
        """The fair baseline of distillation: the same recipe, taught by the random-init fine-tune on 10%."""
        teacher = self.models.get("random_finetune_10")
        if teacher is None:
            self.end_to_end("random", FRACTION, "random_finetune_10")
            teacher = self.models["random_finetune_10"]
        print(f"random_distill_10: distilling the random-init fine-tune on {len(self.split.unlabelled_pool)} images")
        _, m = distill(teacher, self.train, self.split, self.test, self.distill_cfg, self.validation)
        return self.save("random_distill_10", {k.removeprefix("distill_"): v for k, v in m.items()}, encoder="random",
                         method="distill", label_fraction=FRACTION, n_train=len(self.split.unlabelled_pool),
                         seconds=m["distill_seconds"], epochs=m["distill_epochs"], teacher="random_finetune_10",
                         distill_config=self.distill_cfg.as_dict())

    def run_group(self, group: str) -> None:
        frac = FRACTION
        if group == "linear":
            self.linear("simclr", frac)
            self.linear("simclr", 1.0)
        elif group == "finetune":
            self.end_to_end("simclr", frac, "simclr_finetune_10")
        elif group == "random":
            self.linear("random", frac)
            self.linear("random", 1.0)
            self.end_to_end("random", frac, "random_finetune_10")
        elif group == "supervised":
            self.supervised_10()
            self.end_to_end("random", 1.0, "supervised_100", "supervised")
        elif group == "knn":
            self.knn()
        elif group == "distill":
            self.random_distill()


def main(cfg: FinetuneConfig, home: ArtifactHome, run: RunPaths, groups: list[str], data: str | None = None,
         limit: int | None = None, distill_cfg: DistillConfig | None = None) -> dict[str, dict[str, Any]]:
    """Run the named row groups on ``run``; returns the rows written, by name."""
    set_threads()
    keep_freed_memory()
    suite = Suite(home, run, cfg, data=data, limit=limit, distill_cfg=distill_cfg)
    print(f"evaluating run {run.run_id} on {len(suite.train)} train / {len(suite.test)} {suite.test_split} images: {', '.join(groups)}")
    for group in groups:
        t = time.perf_counter()
        suite.run_group(group)
        print(f"[{group}] done in {time.perf_counter() - t:.1f}s")
    return suite.results
