"""An ordinary PyTorch training loop with lowcomm in hook mode: 3 lines differ from the DDP version.

    torchrun --nproc-per-node 2 examples/plain_loop.py                  # generated stories
    torchrun --nproc-per-node 2 examples/plain_loop.py ../shared/data/kjv.txt --steps 600

A character-level GPT, AdamW with warm-up and cosine decay, 2 micro-batches, bf16 autocast and the
loop's own gradient clipping. The two lines marked ``# lowcomm`` replace ``model = DDP(model)`` and
``with strategy:`` wraps the loop; ``strategy.no_sync()`` stands where a DDP script has
``model.no_sync()``; the rest is what a DDP script already has. PALSGD asks nothing of the loop, but a loop that asks
``strategy.next_step_needs_batch()`` skips the batches of its pseudo-synchronisation steps (about p = 20%
of the forward and backward passes after the warm-up).
"""

from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import lowcomm
from lowcomm.data.stories import generate_stories
from lowcomm.models.gpt import GPT, GPTConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", nargs="?", help="a UTF-8 text file (default: generated stories)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--algo", default="palsgd", choices=sorted(lowcomm.ALGORITHMS))
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    text = Path(args.text).read_text() if args.text else "\n".join(generate_stories(2000))
    alphabet = sorted(set(text))
    data = torch.tensor([alphabet.index(c) for c in text])
    held_out, data = data[: len(data) // 20], data[len(data) // 20 :]
    model = GPT(GPTConfig(vocab_size=len(alphabet), max_positions=64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: min((t + 1) / 30, 0.5 * (1 + math.cos(math.pi * min(t, args.steps) / args.steps))))
    strategy = lowcomm.ALGORITHMS[args.algo](model, optimizer)  # lowcomm
    model = strategy.model  # lowcomm: the module to call (the DDP wrapper inside a worker group)
    generator = torch.Generator().manual_seed(rank)

    def batch(source: torch.Tensor, size: int = 16, length: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(source) - length - 1, (size,), generator=generator)
        windows = torch.stack([source[s : s + length + 1] for s in starts.tolist()])
        return windows[:, :-1], windows[:, 1:]

    def loss_of(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(inputs)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    with strategy:  # lowcomm: optimizer.step() now drives the algorithm; leaving the block finishes it
        for step in range(args.steps):
            if strategy.next_step_needs_batch():  # optional: False only for PALSGD's pseudo-synchronisations
                for micro_batch in range(2):
                    with strategy.no_sync() if micro_batch == 0 else contextlib.nullcontext():  # DDP: model.no_sync()
                        (loss_of(*batch(data)) / 2).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            if step % 100 == 0 and rank == 0:
                print(f"step {step}: sent {strategy.comm_stats.bytes_sent / 1e6:.1f} MB")
    with strategy.global_weights(), torch.no_grad():  # evaluate the global model in place (every rank)
        eval_loss = sum(loss_of(*batch(held_out)).item() for _ in range(10)) / 10
    if rank == 0:
        print(f"{args.algo} x{world_size}: eval loss of the global model {eval_loss:.4f} after {args.steps} steps, "
              f"{strategy.comm_stats.bytes_sent / 1e6:.1f} MB sent by rank 0")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
