"""LowCommStrategy on two real processes (a gloo group; Lightning sees them as launched outside it,
through LOCAL_RANK), against lowcomm's own hook-mode loop on the same batches."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lowcomm import ALGORITHMS
from lowcomm.communication.communicator import payload_bytes, ring_all_reduce_bytes
from tests.algorithms import mlp
from tests.distributed import run_workers

L = pytest.importorskip("lightning.pytorch")
from lowcomm.integrations.lightning import LowCommStrategy, rank_state_path  # noqa: E402

BATCH, BATCHES = 4, 8  # per rank and epoch
EPOCHS = 2
LR = 0.02
DILOCO = {"sync_interval": 3, "warmup_steps": 2}
PALSGD = {"sync_interval": 3, "warmup_steps": 2, "pseudo_sync_prob": 0.4, "seed": 3}


def data(size: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 4, generator=g, dtype=torch.float64)
    return TensorDataset(x, x.sum(dim=1, keepdim=True).sin())


TRAIN, VAL = data(2 * BATCH * BATCHES, 0), data(2 * BATCH, 1)


class Regression(L.LightningModule):
    """The MLP of tests.algorithms.mlp, AdamW with a warm-up schedule stepped every step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp.mlp()
        self.trained_batches = 0
        self.validated: list[torch.Tensor] = []
        self.trained_through = ""

    def on_train_start(self) -> None:
        self.trained_through = type(self.trainer.strategy.model).__name__

    def forward(self, batch: Any) -> torch.Tensor:
        return mlp.loss_of(self.net, batch)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.trained_batches += 1
        return mlp.loss_of(self.net, batch)  # not through self(): the strategy sees the loss all the same

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.validated.append(mlp.flat(self.net))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=LR)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(1.0, (t + 1) / 4))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TRAIN, batch_size=BATCH)  # Lightning adds a shuffling DistributedSampler

    def val_dataloader(self) -> DataLoader:
        return DataLoader(VAL, batch_size=BATCH)


def fit(strategy: LowCommStrategy, root: str, ckpt_path: str | None = None, **options: Any) -> dict[str, Any]:
    module = Regression()
    # every epoch, inside validation (while the global weights are swapped in)
    checkpoints = L.callbacks.ModelCheckpoint(dirpath=root, save_top_k=-1, save_on_train_epoch_end=False)
    trainer = L.Trainer(strategy=strategy, accelerator="cpu", devices=2, max_epochs=EPOCHS, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=root, callbacks=[checkpoints], **options)
    trainer.fit(module, ckpt_path=ckpt_path)
    return {"final": mlp.flat(module.net), "validated": module.validated, "trained_batches": module.trained_batches,
            "bytes": strategy.algorithm.comm_stats.bytes_sent, "steps": trainer.global_step,
            "trained_through": module.trained_through}


def hook_mode(algo: str, options: dict[str, Any], accumulate: int = 1, clip: float | None = None) -> dict[str, Any]:
    """lowcomm's own loop on this rank's batches: the global model at each epoch's end and at the end."""
    sampler = DistributedSampler(TRAIN, num_replicas=2, rank=dist.get_rank(), shuffle=True, seed=0)  # Lightning's
    module = Regression()
    optimizers = module.configure_optimizers()
    optimizer, schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    strategy = ALGORITHMS[algo](module, optimizer, **options)
    validated, trained = [], 0
    with strategy:
        for epoch in range(EPOCHS):
            sampler.set_epoch(epoch)
            batches = list(DataLoader(TRAIN, batch_size=BATCH, sampler=sampler))
            for step in range(BATCHES // accumulate):
                if strategy.next_step_needs_batch():
                    for i in range(accumulate):
                        last = i == accumulate - 1
                        with contextlib.nullcontext() if last else strategy.no_sync():
                            (strategy.model(batches[step * accumulate + i]) / accumulate).backward()
                        trained += 1
                    if clip is not None:
                        torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
            validated.append(torch.cat([v.flatten() for v in strategy.global_state_dict().values()]))
    return {"final": torch.cat([v.flatten() for v in strategy.global_state_dict().values()]), "validated": validated,
            "trained_batches": trained, "bytes": strategy.comm_stats.bytes_sent}


def runs(root: str) -> dict[str, Any]:
    os.environ["LOCAL_RANK"] = str(dist.get_rank())  # the processes exist: Lightning launches none
    accumulated = dict(accumulate_grad_batches=2, gradient_clip_val=0.05)
    return {
        "diloco": fit(LowCommStrategy("diloco", **DILOCO), f"{root}/diloco", **accumulated),
        "diloco_hooks": hook_mode("diloco", DILOCO, accumulate=2, clip=0.05),
        "ddp": fit(LowCommStrategy("ddp"), f"{root}/ddp", **accumulated),
        "ddp_hooks": hook_mode("ddp", {}, accumulate=2, clip=0.05),
        "palsgd": fit(LowCommStrategy("palsgd", **PALSGD), f"{root}/palsgd"),
        "palsgd_hooks": hook_mode("palsgd", PALSGD),
        "palsgd_resumed": fit(LowCommStrategy("palsgd", **PALSGD), f"{root}/resumed",
                              ckpt_path=f"{root}/palsgd/epoch=0-step={BATCHES}.ckpt"),
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lightning")


@pytest.fixture(scope="module")
def two_ranks(root: Path) -> list[dict[str, Any]]:
    return run_workers(runs, 2, str(root))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("algo", ["diloco", "palsgd", "ddp"])
def test_lightning_equals_hook_mode(two_ranks: list[dict[str, Any]], algo: str) -> None:
    for rank, result in enumerate(two_ranks):
        run, reference = result[algo], result[f"{algo}_hooks"]
        assert close(run["final"], reference["final"]), f"rank {rank}"
        assert close(run["final"], two_ranks[0][algo]["final"]), f"rank {rank} ends with another model"
        # validation saw the global model, mid-interval, and training went on from the local one
        assert len(run["validated"]) == EPOCHS
        for seen, expected in zip(run["validated"], reference["validated"]):
            assert close(seen, expected), f"rank {rank}"
        assert run["trained_batches"] == reference["trained_batches"], f"rank {rank}"
        assert run["bytes"] == reference["bytes"], f"rank {rank}"


def test_distributed_data_parallel_only_for_ddp(two_ranks: list[dict[str, Any]]) -> None:
    assert {algo: two_ranks[1][algo]["trained_through"] for algo in ("diloco", "palsgd", "ddp")} == {
        "diloco": "Regression", "palsgd": "Regression", "ddp": "DistributedDataParallel"}


def test_palsgd_skips_the_batches_of_pseudo_synchronisations(two_ranks: list[dict[str, Any]]) -> None:
    run = two_ranks[0]["palsgd"]
    assert run["steps"] == EPOCHS * BATCHES
    assert 0 < EPOCHS * BATCHES - run["trained_batches"] < EPOCHS * BATCHES - PALSGD["warmup_steps"]


def test_bytes_follow_the_formula(two_ranks: list[dict[str, Any]]) -> None:
    """DiLoCo: rank 0's initial broadcast, the warm-up's gradient averages, then only the outer steps
    (after steps 3 and 6, and the one of finish() after step 8): no all-reduce per step."""
    model = mlp.mlp()
    params = payload_bytes(list(model.parameters()))
    steps = EPOCHS * BATCHES // 2
    outer_steps = len([t for t in range(DILOCO["warmup_steps"] + 1, steps + 1) if t % DILOCO["sync_interval"] == 0]) + 1
    between = DILOCO["warmup_steps"] * ring_all_reduce_bytes(params, 2) + outer_steps * ring_all_reduce_bytes(
        params + 8, 2)  # + the finite flag, a float64
    broadcast = payload_bytes(list(model.state_dict().values()))
    assert [r["diloco"]["bytes"] for r in two_ranks] == [broadcast + between, between]
    # lowcomm's DDP: torch's DistributedDataParallel around the module, one gradient all-reduce per step
    between = steps * ring_all_reduce_bytes(params, 2)
    assert [r["ddp"]["bytes"] for r in two_ranks] == [broadcast + between, between]


def test_resumed_run_ends_equal_to_the_uninterrupted_one(two_ranks: list[dict[str, Any]], root: Path) -> None:
    checkpoint = root / "palsgd" / f"epoch=0-step={BATCHES}.ckpt"
    assert [rank_state_path(checkpoint, rank).is_file() for rank in (0, 1)] == [True, True]
    for rank, result in enumerate(two_ranks):
        resumed, straight = result["palsgd_resumed"], result["palsgd"]
        assert torch.equal(resumed["final"], straight["final"]), f"rank {rank}"
        assert torch.equal(resumed["validated"][-1], straight["validated"][-1]), f"rank {rank}"
        assert resumed["bytes"] == straight["bytes"], f"rank {rank}"


def test_unknown_algorithm_or_option_is_refused() -> None:
    with pytest.raises(ValueError, match="algo: expected one of"):
        LowCommStrategy("sgd")
    with pytest.raises(ValueError, match="diloco takes no option pseudo_sync_prob"):
        LowCommStrategy("diloco", pseudo_sync_prob=0.2)
