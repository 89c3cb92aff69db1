"""PGD/FGSM: constraints hold, steps follow the formula, and the attack is real."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rrm_fast.attacks import FGSM, PGD


def linear_model(c=1, s=4, k=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, k))


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd_stays_in_ball_and_box(norm):
    m = linear_model()
    x = torch.rand(7, 1, 4, 4)
    x[0] = 0.0
    x[1] = 1.0
    y = torch.randint(0, 3, (7,))
    eps = 0.2 if norm == "Linf" else 0.5
    x_adv = PGD(m, eps=eps, alpha=eps / 3, steps=5, norm=norm)(x, y)
    d = (x_adv - x).flatten(1)
    bound = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert (bound <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_one_linf_step_is_the_signed_gradient_step():
    # No random start, one step: x' = clip(x + alpha*sign(grad CE), box) within eps.
    m = linear_model()
    x = torch.full((2, 1, 4, 4), 0.5)
    y = torch.tensor([0, 2])
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(m(xr), y, reduction="sum").backward()
    expected = (x + 0.05 * xr.grad.sign()).clamp(0, 1)
    got = PGD(m, eps=0.1, alpha=0.05, steps=1, random_start=False)(x, y)
    torch.testing.assert_close(got, expected)


def test_fgsm_rs_default_step_is_1_25_eps():
    assert FGSM(linear_model(), eps=0.08).alpha == pytest.approx(0.1)


def test_pgd_raises_the_loss_and_restarts_only_help():
    m = linear_model(k=5)
    x = torch.rand(64, 1, 4, 4)
    y = m(x).argmax(1)  # the model is right on every sample
    x1 = PGD(m, eps=0.1, steps=10)(x, y)
    assert F.cross_entropy(m(x1), y) > F.cross_entropy(m(x), y)
    g = torch.Generator().manual_seed(0)
    acc1 = (m(PGD(m, eps=0.05, steps=5, generator=g)(x, y)).argmax(1) == y).float().mean()
    g = torch.Generator().manual_seed(0)
    acc3 = (m(PGD(m, eps=0.05, steps=5, restarts=3, generator=g)(x, y)).argmax(1) == y).float().mean()
    assert acc3 <= acc1


def test_bad_attack_arguments():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        PGD(linear_model(), eps=-0.1)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        PGD(linear_model(), eps=0.1, steps=0)
    with pytest.raises(ValueError, match="unknown norm"):
        PGD(linear_model(), eps=0.1, norm="L7")
