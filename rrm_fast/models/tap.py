"""Use any nn.Module (a timm or RobustBench model, say) as teacher or student.

``FeatureTap(model, layer)`` reads phi from a named submodule with a forward hook:
``layer="fc"`` with ``use="input"`` takes the *input* of the classifier (the paper's phi),
``use="output"`` takes that module's output (flattened), e.g. ``layer="avgpool"``.
The wrapped model keeps its own normalisation; pass ``mean``/``std`` if it expects
normalised inputs, so that rrm_fast can feed it [0, 1] images like every other model.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from .base import Normalize


class FeatureTap(nn.Module):
    def __init__(self, model: nn.Module, layer: str, use: str = "input", mean=None, std=None):
        super().__init__()
        if use not in ("input", "output"):
            raise ValueError(f"FeatureTap use={use!r}: choose 'input' or 'output'")
        modules = dict(model.named_modules())
        if layer not in modules:
            names = ", ".join(n for n in modules if n)[:300]
            raise ValueError(f"layer {layer!r} not found in {type(model).__name__}; its layers are: {names}")
        self.model = model
        self.layer = layer
        self.use = use
        self.normalize = Normalize(mean, std) if mean is not None else nn.Identity()
        self._phi = None
        target = modules[layer]
        if use == "input":
            target.register_forward_pre_hook(self._grab_input)
        else:
            target.register_forward_hook(self._grab_output)

    def _grab_input(self, module, args):
        self._phi = args[0].flatten(1)

    def _grab_output(self, module, args, output):
        self._phi = output.flatten(1)

    def forward(self, x, return_features: bool = False):
        self._phi = None
        logits = self.model(self.normalize(x))
        if not return_features:
            return logits
        if self._phi is None:
            raise RuntimeError(f"layer {self.layer!r} was not called in the forward pass; name a layer on the path to the logits")
        phi, self._phi = self._phi, None
        return logits, phi

    def features(self, x):
        return self.forward(x, return_features=True)[1]

    @property
    def num_classes(self) -> int:
        return int(self._probe()[0].shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self._probe()[1].shape[1])

    def _probe(self):
        # Infer widths from one forward on a dummy input of the model's expected size.
        size = getattr(self, "input_size", None)
        if size is None:
            raise RuntimeError("set FeatureTap.input_size = (C, H, W) to let rrm_fast infer feature widths")
        p = next(self.model.parameters())
        with torch.no_grad():
            was = self.training
            self.eval()
            out = self.forward(torch.zeros((1,) + tuple(size), device=p.device, dtype=p.dtype), return_features=True)
            self.train(was)
        return out

    def add_projection(self, dim: int) -> None:
        """Insert a learnable projection to ``dim`` before the classifier, so the projected vector
        is phi and feeds a new classifier. Needs the tap on the classifier's input."""
        if dim == self.feature_dim:
            return
        if self.use != "input" or not isinstance(dict(self.model.named_modules())[self.layer], nn.Linear):
            raise ValueError(
                f"a projection needs phi to be the input of a Linear classifier; tap it as FeatureTap(model, '<classifier>', use='input') (got {self.layer!r}, use={self.use!r})"
            )
        old = dict(self.model.named_modules())[self.layer]
        new = nn.Sequential(OrderedDict(proj=nn.Linear(old.in_features, dim), fc=nn.Linear(dim, old.out_features)))
        new.to(device=old.weight.device)
        parent_name, _, child = self.layer.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        setattr(parent, child, new)
        new.fc.register_forward_pre_hook(self._grab_input)  # phi is now the projected vector
        self.layer = f"{self.layer}.fc" if self.layer else "fc"

    @property
    def classifier(self) -> nn.Linear:
        """The Linear layer mapping phi to logits (for --head-init teacher)."""
        module = self.model.get_submodule(self.layer)
        if self.use != "input" or not isinstance(module, nn.Linear):
            raise ValueError(f"no Linear classifier reads phi at {self.layer!r}; tap the classifier's input to copy heads")
        return module
