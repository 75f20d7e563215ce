import math

import pytest
import torch
import torch.nn.functional as F

from training.loss import multi_crop_nt_xent_loss, nt_xent_loss


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 1 of the SimCLR paper, one positive pair at a time, no matrix tricks."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        num = torch.exp(torch.dot(z[i], z[j]) / tau)
        den = sum(torch.exp(torch.dot(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        total = total - torch.log(num / den)
    return total / (2 * n)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_matches_naive_reference(tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert nt_xent_loss(z1, z2, tau).item() == pytest.approx(naive_nt_xent(z1, z2, tau).item(), rel=1e-5)


def test_identical_embeddings_give_log_2n_minus_1() -> None:
    n = 8
    z = torch.ones(n, 4)
    assert nt_xent_loss(z, z.clone(), 0.5).item() == pytest.approx(-math.log(1 / (2 * n - 1)), rel=1e-6)


def test_gradient_pulls_positives_together() -> None:
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(4, 3, generator=g, requires_grad=True)
    z2 = torch.randn(4, 3, generator=g)
    loss = nt_xent_loss(z1, z2)
    loss.backward()
    with torch.no_grad():
        moved = z1 - 0.5 * z1.grad
    assert nt_xent_loss(moved, z2).item() < loss.item()


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="must both be"):
        nt_xent_loss(torch.zeros(4, 3), torch.zeros(5, 3))


def test_multi_crop_is_the_mean_over_the_full_pair_and_each_full_small_pair() -> None:
    torch.manual_seed(0)
    z1, z2, s1, s2 = (torch.randn(6, 8) for _ in range(4))
    expected = torch.stack([nt_xent_loss(z1, z2), nt_xent_loss(z1, s1), nt_xent_loss(z2, s1), nt_xent_loss(z1, s2), nt_xent_loss(z2, s2)]).mean()
    torch.testing.assert_close(multi_crop_nt_xent_loss(z1, z2, [s1, s2]), expected)
    torch.testing.assert_close(multi_crop_nt_xent_loss(z1, z2, []), nt_xent_loss(z1, z2))
    same = torch.ones(5, 4)
    assert multi_crop_nt_xent_loss(same, same, [same, same]).item() == pytest.approx(math.log(2 * 5 - 1), rel=1e-5)
