"""The inner optimizers of ``lowcomm train`` (``--optimizer``): AdamW, Muon with AdamW, and SGD.

Muon (Jordan et al., 2024; ``torch.optim.Muon``) orthogonalises the momentum of 2-D weight matrices
only; as in MuLoCo (Thérien et al., 2025), DiLoCo with a Muon inner optimizer, it updates the hidden
layers' matrices and AdamW everything else. Strategies need one optimizer over all of the model's
trainable parameters, so :class:`MuonWithAdamW` is one ``torch.optim.Optimizer`` holding both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from lowcomm.training.config import TrainConfig

SGD_MOMENTUM = 0.9


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The model's 2-D parameters but its embeddings (the weights of ``nn.Embedding`` modules) and
    its output head (``get_output_embeddings()`` of a ``transformers`` model, else ``lm_head``):
    the weight matrices of its hidden layers. Norms and biases are 1-D."""
    excluded = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    heads = [module.get_output_embeddings() for module in model.modules() if hasattr(module, "get_output_embeddings")]
    for head in [*heads, getattr(model, "lm_head", None)]:
        if head is not None:
            excluded.add(id(head.weight))
    return [p for p in model.parameters() if p.ndim == 2 and id(p) not in excluded]


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` for ``muon_params`` and ``torch.optim.AdamW`` for ``adamw_params``, as one
    optimizer: its param groups are AdamW's, then Muon's, each tagged ``"muon": False`` or ``True``,
    and one state; its ``state_dict`` is ``torch.optim.Optimizer``'s over all of them, so it resumes
    exactly, and LR schedulers scale every group's ``lr``. Both take ``weight_decay``, decoupled."""

    def __init__(
        self,
        muon_params: Iterable[Tensor],
        adamw_params: Iterable[Tensor],
        *,
        lr: float,
        muon_lr: float,
        weight_decay: float,
        fused: bool | None = None,
    ) -> None:
        self.adamw = torch.optim.AdamW(adamw_params, lr=lr, weight_decay=weight_decay, fused=fused)
        self.muon = torch.optim.Muon(muon_params, lr=muon_lr, weight_decay=weight_decay)
        for optimizer, tag in ((self.adamw, False), (self.muon, True)):
            for group in optimizer.param_groups:
                group["muon"] = tag
        super().__init__(self.adamw.param_groups + self.muon.param_groups, {})
        self.share()

    def share(self) -> None:
        """Let AdamW and Muon step this optimizer's groups (the same dictionaries) and state."""
        self.adamw.param_groups = [group for group in self.param_groups if not group["muon"]]
        self.muon.param_groups = [group for group in self.param_groups if group["muon"]]
        self.adamw.state = self.muon.state = self.state

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.adamw.step()
        self.muon.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # replaces the groups and the state
        self.share()


def inner_optimizer(config: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The ``--optimizer`` over all of ``model``'s parameters, at ``--lr`` (Muon's at ``--muon-lr``)."""
    fused = device.type == "cuda"
    chosen = config.optimizer
    if chosen.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=chosen.lr, momentum=SGD_MOMENTUM,
                               weight_decay=chosen.weight_decay)
    if chosen.name == "muon":
        hidden = {id(p) for p in hidden_matrices(model)}
        return MuonWithAdamW(
            [p for p in model.parameters() if id(p) in hidden],
            [p for p in model.parameters() if id(p) not in hidden],
            lr=chosen.lr, muon_lr=chosen.muon_lr, weight_decay=chosen.weight_decay, fused=fused,
        )
    return torch.optim.AdamW(model.parameters(), lr=chosen.lr, weight_decay=chosen.weight_decay, fused=fused)
