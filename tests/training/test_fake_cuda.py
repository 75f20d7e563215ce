"""The GPU paths, run on a machine without one: fake CUDA tensors catch device mixing and host syncs.

``torch._subclasses.fake_tensor.FakeTensorMode`` runs every op on shapes, dtypes and devices
only: no kernel runs, so a ResNet step costs milliseconds, and an op that mixes a CPU tensor
(other than a 0-dim scalar, as CUDA allows) with a device tensor raises as it would on a GPU.
``DeviceRules``, a dispatch mode on top of it, adds what FakeTensorMode does not check:

- host syncs: reading a device tensor (``.item()``, ``bool()``, ``.tolist()``) or copying one
  to the host, and copying host data to the device. Inside a training step (``train_step``,
  ``fit_linear``) either raises; elsewhere it is counted, so a test can say how many a pass makes
  (reading a CPU tensor, such as Adam's step counter, is no sync and passes);
- generators: a random op on a device must take a generator of that device.

What FakeTensorMode cannot model without a CUDA driver, and the substitutes used:

- a CUDA ``torch.Generator`` cannot be created. ``training.runtime.seeded_generator`` (how training
  makes every generator) is replaced by one that returns a CPU generator tagged with the device
  asked for, and ``DeviceRules`` applies CUDA's rule to the tags: a generator made for the CPU
  (or for nothing) driving a random op on the device fails, as ``torch.rand(.., device="cuda",
  generator=cpu_generator)`` does on a GPU.
- backward on fake CUDA tensors asks the driver for the device's context. Passes with a backward
  (pretraining and fine-tuning steps, the linear probe's fit) therefore run on ``STAND_IN``, a
  fake non-CPU device without kernels or driver ("lazy"): FakeTensorMode treats it as it treats
  CUDA (any device, mixed with CPU tensors, raises), and so does the training code, which asks
  only whether a device is the CPU, except for autocast (the stand-in runs in fp32, as a GPU
  without native bf16 does). Forward-only passes (the kNN monitor, the index embedding) and the
  training steps' forward passes, under bf16 autocast as on an A100 or H100, run on fake CUDA itself.
- ``Module.to`` swaps a fake parameter's object in place, which ``torch.utils.swap_tensors``
  refuses while the fake mode's memo holds a weak reference to it; the memo is a cache, so the
  fixture drops a parameter's entry before the swap.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from core import models
from core.datasets import ImageSet
from core.models import EncoderSpec, build_encoder, normalize
from index import build
from training import finetune, linear_eval, pretrain
from training.budget import alone
from training.config import FinetuneConfig, PretrainConfig
from training.distributed import DistEnv
from training.loss import nt_xent_loss
from training.pretrain import Progress, StopRequest
from training.simclr_model import SimCLRModel

aten = torch.ops.aten
CUDA = torch.device("cuda", 0)
STAND_IN = torch.device("lazy", 0)  # a fake accelerator for passes with a backward (see the docstring)
SPEC = EncoderSpec(width=8)


class HostSync(AssertionError):
    """A training step waited for the device (read a device tensor or copied between host and device)."""


def _dummy(t: torch.Tensor) -> bool | int | float:
    """What a host read of fake ``t`` returns: fake tensors hold no values."""
    return False if t.dtype == torch.bool else 0.0 if t.dtype.is_floating_point else 0


@dataclass
class DeviceRules(TorchDispatchMode):
    """Host syncs and generator devices, watched on top of FakeTensorMode (see the module's docstring)."""

    reads: int = 0  # device tensors read by the host
    to_host: int = 0  # device -> host copies
    to_device: int = 0  # host -> device copies
    strict: int = 0  # > 0 inside a training step: any sync raises
    generators: dict[int, torch.device] = field(default_factory=dict)  # tag (initial seed) -> device asked for
    _tags: Iterator[int] = field(default_factory=lambda: itertools.count(1 << 40))

    def __post_init__(self) -> None:
        super().__init__()

    def reset(self) -> None:
        """Count from here: what set-up copied (a model moved to the device) is not the pass's doing."""
        self.reads = self.to_host = self.to_device = 0

    def generator(self, device: torch.device, seed: int) -> torch.Generator:
        """``seeded_generator``'s substitute: a CPU generator whose seed tags the device it was made for."""
        tag = next(self._tags)
        self.generators[tag] = torch.device(device)
        return torch.Generator().manual_seed(tag)

    def in_step(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with every host sync inside it raising."""

        def strict(*args: Any, **kwargs: Any) -> Any:
            self.strict += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.strict -= 1

        return strict

    def _sync(self, what: str) -> None:
        if self.strict:
            raise HostSync(f"host sync inside a training step: {what}")

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:
            t = args[0]
            if t.device.type == "cpu":  # no device to wait for; Adam's step counters are read so
                try:
                    return func(*args, **kwargs)
                except DataDependentOutputException:
                    return _dummy(t)
            self._sync(f"read of a {t.device} tensor (.item(), bool(), .tolist())")
            self.reads += 1
            return _dummy(t)
        out = func(*args, **kwargs)
        if func.overloadpacket in (aten._to_copy, aten.to, aten.copy_) and isinstance(out, torch.Tensor):
            src = args[1] if func.overloadpacket is aten.copy_ else args[0]
            if isinstance(src, torch.Tensor) and (src.device.type == "cpu") != (out.device.type == "cpu"):
                if out.device.type == "cpu":
                    self._sync(f"copy of a {src.device} tensor to the host")
                    self.to_host += 1
                else:
                    self._sync(f"copy of host data to {out.device}")
                    self.to_device += 1
        gen = kwargs.get("generator")
        if gen is not None and isinstance(out, torch.Tensor):
            made_for = self.generators.get(gen.initial_seed(), torch.device("cpu"))
            if made_for.type != out.device.type:
                raise RuntimeError(f"{func}: a random op on {out.device} with a generator made for {made_for}")
        return out


@dataclass
class Fake:
    """The fake devices of one test: the modes, the rules and helpers to make fake data."""

    mode: FakeTensorMode
    rules: DeviceRules

    def images(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.empty(n, 3, 32, 32, dtype=torch.uint8, device=device)

    def image_set(self, n: int, device: torch.device, classes: int = 10) -> ImageSet:
        labels = torch.empty(n, dtype=torch.int64, device=device)
        return ImageSet(self.images(n, device), labels, [str(c) for c in range(classes)], [])


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    mode = FakeTensorMode()
    rules = DeviceRules()
    real_swap = torch.utils.swap_tensors

    def swap_forgetting_memo(t1: torch.Tensor, t2: torch.Tensor) -> None:
        memo = mode.fake_tensor_converter.tensor_memo
        for key in [k for k, v in list(memo.items()) if v is t1 or v is t2]:
            del memo[key]
        real_swap(t1, t2)

    monkeypatch.setattr(torch.utils, "swap_tensors", swap_forgetting_memo)
    for module in (pretrain, finetune):
        monkeypatch.setattr(module, "seeded_generator", rules.generator)
    monkeypatch.setattr(pretrain, "train_step", rules.in_step(pretrain.train_step))
    monkeypatch.setattr(finetune, "train_step", rules.in_step(finetune.train_step))
    # LP-FT's probe: a few of its 500 steps show where it runs as well as all of them.
    monkeypatch.setattr(finetune, "fit_linear", rules.in_step(functools.partial(finetune.fit_linear, steps=5)))
    monkeypatch.setattr(linear_eval, "fit_linear", rules.in_step(linear_eval.fit_linear))
    # An Ampere-or-later GPU: bf16 autocast, as training chooses there (training.runtime.bf16_supported).
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    models._stats.cache_clear()  # normalize's constants: none from real tensors or another fake mode
    with mode, rules:
        for device in (CUDA, STAND_IN):
            # The constants are built once per device, a one-off copy, like CUDA's own start-up.
            normalize(torch.zeros(1, 3, 1, 1, device=device))
        rules.reset()
        yield Fake(mode, rules)
    models._stats.cache_clear()


def simclr_model(device: torch.device) -> SimCLRModel:
    return SimCLRModel(SPEC, 16).to(device).to(memory_format=torch.channels_last)


@pytest.mark.parametrize("optimizer", ["adam", "lars"])
def test_pretraining_steps_stay_on_the_device_and_never_wait_for_it(fake: Fake, optimizer: str) -> None:
    """Two steps of an epoch: no host sync inside a step, one read at the epoch's end (its mean loss),
    and a checkpoint of host tensors only."""
    cfg = PretrainConfig(width=8, proj_dim=16, batch_size=16, epochs=1, optimizer=optimizer)
    model = simclr_model(STAND_IN)
    opt = pretrain.build_optimizer(model, cfg)
    images = fake.images(32, STAND_IN)
    rngs = {"order": pretrain.seeded_generator(STAND_IN, 0), "augment": pretrain.seeded_generator(STAND_IN, 1)}
    order = torch.randperm(32, device=STAND_IN, generator=rngs["order"])
    p = Progress()
    fake.rules.reset()
    stats, decision = pretrain.train_one_epoch(model, opt, images, order, cfg, p, rngs["augment"], DistEnv(), StopRequest(), alone)
    assert (p.step, stats["steps"]) == (2, 2) and decision.out_of_budget
    assert fake.rules.reads == 1 and fake.rules.to_host == 0 and fake.rules.to_device == 0
    state = pretrain.checkpoint_state(model, opt, cfg, p, order, rngs, [rngs["augment"].get_state()])
    tensors = [t for t in torch.utils._pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]
    assert tensors and {t.device.type for t in tensors} == {"cpu"}
    assert all(p.device == STAND_IN for p in model.parameters())


def test_the_pretraining_forward_pass_runs_in_bf16_on_cuda(fake: Fake) -> None:
    """The step's forward as on an Ampere-or-later GPU: views, the model under bf16 autocast, NT-Xent in fp32."""
    cfg = PretrainConfig(width=8, proj_dim=16)
    model = simclr_model(CUDA).train()
    images = fake.images(8, CUDA)
    fake.rules.reset()
    views = torch.cat([pretrain.simclr_views(images, pretrain.seeded_generator(CUDA, 1)) for _ in range(2)])
    with pretrain.autocast(CUDA):
        z = model(views.contiguous(memory_format=torch.channels_last))
    assert z.dtype == torch.bfloat16 and z.device == CUDA
    loss = nt_xent_loss(*z.float().chunk(2), cfg.temperature)
    assert loss.dtype == torch.float32 and loss.device == CUDA
    assert fake.rules.reads == fake.rules.to_host == fake.rules.to_device == 0


@pytest.mark.parametrize("head_init", ["random", "probe"])
def test_finetuning_stays_on_the_device(fake: Fake, head_init: str) -> None:
    """An epoch of fine-tuning (LP-FT's probe first, for ``probe``: its features and the labels meet on the
    device), then scoring: no sync inside a step or the probe's fit; the epoch's loss is read once, and
    the test logits come to the host batch by batch."""
    cfg = FinetuneConfig(epochs=1, batch_size=16, head_init=head_init)
    train, test = fake.image_set(32, STAND_IN), fake.image_set(24, STAND_IN)
    encoder = build_encoder(SPEC).to(STAND_IN)
    fake.rules.reset()
    model, metrics = finetune.finetune(encoder, 64, train, test, cfg)
    assert metrics["finetune_epochs"] == 1.0
    assert all(p.device == STAND_IN for p in model.parameters())
    assert fake.rules.reads == 1  # the epoch's mean loss
    assert fake.rules.to_host == 2  # the test logits (one batch) and labels, for top-k on the host
    # (Host-to-device copies: the new head's freshly initialised parameters, once.)


def test_the_finetuning_forward_pass_runs_in_bf16_on_cuda(fake: Fake) -> None:
    model = finetune.Classifier(build_encoder(SPEC), 64, 10).to(CUDA).to(memory_format=torch.channels_last)
    images = fake.images(8, CUDA)
    fake.rules.reset()
    x = finetune.crop_flip(images, generator=finetune.seeded_generator(CUDA, 0), cutout=8)
    with finetune.autocast(CUDA):
        logits = model(x.contiguous(memory_format=torch.channels_last))
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.empty(8, dtype=torch.int64, device=CUDA), label_smoothing=0.1)
    assert logits.dtype == torch.bfloat16 and loss.device == CUDA
    assert fake.rules.reads == fake.rules.to_host == fake.rules.to_device == 0


def test_the_knn_monitor_reads_the_host_once(fake: Fake) -> None:
    """Bank and test split on the device (as ``pretrain.load_data`` puts them); one read: the accuracy."""
    encoder = build_encoder(SPEC).to(CUDA).to(memory_format=torch.channels_last)
    bank, test = fake.image_set(40, CUDA), fake.image_set(12, CUDA)
    fake.rules.reset()
    pretrain.knn_monitor(encoder, bank, test, PretrainConfig(knn_k=5))
    assert fake.rules.reads == 1 and fake.rules.to_host == 0 and fake.rules.to_device == 0


def test_linear_eval_stays_on_the_device(fake: Fake) -> None:
    """Features and labels on the device: the probe's fits never sync; each candidate penalty's held-out
    accuracy and the final top-k are read back (a handful of reads per probe, none per step)."""
    x, y = torch.empty(40, 64, device=STAND_IN), torch.empty(40, dtype=torch.int64, device=STAND_IN)
    fake.rules.reset()
    linear_eval.linear_probe(x[:30], y[:30], x[30:], y[30:], 10, steps=3, weight_decays=(0.0, 1e-4))
    assert fake.rules.reads == 2  # one held-out accuracy per candidate; top-k is read from host copies
    assert fake.rules.to_host == 2  # the test scores and labels, for top-k on the host
    assert fake.rules.to_device == 1  # the held-out split's order, drawn on the host


def test_the_index_embedding_moves_batches_to_cuda_and_vectors_back_once(fake: Fake) -> None:
    """The images stay on the host (an index may be larger than the device's memory): each batch goes to
    the device, and the vectors come back once, for FAISS."""
    images = torch.empty(20, 3, 32, 32, dtype=torch.uint8)  # a fake host tensor
    encoder = build_encoder(SPEC)
    fake.rules.reset()
    vectors = build.embed_items(encoder, images, CUDA)
    assert vectors.device.type == "cpu" and vectors.shape == (20, 64)
    assert fake.rules.reads == 0 and fake.rules.to_host == 1
    assert fake.rules.to_device == 1 + len(list(encoder.parameters())) + len(list(encoder.buffers()))


def test_the_rules_catch_what_a_gpu_would_refuse(fake: Fake) -> None:
    """The checks themselves: device mixing, a host read inside a step, a CPU generator for a device op."""
    with pytest.raises(RuntimeError, match="devices"):
        torch.ones(3, device=CUDA) + torch.ones(3)
    with pytest.raises(HostSync, match="read of a cuda"):
        fake.rules.in_step(lambda: torch.ones(3, device=CUDA).sum().item())()
    with pytest.raises(HostSync, match="host data to cuda"):
        fake.rules.in_step(lambda: torch.tensor([0.5, 0.5], device=CUDA))()
    with pytest.raises(RuntimeError, match="generator made for cpu"):
        torch.rand(3, device=CUDA, generator=torch.Generator().manual_seed(0))
    torch.rand(3, device=CUDA, generator=pretrain.seeded_generator(CUDA, 0))  # the right one passes
