"""Natural (standard) training: CE on clean inputs. The non-robust reference point."""
import torch.nn.functional as F

from .base import Method, StepOutput, register


@register
class Natural(Method):
    name = "natural"
    paper = "-"

    def loss(self, x, y):
        logits = self.train_model(x)
        loss = F.cross_entropy(logits, y)
        return StepOutput(loss, logits, {"ce": loss.detach()})
