"""A tiny GPT-2, built from its config (nothing is downloaded), trained by the Hugging Face Trainer
with DiLoCo between the ranks instead of DDP:

    torchrun --nproc-per-node 2 examples/hf_trainer.py [--text FILE]

It reads FILE's bytes as tokens, or else generates rows of counting sequences. Against the same
script with the plain ``Trainer`` (``from transformers import Trainer``, ``trainer = Trainer(...)``),
the three lines marked ``# lowcomm`` differ.
"""

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from lowcomm.integrations.transformers import LowCommTrainer  # lowcomm

LENGTH = 32


def token_rows(text: str | None, count: int = 4096) -> list[dict[str, torch.Tensor]]:
    """Rows of LENGTH byte tokens: FILE's bytes, or sequences counting from a random start by a
    random stride (mod 256)."""
    if text:
        data = torch.frombuffer(bytearray(open(text, "rb").read()), dtype=torch.uint8).long()
        ids = data[: len(data) // LENGTH * LENGTH].view(-1, LENGTH)
    else:
        g = torch.Generator().manual_seed(0)
        start, stride = torch.randint(0, 256, (count, 1), generator=g), torch.randint(1, 8, (count, 1), generator=g)
        ids = (start + stride * torch.arange(LENGTH)) % 256
    return [{"input_ids": row, "labels": row} for row in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", help="a local text file to train on (default: generated data)")
    parser.add_argument("--output-dir", default="lowcomm-runs/hf_trainer")
    options = parser.parse_args()
    rows = token_rows(options.text)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256, n_positions=LENGTH))
    args = TrainingArguments(
        options.output_dir, max_steps=200, per_device_train_batch_size=16, learning_rate=3e-3, logging_steps=25,
        eval_strategy="steps", eval_steps=100, save_steps=100, report_to="none", disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = LowCommTrainer(model=model, args=args, train_dataset=rows[64:], eval_dataset=rows[:64],  # lowcomm
                             algo="diloco", sync_interval=25)  # lowcomm
    trainer.train()
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        print(metrics)
    trainer.save_model()


if __name__ == "__main__":
    main()
