"""How much a lowcomm local step costs against a plain PyTorch training step of the same model.

Both loops train the same model on the same random tokens with AdamW (fused on CUDA), optionally
under bf16 autocast and ``torch.compile``; the lowcomm loop goes through a strategy's ``step`` in a
one-worker process group, with ``sync_interval`` so large that every timed step is a local one.
Reports tokens/s, model FLOP utilisation (6N + 6·layers·T·width FLOPs per token, Kaplan et al.
2020 with causal attention) and peak GPU memory.

    python -m lowcomm.benchmarks.step_speed --model gpt-neo-8m --batch 256 --seq-len 300 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch import nn

from lowcomm.algorithms import ALGORITHMS
from lowcomm.benchmarks.timing import seconds_per_step
from lowcomm.models import build_model
from lowcomm.training.loss import cross_entropy


@dataclass
class StepSpeed:
    loop: str
    tokens_per_s: float
    step_s: float
    mfu: float | None
    peak_memory_bytes: int | None


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter plus causal attention's 6 * layers * T * width."""
    parameters = sum(p.numel() for p in model.parameters())
    config = getattr(model, "config", None)
    attention = 6 * config.n_layer * seq_len * config.n_embd if hasattr(config, "n_layer") else 0
    return 6 * parameters + attention


def measure(
    loop: str,
    model_name: str,
    *,
    implementation: str = "lowcomm",
    vocab_size: int = 50257,
    batch: int = 8,
    seq_len: int = 128,
    steps: int = 10,
    warmup: int = 3,
    precision: str = "fp32",
    compile_model: bool = False,
    device: torch.device = torch.device("cpu"),
    peak_tflops: float | None = None,
) -> StepSpeed:
    """Time ``loop`` ("plain", or an algorithm name such as "palsgd") on one worker."""
    torch.manual_seed(0)
    model = build_model(model_name, vocab_size=vocab_size, implementation=implementation).to(device)
    if compile_model:
        model.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    tokens = torch.randint(0, vocab_size, (batch, seq_len + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    bf16 = precision == "bf16"

    if loop == "plain":

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            cross_entropy(model, inputs, targets, bf16).backward()
            optimizer.step()

    else:
        options = {"sync_interval": 10**9, "warmup_steps": 0} if loop != "ddp" else {}
        if loop == "palsgd":
            options["pseudo_sync_prob"] = 0.0  # time gradient steps only: a pseudo-sync step is cheaper
        strategy = ALGORITHMS[loop](model, optimizer, **options)

        def step() -> None:
            strategy.step(lambda: cross_entropy(strategy.model, inputs, targets, bf16))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = seconds_per_step(step, steps, warmup, device)
    rate = batch * seq_len / seconds
    mfu = rate * flops_per_token(model, seq_len) / (peak_tflops * 1e12) if peak_tflops else None
    memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return StepSpeed(loop, rate, seconds, mfu, memory)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt-neo-8m")
    parser.add_argument("--implementation", choices=["lowcomm", "hf"], default="lowcomm")
    parser.add_argument("--loops", default="plain,palsgd,diloco,ddp")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="e.g. 989 for an H100 SXM in bf16")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        for loop in args.loops.split(","):
            result = measure(
                loop, args.model, implementation=args.implementation, vocab_size=args.vocab_size,
                batch=args.batch, seq_len=args.seq_len, steps=args.steps, warmup=args.warmup,
                precision=args.precision, compile_model=args.compile, device=device, peak_tflops=args.peak_tflops,
            )
            print(json.dumps({"model": args.model, "implementation": args.implementation, **asdict(result)}), flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
