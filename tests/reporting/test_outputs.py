"""A run's loss.png, tokenizer.json and samples.txt, from one in-process simulated run of gpt-tiny."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lowcomm.communication.peers import communicator_peers
from lowcomm.communication.simulated import run_simulated
from lowcomm.data.tokenizer import tokenizer_file
from lowcomm.launching.rundir import prepare_run_directory
from lowcomm.models import build_model
from lowcomm.reporting.outputs import held_out_prompt, samples_text
from lowcomm.training.config import load_config, resolve
from lowcomm.training.trainer import Trainer

SEQ_LEN = 16
RUN = {"algo": "ddp", "workers": 1, "backend": "sim", "steps": 4, "checkpoint_every": 2, "eval_every": 2,
       "batch_size": 2, "seq_len": SEQ_LEN, "eval_batches": 1, "lr_warmup": 1, "vocab_size": 300}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train 4 steps (checkpoints after steps 2 and 4), noting what the run directory holds after each
    checkpoint."""
    root = tmp_path_factory.mktemp("run")
    config = resolve(load_config(None, {**RUN, "out": root / "out", "cache_dir": root / "cache"}))
    prepare_run_directory(config)
    after_checkpoint = {}
    save = Trainer.save

    def save_and_look(trainer: Trainer) -> None:
        save(trainer)
        after_checkpoint[trainer.step] = {p.name: p.read_bytes() for p in config.run.out.iterdir() if p.is_file()}

    def worker(communicator) -> Trainer:
        trainer = Trainer(config, torch.device("cpu"), communicator, communicator_peers(communicator))
        trainer.train()
        return trainer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "save", save_and_look)
        (trainer,) = run_simulated(1, worker)
    return {"out": config.run.out, "trainer": trainer, "after_checkpoint": after_checkpoint}


def test_loss_png_is_written_at_each_checkpoint(run: dict) -> None:
    first, last = run["after_checkpoint"][2], run["after_checkpoint"][4]
    assert "loss.png" in first and "samples.txt" not in first
    assert last["loss.png"] != first["loss.png"]  # redrawn with the evaluation after step 4
    assert last["loss.png"] == (run["out"] / "loss.png").read_bytes()
    with Image.open(run["out"] / "loss.png") as image:
        assert image.format == "PNG" and image.size == (2 * 768, 504)
    assert not [p.name for p in run["out"].iterdir() if p.name.endswith(".tmp")]


def test_the_tokenizer_is_saved_with_the_run(run: dict) -> None:
    saved = tokenizer_file(run["out"] / "tokenizer.json")
    trained = run["trainer"].data.tokenizer
    text = "Ruby was a brave cat who lived near the lake."
    assert saved.encode([text]) == trained.encode([text]) and saved.end_of_text_id == trained.end_of_text_id


def test_samples_continue_the_held_out_prompt_reproducibly(run: dict) -> None:
    trainer = run["trainer"]
    tokenizer = trainer.data.tokenizer
    prompt = held_out_prompt(trainer.data.eval_batches, SEQ_LEN)
    assert prompt == trainer.data.eval_batches[0][0][0, :8].tolist()  # half of a 16-token window
    text = (run["out"] / "samples.txt").read_text()
    assert text == samples_text(trainer.evaluator.model, tokenizer, prompt, SEQ_LEN, seed=0)  # the same draws again
    assert text.startswith(f"Prompt (the start of the first held-out document):\n{tokenizer.backend.decode(prompt)}\n")
    assert "Greedy continuation:\n" in text and "Sampled continuation (temperature 0.8, seed 0):\n" in text
    assert samples_text(trainer.evaluator.model, tokenizer, prompt, SEQ_LEN, seed=1) != text


def test_image_runs_write_no_samples(tmp_path: Path) -> None:
    config = resolve(load_config(None, {**RUN, "model": "resnet18-cifar", "data": "synthetic-images", "steps": 1,
                                        "out": tmp_path / "out", "cache_dir": tmp_path / "cache"}))
    prepare_run_directory(config)
    run_simulated(1, lambda c: Trainer(config, torch.device("cpu"), c, communicator_peers(c)).train())
    names = {p.name for p in config.run.out.iterdir()}
    assert "loss.png" in names and not names & {"samples.txt", "tokenizer.json"}
