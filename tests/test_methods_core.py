"""Each core method's loss against its formula on inputs small enough to compute by hand."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rrm_fast.data.sampling import SampleIndex
from rrm_fast.methods import METHODS, ThreatModel


class Tiny(nn.Module):
    """logits = W x_flat; phi = x_flat. Small enough to reason about by hand."""

    def __init__(self, w):
        super().__init__()
        self.fc = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(w)

    @property
    def feature_dim(self):
        return self.fc.in_features

    def forward(self, x, return_features=False):
        phi = x.flatten(1)
        logits = self.fc(phi)
        return (logits, phi) if return_features else logits


W = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
PAPER_RRM = dict(student_delta="none", feature_loss="auto")  # the paper's RRM (this project's variant is the default)


def test_natural_is_plain_cross_entropy():
    x = torch.tensor([[[[2.0, 0.0]]]])  # logits (2, 0)
    out = METHODS["natural"](Tiny(W)).loss(x, torch.tensor([0]))
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-2)))


def test_rrm_cosine_loss_by_hand():
    # student phi = (1, 0) for label 0; teacher phi = (1, 1): cos = 1/sqrt(2)
    student, teacher = Tiny(W), Tiny(torch.eye(2))
    teacher_x = torch.tensor([[[[1.0, 1.0]]]])

    class Shifted(Tiny):  # the teacher sees the same x but reads phi = (1, 1)
        def forward(self, x, return_features=False):
            return super().forward(teacher_x.expand_as(x), return_features)

    m = METHODS["rrm"](student, Shifted(torch.eye(2)), ThreatModel("Linf", 0.1), xent_weight=0.5, feat_weight=2.0,
                       **PAPER_RRM)
    out = m.loss(torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([0]))
    ce = math.log(1 + math.exp(-1))
    assert out.loss.item() == pytest.approx(0.5 * ce - 2.0 / math.sqrt(2), rel=1e-6)
    del teacher


def test_rrm_l2_uses_relative_l2_distance_with_plus_sign():
    student = Tiny(W)

    class Fixed(Tiny):
        def forward(self, x, return_features=False):
            return super().forward(torch.tensor([[[[0.0, 2.0]]]]).expand_as(x), return_features)

    m = METHODS["rrm"](student, Fixed(W), ThreatModel("L2", 0.5), xent_weight=0.0, feat_weight=1.0)
    assert m.feature_loss == "rel_l2"
    out = m.loss(torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([0]))
    # ||(1,0) - (0,2)|| / ||(0,2)|| = sqrt(5)/2
    assert out.loss.item() == pytest.approx(math.sqrt(5) / 2, rel=1e-6)


def test_rrm_without_teacher_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a teacher"):
        METHODS["rrm"](Tiny(W))


def test_fast_at_trains_on_the_fgsm_rs_point():
    torch.manual_seed(0)
    model = Tiny(W)
    x = torch.full((1, 1, 1, 2), 0.5)
    y = torch.tensor([0])
    eps = 0.1
    torch.manual_seed(1)
    out = METHODS["fast_at"](model, threat=ThreatModel("Linf", eps)).loss(x, y)
    # reproduce: delta0 ~ U(-eps, eps) from the same RNG state, one signed step of 1.25 eps
    torch.manual_seed(1)
    d0 = (2 * torch.rand(x.shape) - 1) * eps
    # grad of CE wrt x for logits = x: softmax - onehot -> sign (-1, +1)
    d1 = (d0 + 1.25 * eps * torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2)).clamp(-eps, eps)
    expected = F.cross_entropy(model(x + d1), y)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_pgd_at_loss_is_ce_at_a_point_inside_the_ball():
    model = Tiny(W)
    x = torch.full((4, 1, 1, 2), 0.5)
    y = torch.tensor([0, 1, 0, 1])
    out = METHODS["pgd_at"](model, threat=ThreatModel("Linf", 0.1, 0.05, 3)).loss(x, y)
    # the worst case in the Linf ball for logits = x: +-eps on the two coordinates
    worst = F.cross_entropy(model(x + 0.1 * torch.stack([torch.tensor([-1.0, 1.0]) * (1 - 2 * t) for t in y]).view(4, 1, 1, 2)), y)
    assert out.loss.item() == pytest.approx(worst.item(), rel=1e-5)


def test_free_at_replays_and_carries_delta():
    model = Tiny(W)
    m = METHODS["free_at"](model, threat=ThreatModel("Linf", 0.1), replays=3)
    assert m.replays == 3 and m.epochs_for(9) == 3
    x = torch.full((1, 1, 1, 2), 0.5)
    y = torch.tensor([0])
    for _ in range(2):
        out = m.loss(x, y)
        out.loss.backward()
        m.after_backward()
    # each replay moves delta by eps*sign(grad): (-eps, +eps) after clipping to the ball
    torch.testing.assert_close(m.delta, torch.tensor([[[[-0.1, 0.1]]]]))


def test_method_options_are_validated():
    with pytest.raises(ValueError, match="has no option"):
        METHODS["natural"](Tiny(W), bogus=1)


def test_methods_declare_what_the_trainer_asks():
    from rrm_fast.methods import RobustDropStop

    fast = METHODS["fast_at"]
    assert fast.default_schedule == "cyclic" and fast.early_stop == RobustDropStop(0.2)
    others = [cls for name, cls in METHODS.items() if name != "fast_at"]
    assert all(cls.default_schedule == "cosine" and cls.early_stop is None for cls in others)
    teacher = Tiny(W)
    assert "drop --compile" in METHODS["kdiga"](Tiny(W), teacher).compile_conflict()
    assert METHODS["kdiga"](Tiny(W), teacher, iga_gamma=0.0).compile_conflict() is None
    assert METHODS["rrm"](Tiny(W), teacher).compile_conflict() is None


class Counting(nn.Module):
    """Wraps a module and counts its calls (stands in for the DDP wrapper)."""

    def __init__(self, module):
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, *a, **kw):
        self.calls += 1
        return self.module(*a, **kw)


@pytest.mark.parametrize("name", ["natural", "pgd_at", "fast_at", "free_at", "rrm"])
def test_only_the_training_forward_goes_through_train_model(name):
    student, attacked = Tiny(W), Counting(Tiny(W))
    attacked.module.fc = student.fc  # the same weights: the count shows which module each pass used
    wrapper = Counting(student)
    teacher = Tiny(torch.eye(2)) if METHODS[name].needs_teacher else None
    m = METHODS[name](attacked, teacher, ThreatModel("Linf", 0.1, 0.05, 3), train_model=wrapper)
    index = {"index": SampleIndex(torch.tensor([0, 1]), 2)} if m.needs_sample_index else {}  # rrm: its per-image delta
    m.loss(torch.full((2, 1, 1, 2), 0.5), torch.tensor([0, 1]), **index)
    assert wrapper.calls == 1  # the forward whose loss trains the weights
    assert attacked.calls == {"pgd_at": 3, "fast_at": 1}.get(name, 0)  # attack passes: the unwrapped module


def test_rrm_loss_is_the_public_rrm_loss_bit_for_bit():
    from rrm_fast import RRMLoss

    torch.manual_seed(0)
    student, teacher = Tiny(torch.randn(3, 4)), Tiny(torch.randn(3, 4))
    x, y = torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    m = METHODS["rrm"](student, teacher, ThreatModel("Linf", 0.1), xent_weight=0.3, feat_weight=1.7, **PAPER_RRM)
    out = m.loss(x, y)
    logits, phi_s = student(x, return_features=True)
    expected = RRMLoss(0.3, 1.7, "cosine")(logits, y, phi_s, teacher(x, return_features=True)[1])
    assert torch.equal(out.loss, expected) and set(out.parts) == {"ce", "cosine"}
