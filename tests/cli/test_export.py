"""``lowcomm export`` end to end: short in-process runs of gpt-neo-8m and gpt-tiny, exported, then
loaded by ``transformers`` alone in a fresh interpreter with the hub switched off."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

from lowcomm.cli import export as export_command
from lowcomm.cli import main
from lowcomm.data.tokenizer import tokenizer_file
from lowcomm.models import build_model

RUN = ["--backend", "sim", "--workers", "1", "--algo", "ddp", "--steps", "2", "--checkpoint-every", "2",
       "--eval-every", "2", "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1", "--lr-warmup", "1",
       "--vocab-size", "300"]
MODELS = {"gpt-neo-8m": ("GPTNeoForCausalLM", 300), "gpt-tiny": ("GPT2LMHeadModel", 128)}  # probe: all positions
TEXT = 'Once upon a time, there was a shy fox named Finn. "Thank you, Mia!"'
LOADER = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
results = {}
for directory in sys.argv[2:]:
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    probe = torch.load(directory + ".probe.pt", weights_only=True)
    with torch.no_grad():
        logits = model(input_ids=probe).logits
    results[directory] = {"architecture": type(model).__name__, "fast": isinstance(tokenizer, PreTrainedTokenizerFast),
                          "logits": logits, "ids": torch.tensor(tokenizer(sys.argv[1])["input_ids"])}
torch.save(results, "loaded.pt")
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train and export both models; load the exports offline in a fresh interpreter (loaded.pt)."""
    root = tmp_path_factory.mktemp("export")
    for model, (_, positions) in MODELS.items():
        run_dir, to = root / model, root / f"{model}-hf"
        assert main(["train", "--model", model, *RUN, "--cache-dir", str(root / "cache"), "--out", str(run_dir)]) == 0
        assert main(["export", str(run_dir), "--to", str(to)]) == 0
        torch.save(torch.randint(0, 300, (1, positions), generator=torch.Generator().manual_seed(0)), f"{to}.probe.pt")
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    loader = subprocess.run([sys.executable, "-c", LOADER, TEXT, *(str(root / f"{m}-hf") for m in MODELS)],
                            cwd=root, env=offline, capture_output=True, text=True, timeout=300)
    assert loader.returncode == 0, loader.stderr[-3000:]
    return root


@pytest.mark.parametrize("model", MODELS)
def test_transformers_loads_the_export_offline_with_lowcomms_logits_and_tokens(model: str, root: Path) -> None:
    loaded = torch.load(root / "loaded.pt", weights_only=True)[str(root / f"{model}-hf")]
    assert loaded["architecture"] == MODELS[model][0] and loaded["fast"]
    tokenizer = tokenizer_file(root / model / "tokenizer.json")
    ours = build_model(model, vocab_size=tokenizer.vocab_size).eval()
    ours.load_state_dict(load_file(root / model / "checkpoints" / "step_00000002" / "model.safetensors"))
    with torch.no_grad():
        expected = ours(torch.load(root / f"{model}-hf.probe.pt", weights_only=True))
    torch.testing.assert_close(loaded["logits"], expected, rtol=0.0, atol=1e-5)
    assert loaded["ids"].tolist() == tokenizer.encode([TEXT])[0]


def test_the_directory_holds_the_config_weights_and_tokenizer(root: Path) -> None:
    to = root / "gpt-neo-8m-hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in to.iterdir()}
    config = json.loads((to / "config.json").read_text())
    assert config["architectures"] == ["GPTNeoForCausalLM"] and config["max_position_embeddings"] == 300
    assert config["attention_types"] == [[["global", "local"], 4]] and config["window_size"] == 256
    eot = tokenizer_file(root / "gpt-neo-8m" / "tokenizer.json").end_of_text_id
    assert config["eos_token_id"] == eot
    assert json.loads((to / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging directory left behind


def copy_run(root: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(root / "gpt-tiny", run)
    return run


BAD = {
    "no run dir": (lambda root, tmp: tmp / "missing", "is not a directory"),
    "no config": (lambda root, tmp: tmp, "holds no lowcomm run (config.yaml is missing)"),
    "image model": (lambda root, tmp: rewrite_model(copy_run(root, tmp), "resnet18-cifar"), "not a language model"),
    "hf: model gone": (lambda root, tmp: rewrite_model(copy_run(root, tmp), f"hf:{tmp / 'gone'}"),
                       "names no model lowcomm can build (hf:"),
    "no complete checkpoint": (
        lambda root, tmp: remove(copy_run(root, tmp), "checkpoints/step_00000002/manifest.json"),
        "has no complete checkpoint"),
    "no tokenizer": (lambda root, tmp: remove(copy_run(root, tmp), "tokenizer.json"), "has no tokenizer.json"),
}


def rewrite_model(run: Path, model: str) -> Path:
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("name: gpt-tiny", f"name: {model}"))
    return run


def remove(run: Path, name: str) -> Path:
    (run / name).unlink()
    return run


def refused(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith("lowcomm export: error: ") and error.endswith("\n"), error
    assert message in error.splitlines()[-1] and error.count("error") == 1


@pytest.mark.parametrize("case", BAD)
def test_bad_run_dirs_are_refused_with_one_line(case: str, root: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    make, message = BAD[case]
    refused([str(make(root, tmp_path)), "--to", str(tmp_path / "hf")], message, capsys)
    assert not (tmp_path / "hf").exists()


def test_an_existing_destination_is_refused(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    refused([str(root / "gpt-tiny"), "--to", str(root / "gpt-tiny-hf")], "is not an empty directory", capsys)
    (tmp_path / "file").write_text("x")
    refused([str(root / "gpt-tiny"), "--to", str(tmp_path / "file")], "is not an empty directory", capsys)
    (tmp_path / "empty").mkdir()
    assert main(["export", str(root / "gpt-tiny"), "--to", str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "config.json").is_file()


def test_a_conversion_that_changes_the_logits_writes_nothing(root: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    convert = export_command.to_hf_model

    def off_by_a_percent(*args):
        hf_model = convert(*args)
        with torch.no_grad():
            hf_model.transformer.ln_f.weight.mul_(1.01)
        return hf_model

    monkeypatch.setattr(export_command, "to_hf_model", off_by_a_percent)
    assert main(["export", str(root / "gpt-tiny"), "--to", str(tmp_path / "hf")]) == 1
    assert "the converted model's logits differ from lowcomm's" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == []


WEIGHTS_CASES = {
    "random bytes": (lambda: os.urandom(4096), "model.safetensors is not a safetensors file (SafetensorError: "),
    "other shapes": (lambda: save({"wte.weight": torch.zeros(3, 2)}),
                     "model.safetensors does not hold gpt-tiny's weights: "),
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", "--model", "gpt-tiny", *RUN, "--cache-dir", str(run_dir.parent / "cache"),
                 "--out", str(run_dir)]) == 0
    return run_dir


@pytest.mark.parametrize("case", WEIGHTS_CASES)
def test_weights_that_are_not_the_models_are_refused_with_one_line(case: str, tiny_run: Path, tmp_path: Path,
                                                                   run_cli) -> None:
    """``model.safetensors`` replaced, and its manifest entry with it (so the checkpoint verifies)."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    make, message = WEIGHTS_CASES[case]
    checkpoint = run_dir / "checkpoints" / "step_00000002"
    content = make()
    (checkpoint / "model.safetensors").write_bytes(content)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = run_cli(["export", str(run_dir), "--to", str(tmp_path / "hf")])
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith(f"lowcomm export: error: RUN_DIR: {checkpoint / message}")
    assert not (tmp_path / "hf").exists()
