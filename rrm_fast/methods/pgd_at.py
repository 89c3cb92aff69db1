"""PGD-AT / SAT (Madry et al., ICLR 2018): CE on PGD examples with a random start."""
import torch.nn.functional as F

from .base import Method, StepOutput, register


@register
class PGDAT(Method):
    name = "pgd_at"
    paper = "Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks (ICLR 2018)"
    adversarial = True

    def loss(self, x, y):
        x_adv = self.attack()(x, y)
        logits = self.train_model(x_adv)
        loss = F.cross_entropy(logits, y)
        return StepOutput(loss, logits, {"ce_adv": loss.detach()})
