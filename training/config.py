"""One config object per stage, saved with every checkpoint and result (as nanoGPT does).

Presets name tested recipes; command-line flags override single fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from training.budget import Budget

if TYPE_CHECKING:  # torch is imported only when a config is turned into a model
    from core.models import EncoderSpec
    from core.runs import RunPaths


@dataclass(frozen=True)
class PretrainConfig:
    data: str = "cifar10"
    arch: str = "resnet18"
    width: int = 64
    image_size: int = 32
    expand: int = 0  # channels of a 1x1 expansion before pooling (core.models.EncoderSpec; 0: none)
    # "cifar", "stride2", "pool" (core.models.STEMS), or "auto": cifar below 64 px, stride2 from 64 px (core.models.default_stem)
    stem: str = "auto"
    # Side of the augmented views; None: image_size. The random resized crop zooms in
    # anyway, and a view's cost scales with its pixels (24 px: 0.56x of 32 px).
    crop_size: int | None = None
    # Progressive view size: the views grow from this side to crop_size (in steps of 4 px) as the
    # schedule progresses, so early epochs cost less (None: crop_size throughout).
    crop_size_start: int | None = None
    # Multi-crop (SwAV): this many more views per image, small_view_size px from small crops
    # (training.pretrain.SMALL_VIEW_SCALE), each paired with the two full views in the loss (0: none).
    small_views: int = 0
    small_view_size: int = 12
    proj_dim: int = 1024
    temperature: float = 0.5
    batch_size: int = 256
    epochs: int = 50
    time_budget: float | None = None  # seconds; fits warm-up + cosine to wall-clock instead of epochs
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup: float = 0.02  # fraction of the schedule spent warming up linearly
    limit: int | None = None
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_bank: int | None = None  # train images in the kNN memory bank (None: all)
    knn_every: int = 1  # epochs between kNN evaluations (0: never)
    # Labelled training images held out of every stage and scored instead of the test split when
    # choosing a recipe (core.datasets.split_train); 0: none, the kNN monitor scores the test split.
    validation: int = 0
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True
    sync_bn: bool = False  # SyncBatchNorm across torchrun processes
    compile: bool = False  # torch.compile the model (a one-off compile of ~1 min; faster steps after)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def encoder_spec(self) -> EncoderSpec:
        from core.models import EncoderSpec, default_stem

        stem = default_stem(self.image_size) if self.stem == "auto" else self.stem
        return EncoderSpec(self.arch, self.width, self.image_size, self.expand, stem)

    @property
    def budget(self) -> Budget:
        return Budget(self.epochs, self.time_budget)


@dataclass(frozen=True)
class FinetuneConfig:
    label_fraction: float = 0.1
    epochs: int = 30
    time_budget: float | None = None
    batch_size: int = 256
    lr: float = 1e-3
    # The encoder's learning rate is ``lr * encoder_lr_scale``: below 1 a pretrained encoder
    # moves less than the new head, so fine-tuning refines its features instead of overwriting them.
    encoder_lr_scale: float = 1.0
    label_smoothing: float = 0.0
    cutout: int = 0  # side in pixels of the Cutout square added to crop + flip (0: none)
    # "probe": start from a linear head fitted on the frozen encoder's features (LP-FT,
    # Kumar et al. 2022), so the first steps do not push a random head's gradients into
    # the encoder; "random": a freshly initialised head.
    head_init: str = "random"
    # "encoder": the linear head on the encoder's features; "projection": between them the projection
    # head's first layer (Linear, BatchNorm, ReLU) as pretrained, fine-tuned with the encoder (SimCLRv2).
    head_from: str = "encoder"
    weight_decay: float = 1e-5
    seed: int | None = None  # None: the run's pretraining seed
    device: str = "auto"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def budget(self) -> Budget:
        return Budget(self.epochs, self.time_budget)


@dataclass(frozen=True)
class DistillConfig(FinetuneConfig):
    """Distillation (``training.distill``) trains like fine-tuning, on soft targets; the fields it adds."""

    epochs: int = 10
    # Of the teacher's softmax: above 1 its targets are softer (more of its ranking of the wrong classes).
    temperature: float = 1.0


# The seed's GPU run: ResNet-50, 50 epochs, Adam 1e-3, temperature 0.5, projection 1024.
SEED = {"pretrain": {"arch": "resnet50", "epochs": 50}, "finetune": {}}

# A few minutes on two CPU cores: a narrow ResNet-18, each stage on a wall-clock budget.
QUICK = {
    "pretrain": {
        "width": 16,
        "proj_dim": 128,
        "temperature": 0.2,
        "optimizer": "sgd",
        "lr": 0.3,
        "weight_decay": 5e-4,
        "time_budget": 330.0,
        "knn_bank": 10000,
    },
    "finetune": {"time_budget": 150.0},
}

# The seed's table on two CPU cores in 120 minutes: 103 min pretraining (data loading and kNN
# monitoring included: the stage took 103.2) and 15 min fine-tuning. Optimiser, temperature and projection
# are those the issue measured (SGD Nesterov lr 0.15, wd 5e-4, T 0.2; with ResNet-18 at base
# width 32 and 26.7 epochs: linear 67.6%, fine-tune 76.3%). The encoder is narrower, base
# width 16, and the augmented views are 24 px (the random resized crop resampled to 24x24;
# evaluation stays at 32 px): on this project's AVX512-BF16 machine width 32 does ~355
# views/s, width 16 ~1,100 at 32 px and ~1,950 at 24 px, i.e. ~20, ~55 and ~100 epochs in
# 95 min, and at these budgets epochs count more than width or view size (24 px against 32 px
# at 25 min on the validation split: kNN 59.5% vs 55.0%, linear eval 66.2% vs 62.5%). A 1x1 conv to 512
# channels before pooling gives the linear classifier 512 features instead of 128 at about no cost
# in views/s (25 min each on the validation split: linear eval 66.2% vs 65.0%, fine-tune 75.4% both;
# benchmarks/CPU_RECIPE.md). 5,000 labelled training images are held out of every stage as the
# validation split recipe choices are made on.
CPU = {
    "pretrain": {
        "width": 16,
        "expand": 512,
        "crop_size": 24,
        "batch_size": 256,
        "proj_dim": 128,
        "temperature": 0.2,
        "optimizer": "sgd",
        "lr": 0.15,
        "weight_decay": 5e-4,
        "time_budget": 103 * 60.0,
        "knn_bank": 10000,
        "knn_every": 2,
        "validation": 5000,
    },
    # Fine-tuning 5,000 labelled images for 15 min is ~200 epochs: regularised with label
    # smoothing 0.1, a 16 px Cutout square (DeVries & Taylor 2017) and weight decay 5e-4. On
    # the validation split smoothing + Cutout scored 75.4% against 74.8% without (100 epochs on a
    # 25-min encoder; within one standard error: benchmarks/CPU_RECIPE.md). Fine-tuning from the
    # projection head's first layer (head_from="projection", SimCLRv2) scored 74.8%: not used.
    # Every end-to-end row of the table (random init, supervised) uses the same recipe.
    "finetune": {"time_budget": 15 * 60.0, "label_smoothing": 0.1, "cutout": 16, "weight_decay": 5e-4},
    # The student (training.distill): 30 min on every image outside the validation split, Adam
    # 1e-3 (on the quick preset's teacher, 5 min each, validation 63.4% -> 65.1% at 1e-3, 64.1% at
    # 3e-4: experiments/results/distill_probe.json), with the fine-tune's Cutout and weight decay.
    "distill": {"time_budget": 30 * 60.0, "cutout": 16, "weight_decay": 5e-4},
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {"seed": SEED, "quick": QUICK, "cpu": CPU}


def with_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """``cfg`` with the fields named in ``overrides`` replaced (``None`` values are ignored)."""
    names = {f.name for f in fields(cfg)}
    return replace(cfg, **{k: v for k, v in overrides.items() if k in names and v is not None})


def with_run_seed(cfg: Any, pretrain: PretrainConfig) -> Any:
    """``cfg`` (a stage after pretraining) with the run's pretraining seed where it names none, so
    ``--seed`` seeds a whole run; the labelled fraction is fixed by ``core.datasets.SPLIT_SEED`` instead."""
    return cfg if cfg.seed is not None else replace(cfg, seed=pretrain.seed)


def run_config(run: RunPaths) -> PretrainConfig:
    """The pretraining config a run was made with (its ``config.json``)."""
    saved = run.pretrain_config()
    saved.setdefault("stem", "cifar")  # a run made before stems existed had the CIFAR stem (as RunPaths.encoder_spec)
    return PretrainConfig(**saved)
