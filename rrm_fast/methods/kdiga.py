"""KDIGA — knowledge distillation with input gradient alignment (Shao, Yi, Chen & Hsieh, 2021).

    L = alpha * tau^2 * KL(T(x)/tau || S(x)/tau) + (1 - alpha) * CE(S(x), y)
        + gamma * mean_i || grad_x CE(S(x_i), y_i) - grad_x CE(T(x_i), y_i) ||_2

Clean inputs. grad_x CE(T(x), y) is a constant target: one teacher forward WITH a graph to
the input (the teacher's parameters stay frozen) and one backward to x, which also gives the
teacher logits the KD term uses, so the teacher runs once per step. The student's input
gradient is taken with create_graph=True so the trainer's backward differentiates the
alignment term through it (double backprop). Per-sample gradients are the gradient of the
summed per-sample CE: exact for models without batch statistics (the CNNs, VGG without BN);
with BatchNorm in train mode samples are coupled through the batch statistics, as in any
batched implementation. Defaults alpha = 0.5, tau = 1, gamma = 0.5 (METHODS.md).
"""
import torch
import torch.nn.functional as F

from .base import FRACTION, NON_NEGATIVE, POSITIVE, Method, Option, StepOutput, register
from .distill import distill_kl, upcast
from .kd import KD_ALPHA_HELP, KD_TEMP_HELP


def per_sample_grad_distance(g_student: torch.Tensor, g_teacher: torch.Tensor) -> torch.Tensor:
    """mean_i ||g_student_i - g_teacher_i||_2 over the batch (each gradient flattened per sample)."""
    return torch.linalg.vector_norm(upcast((g_student - g_teacher).flatten(1)), ord=2, dim=1).mean()


@register
class KDIGA(Method):
    name = "kdiga"
    paper = "Shao, Yi, Chen & Hsieh, How and When Adversarial Robustness Transfers in Knowledge Distillation? (2021)"
    needs_teacher = True
    # the teacher's input gradient needs a forward with a graph to x: computed here, not by teacher_forward
    teacher_outputs = frozenset({"logits", "input_grad"})
    options = {
        "kd_temp": Option(1.0, KD_TEMP_HELP, bounds=POSITIVE),
        "kd_alpha": Option(0.5, KD_ALPHA_HELP, bounds=FRACTION),
        "iga_gamma": Option(0.5, "gamma, weight of the input-gradient alignment term", bounds=NON_NEGATIVE),
    }

    def teacher_logits_and_input_grad(self, x, y):
        """The frozen teacher's logits on x and grad_x of its summed per-sample CE (no graph kept)."""
        with torch.enable_grad():
            x_t = x.detach().requires_grad_(True)
            t_logits = self.teacher(x_t)
            ce_t = F.cross_entropy(upcast(t_logits), y, reduction="sum")
            g_t, = torch.autograd.grad(ce_t, x_t)
        return t_logits.detach(), g_t

    @classmethod
    def compile_conflict_with(cls, options):
        if options["iga_gamma"] > 0:
            return ("--method kdiga backpropagates through an input gradient (double backward), which "
                    "torch.compile does not support; drop --compile (or pass --iga-gamma 0)")
        return None

    def loss(self, x, y):
        use_iga = self.iga_gamma > 0
        if use_iga:
            t_logits, g_t = self.teacher_logits_and_input_grad(x, y)
            x_s = x.detach().requires_grad_(True)
        else:  # plain KD + CE: no input gradients at all
            t_logits, _ = self.teacher_forward(x)
            x_s = x
        logits = self.train_model(x_s)
        ce_per_sample = F.cross_entropy(upcast(logits), y, reduction="none")
        ce = ce_per_sample.mean()
        kd = distill_kl(logits, t_logits, self.kd_temp)
        loss = self.kd_alpha * kd + (1.0 - self.kd_alpha) * ce
        parts = {"kd": kd.detach(), "ce": ce.detach()}
        if use_iga:
            g_s, = torch.autograd.grad(ce_per_sample.sum(), x_s, create_graph=True)
            iga = per_sample_grad_distance(g_s, g_t)
            loss = loss + self.iga_gamma * iga
            parts["iga"] = iga.detach()
        return StepOutput(loss, logits, parts)
