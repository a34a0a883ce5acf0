"""A plain Lightning script trained with DiLoCo between 2 CPU processes:

    python examples/lightning_module.py

The three lines marked ``# lowcomm`` are all that differ from the same script with
``strategy="ddp"``: the import, the strategy, and the report of the bytes sent.
"""

from __future__ import annotations

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lowcomm.integrations.lightning import LowCommStrategy  # lowcomm


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def dataset(size: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 16, generator=g)
    return TensorDataset(x, x[:, :4].sum(dim=1, keepdim=True).div(2).sin())


if __name__ == "__main__":
    L.seed_everything(0)
    trainer = L.Trainer(
        strategy=LowCommStrategy(algo="diloco", sync_interval=16),  # lowcomm
        accelerator="cpu",
        devices=2,
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(Regression(), DataLoader(dataset(4096, 0), batch_size=32, shuffle=True),
                DataLoader(dataset(512, 1), batch_size=128))
    if trainer.is_global_zero:
        print(f"steps {trainer.global_step}, val_loss {trainer.callback_metrics['val_loss']:.4f}")
        print(f"bytes sent by rank 0: {trainer.strategy.algorithm.comm_stats.bytes_sent}")  # lowcomm
