"""Linear evaluation: a linear classifier on frozen encoder features (the seed's "linear eval").

Features of the train and test images are computed once, with the encoder in
eval mode and without augmentation; the encoder's weights and buffers are never
touched. A softmax regression is then fitted on (standardised) features by
full-batch Adam and scored top-1 / top-3 on the whole test split. Its L2
penalty is chosen, as the SimCLR paper's linear evaluation does, on a held-out
part of the *training* features (a fifth); the test split is never looked at.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.evaluate import topk_accuracy
from training.runtime import warmup_cosine

LINEAR_STEPS = 500
LINEAR_LR = 0.01
LINEAR_WEIGHT_DECAY = 1e-4
WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)  # candidates of the held-out choice
HELD_OUT = 0.2
SMALL = 1 << 20  # feature elements below which the probe runs on one CPU thread


def fit_linear(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    n_classes: int,
    *,
    steps: int = LINEAR_STEPS,
    lr: float = LINEAR_LR,
    weight_decay: float = LINEAR_WEIGHT_DECAY,
    seed: int = 0,
) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A linear layer fitted on standardised features; returns it with the train mean and std."""
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    x = (train_x - mean) / std
    torch.manual_seed(seed)
    head = nn.Linear(x.shape[1], n_classes, device=x.device)  # made where it trains: no host copy
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for step in tqdm(range(steps), desc="linear probe", unit="step", leave=False):
        for group in opt.param_groups:
            group["lr"] = lr * warmup_cosine(step / steps, 0.0)
        loss = F.cross_entropy(head(x), train_y) + weight_decay * head.weight.pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head, mean, std


def choose_weight_decay(
    train_x: torch.Tensor, train_y: torch.Tensor, n_classes: int, candidates: tuple[float, ...], *, seed: int = 0, **fit_kwargs: float
) -> float:
    """The candidate L2 penalty with the best top-1 on a held-out fifth of the training features
    (the smaller penalty on ties)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_x), generator=generator).to(train_x.device)
    n_val = max(1, int(len(train_x) * HELD_OUT))
    val, fit = order[:n_val], order[n_val:]
    best, best_acc = candidates[0], -1.0
    for wd in sorted(candidates):
        head, mean, std = fit_linear(train_x[fit], train_y[fit], n_classes, weight_decay=wd, seed=seed, **fit_kwargs)  # type: ignore[arg-type]
        with torch.no_grad():
            acc = (head((train_x[val] - mean) / std).argmax(1) == train_y[val]).float().mean().item()
        if acc > best_acc:
            best, best_acc = wd, acc
    return best


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    n_classes: int,
    *,
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS,
    seed: int = 0,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
    **fit_kwargs: float,
) -> dict[str, float]:
    """``{"top1", "top3", "weight_decay"}``: a linear classifier fitted on the train features (L2 penalty
    chosen on held-out train features among ``weight_decays``), scored on the test features; with
    ``validation`` (features, labels) also ``val_top1``, ``val_top3``."""
    # Small problems on CPU: thread start-up and spin-waits cost more than the arithmetic.
    threads = torch.get_num_threads()
    if train_x.device.type == "cpu" and train_x.numel() < SMALL:
        torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            wd = weight_decays[0]
            if len(weight_decays) > 1:
                wd = choose_weight_decay(train_x, train_y, n_classes, weight_decays, seed=seed, **fit_kwargs)
            head, mean, std = fit_linear(train_x, train_y, n_classes, weight_decay=wd, seed=seed, **fit_kwargs)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        scores = head((test_x - mean) / std).float().cpu()
        result = {**topk_accuracy(scores, test_y.cpu(), (1, 3)), "weight_decay": wd}
        if validation is not None:
            val_scores = head((validation[0] - mean) / std).float().cpu()
            result |= {f"val_{k}": v for k, v in topk_accuracy(val_scores, validation[1].cpu(), (1, 3)).items()}
    return result
