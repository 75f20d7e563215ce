"""Encoders and the classifier, built from torchvision's ResNet; normalisation; the embedding function.

The encoder is torchvision's ResNet with the CIFAR stem (Chen et al. 2020, B.9:
"we replace the first 7x7 Conv of stride 2 with 3x3 Conv of stride 1, and also
remove the first max pooling operation") and an optional base width other than
64, which scales every stage (width 32 is a quarter of the FLOPs).

Inputs of 64 px and more get the ``stride2`` stem by default (:func:`default_stem`):
the same 3x3 conv with stride 2, so the stages see the feature maps a 32 px input
gives the CIFAR stem (32x32 at 64 px) and cost the same; the ``pool`` stem (the
CIFAR conv, then a 2x2 max-pool) keeps the first layer at full resolution, which
costs more at narrow widths (benchmarks/stem_cost.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}

# Per-channel statistics of the CIFAR-10 training set; saved in every manifest.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild an encoder from its weights."""

    arch: str = "resnet18"
    width: int = 64
    image_size: int = 32
    # Channels of a 1x1 conv + BN + ReLU after the last stage, before pooling (0: none).
    # A narrow ResNet pools only 8 * width features (128 at width 16); the expansion
    # widens the representation for a few percent of the FLOPs, because the last
    # stage's maps are tiny, as ResNet-50's last bottleneck and MobileNetV2's last layer do.
    expand: int = 0
    # "cifar": 3x3 conv, stride 1, no pooling (the stages run at the input's resolution);
    # "stride2": the same conv with stride 2, "pool": it with stride 1 then a 2x2 max-pool
    # (both: the stages at half the input's resolution). See default_stem.
    stem: str = "cifar"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


STEMS = ("cifar", "stride2", "pool")
HALVING_STEM_MIN_SIZE = 64  # default_stem's switch: inputs this size and up are halved by the stem


def default_stem(image_size: int) -> str:
    """The stem for ``image_size`` px inputs: ``cifar`` below 64 px, ``stride2`` from 64 px (the stages
    then see 32x32 maps at 64 px, as the CIFAR stem's at 32 px: about the same cost; measured by
    benchmarks/stem_cost.py, where ``pool`` cost 1.3-2.6x and the CIFAR stem 3.8-8.4x of it)."""
    return "stride2" if image_size >= HALVING_STEM_MIN_SIZE else "cifar"


def build_encoder(spec: EncoderSpec) -> ResNet:
    """A ResNet with the CIFAR stem (or ``spec.stem``) whose forward returns ``(B, feature_dim)`` pooled features."""
    if spec.arch not in ARCHS:
        raise ValueError(f"unknown arch {spec.arch!r}; choose from {', '.join(ARCHS)}")
    if spec.stem not in STEMS:
        raise ValueError(f"unknown stem {spec.stem!r}; choose from {', '.join(STEMS)}")
    block, layers = ARCHS[spec.arch]
    net = ResNet(block, layers)
    w = spec.width
    if w != 64:
        # torchvision hard-codes 64/128/256/512; rebuild the stages at the requested width.
        net.inplanes = w
        net.layer1 = net._make_layer(block, w, layers[0])
        net.layer2 = net._make_layer(block, 2 * w, layers[1], stride=2)
        net.layer3 = net._make_layer(block, 4 * w, layers[2], stride=2)
        net.layer4 = net._make_layer(block, 8 * w, layers[3], stride=2)
        net.bn1 = nn.BatchNorm2d(w)
    # Every stem has the CIFAR stem's parameters (keys and shapes), so the stem must be
    # recorded (EncoderSpec.stem: a run's config, a manifest's backbone), never inferred.
    net.conv1 = nn.Conv2d(3, w, kernel_size=3, stride=2 if spec.stem == "stride2" else 1, padding=1, bias=False)
    net.maxpool = nn.MaxPool2d(kernel_size=2, stride=2) if spec.stem == "pool" else nn.Identity()
    net.fc = nn.Identity()
    if spec.expand:
        # Appended to layer4 so that the other parameters keep their names.
        in_dim = 8 * w * block.expansion
        net.layer4.append(nn.Sequential(
            nn.Conv2d(in_dim, spec.expand, kernel_size=1, bias=False), nn.BatchNorm2d(spec.expand), nn.ReLU(inplace=True)))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def feature_dim(spec: EncoderSpec) -> int:
    return spec.expand or 8 * spec.width * ARCHS[spec.arch][0].expansion


class Classifier(nn.Module):
    """Encoder, an optional hidden layer, a linear layer: ``(B, 3, H, W) -> (B, n_classes)`` logits.

    ``hidden``: width of a Linear -> BatchNorm -> ReLU layer between the encoder and the linear
    layer (0: none), the shape of the projection head's first layer, which SimCLRv2 (Chen et al.
    2020b, section 2) fine-tunes from: "fine-tuning from a middle layer of the projection head".
    """

    def __init__(self, encoder: nn.Module, in_dim: int, n_classes: int, hidden: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.neck: nn.Module = nn.Identity()
        if hidden:  # the indices match ProjectionHead.net's, so its first layer's weights load as they are
            self.neck = nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
        self.fc = nn.Linear(hidden or in_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.neck(self.encoder(x)))

    @staticmethod
    def hidden_of(state: dict[str, torch.Tensor]) -> int:
        """The ``hidden`` width a saved classifier was built with (0 for one without the layer)."""
        w = state.get("neck.0.weight")
        return 0 if w is None else int(w.shape[0])


def load_classifier(path: Path, spec: EncoderSpec, n_classes: int) -> Classifier:
    """A classifier (encoder from ``spec``, its layers as saved) with the weights at ``path``, on the CPU."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    classifier = Classifier(build_encoder(spec), feature_dim(spec), n_classes, hidden=Classifier.hidden_of(state))
    classifier.load_state_dict(state)
    return classifier


@functools.lru_cache(maxsize=16)
def _stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # Built once per device and dtype: torch.tensor(..., device=cuda) is a blocking host copy.
    return (torch.tensor(mean, device=device, dtype=dtype).view(1, -1, 1, 1),
            torch.tensor(std, device=device, dtype=dtype).view(1, -1, 1, 1))


def normalize(x: torch.Tensor, mean: tuple[float, ...] = CIFAR_MEAN, std: tuple[float, ...] = CIFAR_STD) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` pixels (or floats in [0, 1]) to the normalised float input of every model.

    ``mean`` and ``std`` are per channel, in [0, 1] units; a bundle's manifest records them.
    """
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    m, s = _stats(tuple(mean), tuple(std), x.device, x.dtype)
    return (x - m) / s


def load_encoder(path: Path, spec: EncoderSpec) -> ResNet:
    """An encoder built from ``spec`` with the weights saved at ``path`` (CPU, train mode as built)."""
    encoder = build_encoder(spec)
    encoder.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return encoder


def model_outputs(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
    mean: tuple[float, ...] = CIFAR_MEAN,
    std: tuple[float, ...] = CIFAR_STD,
) -> Iterator[torch.Tensor]:
    """``model``'s float outputs, batch by batch, over uint8 ``(N, 3, H, W)`` images, in eval mode.

    ``progress`` wraps the batch starts (e.g. ``functools.partial(tqdm, desc=...)``); the
    service passes none, so nothing but the forward pass runs on its request path.
    ``mean`` and ``std``: the input normalisation (a bundle's manifest records it).
    """
    model.eval()
    starts: Iterable[int] = range(0, len(images), batch_size)
    if progress is not None:
        starts = progress(starts)
    for start in starts:
        x = normalize(images[start : start + batch_size].to(device), mean, std).contiguous(memory_format=torch.channels_last)
        yield model(x).float()


@torch.inference_mode()
def embed(
    encoder: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
    mean: tuple[float, ...] = CIFAR_MEAN,
    std: tuple[float, ...] = CIFAR_STD,
) -> torch.Tensor:
    """Embeddings: L2-normalised encoder features ``(N, D)`` float32 on ``device``, so that inner
    product = cosine similarity. The one embedding function of training, indexing and serving."""
    out = [F.normalize(h, dim=1) for h in model_outputs(encoder, images, batch_size=batch_size, device=device, progress=progress, mean=mean, std=std)]
    return torch.cat(out) if out else torch.zeros(0, 0, device=device)
