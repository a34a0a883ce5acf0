"""How fast the simulation trains: K simulated workers against one worker with a K-times larger batch.

Both train the same model on random tokens for the same number of steps, so both see the same
tokens per step; the simulation runs its workers' passes batched into one
(:mod:`lowcomm.training.batched_replicas`) or each in its worker's thread, as ``--sim-passes``
chooses, and averages gradients every step (DDP's rule) through
:class:`~lowcomm.communication.simulated.SimulatedCommunicator`. The ratio of their tokens per
second is the price of simulating K workers instead of training one big batch.

    python -m lowcomm.benchmarks.sim_throughput --model gpt-tiny --workers 8 --passes batched
"""

from __future__ import annotations

import argparse
import os
import threading
from functools import partial

import torch

from lowcomm.algorithms.gradient_averaging import GradientAveraging
from lowcomm.benchmarks.timing import seconds_per_step
from lowcomm.communication.simulated import SimulatedCommunicator, run_simulated
from lowcomm.models import build_model
from lowcomm.training.batched_replicas import ReplicaBatcher
from lowcomm.training.loss import cross_entropy

VOCAB_SIZE = 2048
_BUILD_LOCK = threading.Lock()  # building a model draws from torch's global generator


def training_steps(model_name: str, batch_size: int, seq_len: int, steps: int,
                   communicator: SimulatedCommunicator | None = None, batched: bool = False) -> tuple[float, int]:
    """Train ``steps`` steps on random tokens; return the seconds they took (after one warm-up step)
    and the tokens they trained on."""
    with _BUILD_LOCK:
        torch.manual_seed(0)
        model = build_model(model_name, vocab_size=VOCAB_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rank = 0 if communicator is None else communicator.rank
    tokens = torch.randint(VOCAB_SIZE, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(rank))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if communicator is None:
        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            cross_entropy(model, inputs, targets).backward()
            optimizer.step()
    else:
        strategy = GradientAveraging(model, optimizer, communicator=communicator)
        loss = partial(ReplicaBatcher(communicator).loss if batched else cross_entropy, model, inputs, targets)

        def step() -> None:
            strategy.step(loss)

    return seconds_per_step(step, steps, warmup=1, device=torch.device("cpu")) * steps, inputs.numel() * steps


def compare(model_name: str, workers: int, batch_size: int, seq_len: int, steps: int,
            passes: str = "batched") -> dict[str, float]:
    """Tokens per second of ``workers`` simulated workers (their passes ``"batched"`` or in
    ``"threads"``, one intra-op thread per core and worker) and of one worker with their total batch."""
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    single_s, single_tokens = training_steps(model_name, workers * batch_size, seq_len, steps)
    if passes == "threads":
        torch.set_num_threads(max(1, cores // workers))
    simulated = run_simulated(
        workers, lambda comm: training_steps(model_name, batch_size, seq_len, steps, comm, passes == "batched")
    )
    torch.set_num_threads(cores)
    simulated_s = max(seconds for seconds, _ in simulated)
    simulated_tokens = sum(tokens for _, tokens in simulated)
    return {"single_tokens": single_tokens, "simulated_tokens": simulated_tokens,
            "single_tokens_per_s": single_tokens / single_s, "simulated_tokens_per_s": simulated_tokens / simulated_s,
            "ratio": single_s / simulated_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt-tiny")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--passes", choices=("batched", "threads"), default="batched")
    args = parser.parse_args()
    result = compare(args.model, args.workers, args.batch_size, args.seq_len, args.steps, args.passes)
    print(f"{args.workers} simulated workers ({args.passes}): {result['simulated_tokens_per_s']:,.0f} tokens/s; one "
          f"worker with a {args.workers}x batch: {result['single_tokens_per_s']:,.0f} tokens/s; ratio {result['ratio']:.2f}")


if __name__ == "__main__":
    main()
