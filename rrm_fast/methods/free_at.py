"""Free AT (Shafahi et al., NeurIPS 2019): minibatch replay.

Each minibatch is replayed m times; the one backward of each replay gives both the weight
gradient (optimizer step) and the input gradient, which moves delta by a signed step of
size eps (for L2: a normalised step of eps). delta is carried across replays and
minibatches, as in the paper. The epoch budget is divided by m so the total number of
gradient computations matches natural training's.
"""
import torch
import torch.nn.functional as F

from .. import ops
from .base import AT_LEAST_ONE, Method, Option, StepOutput, register


@register
class FreeAT(Method):
    name = "free_at"
    paper = "Shafahi et al., Adversarial Training for Free! (NeurIPS 2019)"
    adversarial = True
    options = {"replays": Option(8, "minibatch replays m", int, bounds=AT_LEAST_ONE)}

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.delta = None
        self._x = None
        self._restored = False

    def loss(self, x, y):
        if self.delta is None or self.delta.shape != x.shape:
            self.delta = torch.zeros_like(x, dtype=torch.float32)  # carried across minibatches
        elif self._restored:  # a checkpoint stores delta contiguous; give it x's memory layout back
            self.delta = torch.empty_like(x, dtype=torch.float32).copy_(self.delta)
        self._restored = False
        self.delta.requires_grad_(True)
        self._x = x
        logits = self.train_model(x + self.delta)
        loss = F.cross_entropy(logits, y)
        return StepOutput(loss, logits, {"ce_adv": loss.detach()})

    def after_backward(self):
        t = self.threat
        grad = self.delta.grad
        self.delta.requires_grad_(False)
        self.delta.grad = None
        step = ops.linf_step_ if t.norm == "Linf" else ops.l2_step_
        step(self.delta, grad, self._x, t.eps, t.eps, 0.0, 1.0)

    def epochs_for(self, epochs):
        return max(1, round(epochs / self.replays))

    def state_dict(self):
        # delta is carried from one minibatch to the next, so a resumed run needs it
        return {} if self.delta is None else {"delta": self.delta.detach()}

    def load_state_dict(self, state):
        self.delta = state["delta"].float().clone() if "delta" in state else None
        self._restored = self.delta is not None
