"""APGD, APGD-T and Square: formulas, threat model, and strength on a real Fashion-MNIST CNN,
cross-checked against torchattacks (whose APGD/Square are AutoAttack's reference code)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from rrm_fast import ops
from rrm_fast.attacks import APGD, APGDT, PGD, Square, dlr_loss, dlr_targeted_loss, margin_loss
from rrm_fast.attacks.apgd import checkpoint_lengths
from rrm_fast.attacks.square import eta_pattern, p_schedule
from helpers import fmnist, one_thread, trained_cnn

EPS = 0.03  # the tiny CNN is naturally trained: ~50% PGD accuracy at this eps, so attacks differ


@pytest.fixture(scope="module")
def setup():
    with one_thread():
        model = trained_cnn()
        x, y = fmnist("test", 300)
        yield model, x, y


def acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# ---- formulas -----------------------------------------------------------------------------
def test_dlr_losses_match_hand_computed_values():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    # y on top: -(z_y - runner-up) / (z_pi1 - z_pi3) = -(3 - 2) / (3 - 1)
    # y not on top: -(1 - 3) / (3 - 1)
    assert torch.allclose(dlr_loss(z, torch.tensor([0, 1])), torch.tensor([-0.5, 1.0]))
    # targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) = -(3 - 2) / (3 - 0.5)
    assert torch.allclose(dlr_targeted_loss(z[:1], torch.tensor([0]), torch.tensor([2])), torch.tensor([-0.4]))
    assert torch.allclose(margin_loss(z, torch.tensor([0, 1])), torch.tensor([1.0, -2.0]))


def test_checkpoints_follow_the_papers_recursion():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    expected = [round(v * 100) for v in p[1:]]

    class Flat(nn.Module):  # constant logits: the loss never rises, nothing is ever fooled
        def forward(self, x):
            return torch.tensor([5.0, 0.0, 0.0]).expand(x.shape[0], 3) + 0 * x.flatten(1).sum(1, keepdim=True)

    atk = APGD(Flat(), eps=0.1, steps=100, loss="ce", generator=torch.Generator().manual_seed(0))
    with one_thread():
        atk(torch.rand(2, 1, 4, 4), torch.tensor([0, 0]))
    assert checkpoint_lengths(100) == (22, 6, 3)
    assert atk.checkpoint_iters == expected
    # the loss never rises, so every checkpoint halves the step: 2 eps / 2^(#checkpoints)
    assert torch.allclose(atk.final_step_sizes, torch.full((2,), 0.2 / 2 ** len(expected)))


def test_p_schedule_is_rescaled_to_the_query_budget():
    assert p_schedule(0.8, 0, 10000) == 0.8
    assert p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 9000, 10000) == 0.8 / 512
    assert p_schedule(0.8, 5, 1000) == 0.4 and p_schedule(0.8, 6, 1000) == 0.2
    e = eta_pattern(5, "cpu")
    assert torch.isclose(e.norm(), torch.tensor(1.0)) and (e[:2] > 0).all() and (e[2:] < 0).all()


@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 0.5)])
def test_zero_gradient_step_only_projects(norm, eps):
    # APGD's momentum combination and Square's proposals are projected by calling the step op
    # with a zero gradient; that must be a pure projection onto the eps-ball and the box
    step = ops.linf_step_ if norm == "Linf" else ops.l2_step_
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 6, 6, generator=gen)
    inside = (torch.rand(x.shape, generator=gen) - 0.5) * 0.01
    inside = (x + inside).clamp(0, 1) - x
    d = inside.clone()
    step(d, torch.zeros_like(d), x, eps, 0.0)
    assert torch.equal(d, inside)  # already feasible: untouched
    big = torch.randn(x.shape, generator=gen) * 3
    step(big, torch.zeros_like(big), x, eps, 0.0)
    size = big.flatten(1).abs().amax(1) if norm == "Linf" else big.flatten(1).norm(dim=1)
    assert (size <= eps + 1e-6).all() and size.max() > 0.5 * eps
    assert ((x + big) >= -1e-7).all() and ((x + big) <= 1 + 1e-7).all()


# ---- threat model -------------------------------------------------------------------------
@pytest.mark.parametrize("norm, eps", [("Linf", EPS), ("L2", 0.5)])
def test_attacks_stay_in_the_ball_and_box(setup, norm, eps):
    model, x, y = setup
    x, y = x[:40], y[:40]
    gen = torch.Generator().manual_seed(0)
    for atk in (APGD(model, eps=eps, norm=norm, steps=10, generator=gen),
                APGD(model, eps=eps, norm=norm, steps=10, loss="dlr", restarts=2, generator=gen),
                APGDT(model, eps=eps, norm=norm, steps=10, n_target_classes=2, generator=gen),
                Square(model, eps=eps, norm=norm, n_queries=30, generator=gen)):
        xa = atk(x, y)
        d = (xa - x).flatten(1)
        size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
        assert (size <= eps * (1 + 1e-5) + 1e-6).all(), (type(atk).__name__, size.max())
        assert xa.min() >= 0 and xa.max() <= 1
        assert acc(model, xa, y) <= acc(model, x, y)


def test_bad_arguments_raise_clear_errors():
    m = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="APGD loss"):
        APGD(m, eps=0.1, loss="hinge")
    with pytest.raises(ValueError, match="n_queries"):
        Square(m, eps=0.1, n_queries=0)
    with pytest.raises(ValueError, match="at least 3 classes"):
        APGD(m, eps=0.1, loss="dlr")(torch.rand(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least 4 classes"):
        APGDT(nn.Linear(4, 3), eps=0.1)(torch.rand(2, 4), torch.tensor([0, 1]))


# ---- strength on a real model, against torchattacks (AutoAttack's reference code) ------------
@pytest.fixture(scope="module")
def torchattacks():
    return pytest.importorskip("torchattacks")


def test_pgd_matches_torchattacks_pgd(setup, torchattacks):
    model, x, y = setup
    with one_thread():
        # no random start: both are deterministic, so they must agree (within 1 point)
        ours = acc(model, PGD(model, eps=EPS, alpha=EPS / 4, steps=10, random_start=False)(x, y), y)
        theirs = acc(model, torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=10, random_start=False)(x, y), y)
        assert abs(ours - theirs) <= 0.01, (ours, theirs)
        # with random starts the two draw different noise: agree within 1 point over 300 samples
        torch.manual_seed(0)
        theirs_rs = acc(model, torchattacks.PGD(model, eps=EPS, alpha=EPS / 8, steps=20)(x, y), y)
        ours_rs = acc(model, PGD(model, eps=EPS, alpha=EPS / 8, steps=20, generator=torch.Generator().manual_seed(1))(x, y), y)
        assert abs(ours_rs - theirs_rs) <= 0.01, (ours_rs, theirs_rs)
    assert ours < acc(model, x, y) - 0.2  # the attack does something


def test_apgd_is_at_least_as_strong_as_pgd20_and_matches_the_reference(setup, torchattacks):
    model, x, y = setup
    with one_thread():
        gen = torch.Generator().manual_seed(0)
        pgd20 = acc(model, PGD(model, eps=EPS, steps=20, generator=gen)(x, y), y)
        apgd_ce = acc(model, APGD(model, eps=EPS, steps=50, generator=gen)(x, y), y)
        apgd_t = acc(model, APGDT(model, eps=EPS, steps=25, n_target_classes=3, generator=gen)(x, y), y)
        ref_ce = acc(model, torchattacks.APGD(model, eps=EPS, steps=50, loss="ce", seed=0)(x, y), y)
    assert apgd_ce <= pgd20, (apgd_ce, pgd20)
    assert apgd_t <= pgd20, (apgd_t, pgd20)
    assert abs(apgd_ce - ref_ce) <= 0.01, (apgd_ce, ref_ce)


def test_square_is_a_real_black_box_attack(setup, torchattacks):
    model, x, y = setup
    x, y = x[:150], y[:150]
    with one_thread():
        clean = acc(model, x, y)
        sq = Square(model, eps=0.05, n_queries=150, generator=torch.Generator().manual_seed(0))
        ours = acc(model, sq(x, y), y)
        torch.manual_seed(0)
        ref = acc(model, torchattacks.Square(model, eps=0.05, n_queries=150, p_init=0.8, seed=0)(x, y), y)
        l2 = acc(model, Square(model, eps=1.0, norm="L2", n_queries=150, generator=torch.Generator().manual_seed(0))(x, y), y)
        torch.manual_seed(0)
        ref_l2 = acc(model, torchattacks.Square(model, norm="L2", eps=1.0, n_queries=150, p_init=0.8, seed=0)(x, y), y)
    assert int(sq.queries_used.max()) <= 150
    assert ours < clean - 0.2 and l2 < clean - 0.1, (clean, ours, l2)
    # random search with the same budget and schedule: not weaker than the reference by more
    # than 5 points on 150 samples (ours draws windows per image, the reference per batch)
    assert ours <= ref + 0.05 and l2 <= ref_l2 + 0.05, (ours, ref, l2, ref_l2)
