"""LowCommTrainer (Hugging Face Trainer) on 2 real gloo worker processes, as torchrun would start
them, with a tiny GPT-2 built from its config: against lowcomm's own hook-mode loop on the same
per-rank batches, the same optimizer and LR schedule."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest
import torch
import torch.distributed as dist

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

from lowcomm import ALGORITHMS, worker_groups  # noqa: E402
from lowcomm.communication.communicator import payload_bytes, ring_all_reduce_bytes  # noqa: E402
from tests.distributed import run_workers  # noqa: E402

STEPS, ACCUMULATION, BATCH, LENGTH, VOCAB = 7, 2, 2, 16, 64
CHECKPOINT = 4  # mid-interval: the local models differ from the global one
DILOCO = {"sync_interval": 3}  # outer steps after steps 3 and 6, and finish() after 7
PALSGD = {"sync_interval": 3, "warmup_steps": 2, "pseudo_sync_prob": 0.4, "seed": 1}  # steps 4 and 7 skip their batch


def tiny_gpt2(seed: int) -> Any:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


def token_rows(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Rows of token ids; no label on the first token, which no token predicts, so that the Trainer
    counts the tokens of the loss as the model does (its mean over the tokens, as in the loop's)."""
    ids = torch.randint(0, VOCAB, (count, LENGTH), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": row, "labels": torch.cat([torch.tensor([-100]), row[1:]])} for row in ids]


TRAIN, EVAL = token_rows(64, 1), token_rows(8, 2)


def as_torchrun() -> None:
    """The environment torchrun gives each rank (the gloo group is already up)."""
    rank, size = str(dist.get_rank()), str(dist.get_world_size())
    os.environ.update(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=size, LOCAL_WORLD_SIZE=size, OMP_NUM_THREADS="1")


def arguments(output_dir: str, **options: Any) -> Any:
    return transformers.TrainingArguments(
        output_dir, use_cpu=True, max_steps=STEPS, per_device_train_batch_size=BATCH, per_device_eval_batch_size=4,
        gradient_accumulation_steps=ACCUMULATION, learning_rate=1e-3, train_sampling_strategy="sequential",
        logging_steps=1, report_to="none", disable_tqdm=True, **options)


def trainer_of(algo: str, options: dict[str, Any], output_dir: str, groups: dict[str, int] | None = None,
               **arguments_options: Any) -> Any:
    from lowcomm.integrations.transformers import LowCommTrainer

    return LowCommTrainer(model=tiny_gpt2(seed=100 + dist.get_rank()), args=arguments(output_dir, **arguments_options),
                          train_dataset=TRAIN, eval_dataset=EVAL, algo=algo, **(groups or {}), **options)


def hook_mode(algo: str, options: dict[str, Any], trainer: Any, mesh: Any = None) -> dict[str, Any]:
    """lowcomm's own loop on the batches the Trainer gave this rank: the global model after step
    ``CHECKPOINT`` and at the end, and the steps that skipped their batch."""
    model = tiny_gpt2(seed=100)  # rank 0's, as the strategy broadcasts it
    args = trainer.args
    cls, kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(args)
    optimizer = cls(model.parameters(), weight_decay=args.weight_decay, **kwargs)
    schedule = transformers.get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=0,
                                          num_training_steps=STEPS)
    strategy = ALGORITHMS[algo](model, optimizer, mesh=mesh, **options)
    batches = iter(trainer.get_train_dataloader())
    result: dict[str, Any] = {"skipped": []}
    with strategy:
        for t in range(1, STEPS + 1):
            micro_batches = [next(batches) for _ in range(ACCUMULATION)]
            if strategy.next_step_needs_batch():
                for i, batch in enumerate(micro_batches):
                    with contextlib.nullcontext() if i == ACCUMULATION - 1 else strategy.no_sync():
                        (strategy.model(**batch).loss / ACCUMULATION).backward()
            else:
                result["skipped"].append(t)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            if t == CHECKPOINT:
                result["at_checkpoint"] = strategy.global_state_dict()
    result["global"] = strategy.global_state_dict()
    return result


def eval_loss(state: dict[str, torch.Tensor]) -> float:
    model = tiny_gpt2(seed=0)
    model.load_state_dict(state)
    batch = {key: torch.stack([row[key] for row in EVAL]) for key in EVAL[0]}
    with torch.no_grad():
        return float(model.eval()(**batch).loss)


def model_sizes() -> tuple[int, int, int]:
    """Bytes of the model's parameters, of its floating-point buffers, and of its state dict."""
    model = tiny_gpt2(seed=0)
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    state = list(model.state_dict().values())
    return payload_bytes(list(model.parameters())), payload_bytes(buffers), payload_bytes(state)


def scenarios(tmp: str) -> dict[str, Any]:
    as_torchrun()
    # DiLoCo: traffic, the hook-mode reference, evaluate() during and after training, save_model()
    trainer = trainer_of("diloco", DILOCO, f"{tmp}/diloco", eval_strategy="steps", eval_steps=CHECKPOINT,
                         save_strategy="steps", save_steps=CHECKPOINT)
    trainer.train()
    reference = hook_mode("diloco", DILOCO, trainer)
    trainer.save_model(f"{tmp}/diloco/final")
    diloco = {
        "global": trainer.strategy.global_state_dict(), "reference": reference,
        "bytes": trainer.strategy.comm_stats.bytes_sent, "wrapped": type(trainer.model_wrapped).__name__,
        "eval_during": [h["eval_loss"] for h in trainer.state.log_history if h.get("step") == CHECKPOINT
                        and "eval_loss" in h],
        "eval_after": trainer.evaluate()["eval_loss"],
        "reference_eval": [eval_loss(reference["at_checkpoint"]), eval_loss(reference["global"])],
        "saved": transformers.GPT2LMHeadModel.from_pretrained(f"{tmp}/diloco/final").state_dict(),
        "checkpoint": transformers.GPT2LMHeadModel.from_pretrained(
            f"{tmp}/diloco/checkpoint-{CHECKPOINT}").state_dict(),
        "first_batch": next(iter(trainer.get_train_dataloader()))["input_ids"],
    }
    # PALSGD: warm-up (gradients averaged, then clipped), skipped batches, a resumed run
    trainer = trainer_of("palsgd", PALSGD, f"{tmp}/palsgd", save_strategy="steps", save_steps=CHECKPOINT)
    forwards = []
    trainer.model.register_forward_hook(lambda *_: forwards.append(1))
    trainer.train()
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    resumed = trainer_of("palsgd", PALSGD, f"{tmp}/resumed")
    resumed.train(resume_from_checkpoint=f"{tmp}/palsgd/checkpoint-{CHECKPOINT}")
    palsgd = {"global": trainer.strategy.global_state_dict(), "reference": hook_mode("palsgd", PALSGD, trainer),
              "bytes": trainer.strategy.comm_stats.bytes_sent, "forwards": len(forwards), "losses": losses,
              "resumed": resumed.strategy.global_state_dict()}
    # one worker group of both ranks: DDP inside it, from the strategy
    trainer = trainer_of("diloco", DILOCO, f"{tmp}/groups", groups={"groups": 1, "group_size": 2})
    trainer.train()
    groups = {"global": trainer.strategy.global_state_dict(), "wrapped": type(trainer.model_wrapped).__name__,
              "reference": hook_mode("diloco", DILOCO, trainer, mesh=worker_groups(1, 2))}
    return {"diloco": diloco, "palsgd": palsgd, "groups": groups, "sizes": model_sizes()}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_workers(scenarios, 2, str(tmp_path_factory.mktemp("hf")))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def test_only_the_algorithms_traffic_between_workers(results: list[dict[str, Any]]) -> None:
    """DiLoCo: the initial broadcast and 3 outer steps; PALSGD also averages the gradients of its 2
    warm-up steps once each, after the second micro-batch (no_sync around the first)."""
    params, buffers, broadcast = results[0]["sizes"]
    outer_step = ring_all_reduce_bytes(params + buffers + 4, 2)  # pseudo-gradient, buffers, flag
    warmup_step = ring_all_reduce_bytes(params, 2)
    for rank, r in enumerate(results):
        first = broadcast if rank == 0 else 0
        assert r["diloco"]["wrapped"] == "GPT2LMHeadModel"  # no DistributedDataParallel
        assert r["diloco"]["bytes"] == first + 3 * outer_step
        assert r["palsgd"]["bytes"] == first + 2 * warmup_step + 3 * outer_step
    assert not torch.equal(results[0]["diloco"]["first_batch"], results[1]["diloco"]["first_batch"])


@pytest.mark.parametrize("algo", ["diloco", "palsgd", "groups"])
def test_every_rank_ends_with_the_hook_mode_global_model(results: list[dict[str, Any]], algo: str) -> None:
    for r in results:
        assert_close(r[algo]["global"], results[0][algo]["global"], atol=0)
        assert_close(r[algo]["global"], r[algo]["reference"]["global"])


def test_worker_groups_train_with_the_strategys_ddp_inside(results: list[dict[str, Any]]) -> None:
    assert [r["groups"]["wrapped"] for r in results] == ["DistributedDataParallel"] * 2


def test_pseudo_synchronisations_skip_their_batch(results: list[dict[str, Any]]) -> None:
    r = results[0]["palsgd"]
    assert r["reference"]["skipped"] == [4, 7]
    assert r["forwards"] == ACCUMULATION * (STEPS - 2)
    assert r["losses"][4] == r["losses"][3] and r["losses"][7] == r["losses"][6]  # the last computed loss


def test_a_resumed_run_ends_as_an_uninterrupted_one(results: list[dict[str, Any]]) -> None:
    for r in results:
        assert_close(r["palsgd"]["resumed"], r["palsgd"]["global"])


def test_evaluate_and_save_model_use_the_global_model(results: list[dict[str, Any]]) -> None:
    for r in results:
        d = r["diloco"]
        during, after = d["reference_eval"]
        assert d["eval_during"] == [pytest.approx(during, abs=1e-5)]
        assert d["eval_after"] == pytest.approx(after, abs=1e-5)
        assert_close(d["checkpoint"], d["reference"]["at_checkpoint"])
        assert_close(d["saved"], d["global"], atol=0)
