"""A training run's folder, ``<home>/runs/<run-id>/``, and the files its stages write and read.

    config.json        {"pretrain": {...}}: the pretraining config (``training.config.PretrainConfig``)
    checkpoint.pt      the resumable pretraining state (``training.pretrain`` owns its contents)
    encoder.pt         the encoder's weights: what fine-tuning, indexing and bundles use
    projection.pt      the projection head's weights (``ProjectionHead``): fine-tuning may start from its first layer
    metrics.jsonl      one JSON object per pretraining epoch
    loss.png           the loss curve
    classifier.pt      fine-tuned encoder + linear head
    finetune.json      the fine-tune's config, data, classes and metrics
    student.pt         the classifier distilled from classifier.pt (same architecture); served when present
    distill.json       the distillation's config, data, classes and metrics
    index/             what publishing packs (``core.index_files``)
    eval/<row>.json    one evaluation row each (``simclr evaluate``)
    report/            REPORT.md and its figures (``simclr report``)

Every reader and writer of these files is here; nothing else parses them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from core.atomic import atomic_write_json
from core.models import EncoderSpec, default_stem, load_encoder


class FinetuneRecord(BaseModel):
    """``finetune.json``: how the run's classifier was trained and what it scored.

    ``eval_split`` names the split the metrics were measured on: ``test``, or
    ``held-out train`` when the data has no test split (then the images scored were
    kept out of the labelled fraction, never trained on).
    """

    config: dict[str, Any]
    data: str
    eval_split: str
    classes: list[str]
    metrics: dict[str, float]


@dataclass(frozen=True)
class RunPaths:
    """The files of one training run."""

    dir: Path

    @property
    def run_id(self) -> str:
        return self.dir.name

    config = property(lambda self: self.dir / "config.json")
    checkpoint = property(lambda self: self.dir / "checkpoint.pt")
    encoder = property(lambda self: self.dir / "encoder.pt")
    projection = property(lambda self: self.dir / "projection.pt")
    metrics = property(lambda self: self.dir / "metrics.jsonl")
    loss_plot = property(lambda self: self.dir / "loss.png")
    classifier = property(lambda self: self.dir / "classifier.pt")
    finetune = property(lambda self: self.dir / "finetune.json")
    student = property(lambda self: self.dir / "student.pt")
    distill = property(lambda self: self.dir / "distill.json")
    index_dir = property(lambda self: self.dir / "index")
    eval_dir = property(lambda self: self.dir / "eval")
    report_dir = property(lambda self: self.dir / "report")
    report = property(lambda self: self.dir / "report" / "REPORT.md")

    # config.json
    def write_config(self, pretrain: dict[str, Any]) -> None:
        atomic_write_json(self.config, {"pretrain": pretrain})

    def pretrain_config(self) -> dict[str, Any]:
        """The pretraining config as saved (field name -> value)."""
        return dict(json.loads(self.config.read_text())["pretrain"])

    def encoder_spec(self) -> EncoderSpec:
        c = self.pretrain_config()
        size = c["image_size"]
        # "auto": the stem default_stem picks for the size; a run made before stems existed had the CIFAR stem.
        stem = c.get("stem", "cifar")
        return EncoderSpec(arch=c["arch"], width=c["width"], image_size=size, expand=c.get("expand", 0),
                           stem=default_stem(size) if stem == "auto" else stem)

    # encoder.pt
    def load_encoder(self) -> Any:
        """The run's pretrained encoder (CPU)."""
        return load_encoder(self.encoder, self.encoder_spec())

    # projection.pt
    def load_projection_layer(self) -> dict[str, Any]:
        """The weights of the projection head's first layer (Linear, BatchNorm), keyed as
        ``Classifier.neck``'s; refused with a clear message for a run pretrained before they were saved."""
        if not self.projection.exists():
            raise FileNotFoundError(f"run {self.run_id} has no {self.projection.name} (pretrained before projection heads were "
                                    "saved): fine-tune it from the encoder")
        state = torch.load(self.projection, map_location="cpu", weights_only=True)
        return {k.removeprefix("net."): v for k, v in state.items() if k.startswith(("net.0.", "net.1."))}

    # metrics.jsonl
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Add one epoch's record. Appended, not rewritten: a crash loses at most the line being written."""
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def metrics_history(self) -> list[dict[str, Any]]:
        """Every epoch's record, oldest first; empty if pretraining has logged nothing."""
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    # finetune.json
    def write_finetune(self, record: FinetuneRecord) -> None:
        atomic_write_json(self.finetune, record.model_dump())

    def read_finetune(self) -> FinetuneRecord | None:
        if not self.finetune.exists():
            return None
        raw = json.loads(self.finetune.read_text())
        raw.setdefault("eval_split", raw.pop("test_split", "test"))  # runs written before eval_split
        return FinetuneRecord.model_validate(raw)

    # distill.json
    def write_distill(self, record: FinetuneRecord) -> None:
        atomic_write_json(self.distill, record.model_dump())

    def read_distill(self) -> FinetuneRecord | None:
        return FinetuneRecord.model_validate_json(self.distill.read_text()) if self.distill.exists() else None

    # eval/<row>.json
    def eval_result(self, row: str) -> Path:
        return self.eval_dir / f"{row}.json"

    def write_eval_row(self, row: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.eval_result(row), record)

    def eval_rows(self) -> dict[str, dict[str, Any]]:
        """The evaluation rows written so far, by name."""
        if not self.eval_dir.is_dir():
            return {}
        return {p.stem: json.loads(p.read_text()) for p in sorted(self.eval_dir.glob("*.json"))}

    # report/
    def report_figure(self, name: str) -> Path:
        """``report/<name>.png``: a figure of ``simclr report``."""
        return self.report_dir / f"{name}.png"
