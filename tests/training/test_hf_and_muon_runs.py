"""``lowcomm train --model hf:DIR`` and ``--optimizer muon`` end to end: real DiLoCo runs of a tiny
GPT-2 built from a config.json the test writes (no download) and of gpt-tiny with Muon, each resumed
and compared with its uninterrupted run; the GPT-2 run exported and loaded offline; bad input refused."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lowcomm.cli import main
from lowcomm.data.tokenizer import tokenizer_file, train_byte_level_bpe
from lowcomm.launching.rundir import read_run_config
from lowcomm.models import build_model
from tests.train_runs import PERIODIC, SHORT, lowcomm_train, manifest, records, without_timing
from tests.training.test_bad_input import assert_rejected

GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 512,
        "bos_token_id": None, "eos_token_id": None}  # GPT-2's dropout of 0.1 stays: the workers' generators resume too
RUN = ["--algo", "diloco", *SHORT, *PERIODIC]
LOADER = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
with torch.no_grad():
    logits = model(input_ids=torch.load(sys.argv[2], weights_only=True)).logits
ids = AutoTokenizer.from_pretrained(sys.argv[1])(sys.argv[4])["input_ids"]
torch.save({"architecture": type(model).__name__, "logits": logits, "ids": ids}, sys.argv[3])
"""
TEXT = "Once upon a time, there was a shy fox named Finn."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2-config")
    (directory / "config.json").write_text(json.dumps(GPT2))
    return directory


@pytest.fixture(scope="module")
def case_args(model_dir):
    """The flags of each case. Muon at Keller Jordan's 0.02: at torch's default 0.001 gpt-tiny's hidden
    layers hardly move in 32 steps, and DiLoCo's outer steps then raise the eval loss (docs/benchmarks.md)."""
    return {"hf": ["--model", f"hf:{model_dir}", "--vocab-size", "512"], "muon": ["--optimizer", "muon", "--muon-lr", "0.02"]}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache_dir, case_args):
    """``straight(case)``: the output directory of the case's uninterrupted run (run once)."""
    finished = {}

    def run(case):
        if case not in finished:
            out = tmp_path_factory.mktemp(case) / "out"
            lowcomm_train(*RUN, *case_args[case], "--cache-dir", cache_dir, "--out", str(out))
            finished[case] = out
        return finished[case]

    return run


@pytest.mark.parametrize("case", ["hf", "muon"])
def test_it_trains_and_its_config_records_the_choice(case, straight, model_dir):
    out = straight(case)
    evals = [r["eval_loss"] for r in records(out, "eval")]
    assert len(evals) == 4 and evals[-1] < evals[0] - 0.3, evals
    config = read_run_config(out)
    if case == "hf":
        assert (config["model"], config["optimizer"]) == (f"hf:{model_dir}", "adamw")
        assert json.loads((out / "summary.json").read_text())["parameters"] == 43_904  # GPT-2's, its vocabulary 512
    else:
        assert (config["model"], config["optimizer"], config["muon_lr"]) == ("gpt-tiny", "muon", 0.02)


@pytest.mark.parametrize("case", ["hf", "muon"])
def test_a_resumed_run_replays_the_uninterrupted_one_exactly(case, straight, case_args, cache_dir, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(straight(case), resumed)
    for name in ("checkpoints/step_00000024", "checkpoints/step_00000032", "summary.json", "samples.txt"):
        (shutil.rmtree if name.startswith("checkpoints") else os.unlink)(resumed / name)
    lowcomm_train(*RUN, *case_args[case], "--cache-dir", cache_dir, "--out", str(resumed), "--resume")
    assert {"step": 16, "event": "resume", "checkpoint": "step_00000016"} in records(resumed, "event")
    assert without_timing(resumed) == without_timing(straight(case))
    global_model = manifest(resumed, 32)["files"]["model.safetensors"]
    assert global_model == manifest(straight(case), 32)["files"]["model.safetensors"]


def test_the_export_loads_offline_with_the_final_global_models_logits(straight, model_dir, tmp_path):
    out, to = straight("hf"), tmp_path / "exported"
    assert main(["export", str(out), "--to", str(to)]) == 0
    probe = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    torch.save(probe, tmp_path / "probe.pt")
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-c", LOADER, str(to), str(tmp_path / "probe.pt"), str(tmp_path / "out.pt"), TEXT]
    loader = subprocess.run(command, env=offline, capture_output=True, text=True, timeout=300)
    assert loader.returncode == 0, loader.stderr[-3000:]
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    final = build_model(f"hf:{model_dir}", vocab_size=512).eval()
    final.load_state_dict(load_file(out / "checkpoints" / "step_00000032" / "model.safetensors"))
    with torch.no_grad():
        assert loaded["architecture"] == "GPT2LMHeadModel" and torch.equal(loaded["logits"], final(probe))
    config = json.loads((to / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["vocab_size"]) == (2, 32, 512)
    assert loaded["ids"] == tokenizer_file(out / "tokenizer.json").encode([TEXT])[0]


@pytest.fixture
def bad_models(tmp_path):
    """Directories and files that are no usable ``hf:`` model, and a tokenizer of over 300 tokens."""
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "config.json").write_text(json.dumps({**GPT2, "vocab_size": 300}))
    train_byte_level_bpe([" ".join(f"word{i}" for i in range(3000))], 400).save(str(tmp_path / "tokenizer.json"))
    return tmp_path


BAD = {
    "missing directory": (["--model", "hf:{d}/absent"], "--model: hf:{d}/absent: no such directory or config file"),
    "no causal LM": (["--model", "hf:{d}/vit"], "--model: hf:{d}/vit: a 'vit' config is not a causal language model's"),
    "BPE beyond the vocabulary": (["--model", "hf:{d}/small"], "--vocab-size: the trained BPE's up to 2048 tokens "
                                  "exceed hf:{d}/small's vocab_size 300; pass --vocab-size 300 or less"),
    "tokenizer beyond the vocabulary": (["--model", "hf:{d}/small", "--tokenizer", "{d}/tokenizer.json"],
                                        "--tokenizer: its 400 tokens exceed hf:{d}/small's vocab_size 300"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_hf_models_are_refused_with_one_line(case, bad_models, run_cli):
    argv, message = BAD[case]
    argv = [word.format(d=bad_models) for word in argv]
    assert_rejected([*argv, "--out", str(bad_models / "out")], message.format(d=bad_models), bad_models, run_cli)


def test_a_real_process_refuses_a_config_that_is_no_causal_lm_with_one_line(bad_models):
    result = subprocess.run([sys.executable, "-m", "lowcomm", "train", "--model", f"hf:{bad_models}/vit", "--out",
                             str(bad_models / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert "is not a causal language model's" in result.stderr and not (bad_models / "out").exists()
