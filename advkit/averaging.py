"""Weight averaging: an exponential moving average of the model, parameters and buffers alike.

One copy serves as the ``--wa`` evaluation model and as ADR's EMA teacher. Updates use fused
multi-tensor ops (``torch._foreach_lerp_``), one launch for all floating tensors instead of hundreds.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

# (float sources, float targets, other sources, other targets)
TensorLists = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]


class WeightAverage:
    """``e ← γ·e + (1 − γ)·s`` after every optimizer step, over every state_dict entry.

    BatchNorm running statistics are averaged too (as ADR and timm's ModelEmaV2 do); integer buffers
    such as ``num_batches_tracked`` are copied. The averaged model stays in eval mode and frozen.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight-average decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0
        self._cache: tuple[nn.Module, TensorLists] | None = None

    def _pairs(self, model: nn.Module) -> TensorLists:
        """(float sources, float targets, other sources, other targets), built once per source model.

        Walking ``state_dict`` costs more than the update itself on a GPU, so the tensor lists are kept;
        they hold the parameter and buffer objects themselves (not detached views), so an in-place
        ``load_state_dict`` on either model is still seen.
        """
        if self._cache is not None and self._cache[0] is model:
            return self._cache[1]
        source = list(model.state_dict(keep_vars=True).values())
        target = list(self.model.state_dict(keep_vars=True).values())
        if len(source) != len(target):
            raise ValueError("weight average: the model's state_dict no longer matches the averaged copy")
        float_src: list[torch.Tensor] = []
        float_dst: list[torch.Tensor] = []
        other_src: list[torch.Tensor] = []
        other_dst: list[torch.Tensor] = []
        for src, dst in zip(source, target, strict=True):
            if dst.is_floating_point():
                float_src.append(src)
                float_dst.append(dst)
            else:
                other_src.append(src)
                other_dst.append(dst)
        pairs: TensorLists = (float_src, float_dst, other_src, other_dst)
        self._cache = (model, pairs)
        return pairs

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        float_src, float_dst, other_src, other_dst = self._pairs(model)
        torch._foreach_lerp_(float_dst, float_src, 1.0 - self.decay)
        if other_dst:
            torch._foreach_copy_(other_dst, other_src)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
