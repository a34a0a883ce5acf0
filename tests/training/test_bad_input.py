"""Bad input to ``lowcomm train``: exit code 2, one line on stderr, no traceback, ``--out`` untouched."""

import importlib.util
import subprocess
import sys

import pytest
import torch
import yaml

from lowcomm.training.config import FLAG_PATHS, SECTIONS, flag

FLAG_CASES = {
    "unknown algorithm": (["--algo", "adam"], "--algo: unknown algorithm 'adam'"),
    "empty algorithm": (["--algo", ""], "--algo: unknown algorithm ''"),
    "unknown model": (["--model", "gpt-5"], "--model: unknown model 'gpt-5'"),
    "sim passes without sim": (["--sim-passes", "batched"], "--sim-passes: only --backend sim takes it"),
    "unknown sim passes": (["--backend", "sim", "--sim-passes", "vmap"], "--sim-passes: Input should be"),
    "unknown implementation": (["--model-impl", "tf"], "--model-impl: Input should be 'lowcomm' or 'hf'"),
    "hf for gpt-tiny": (["--model-impl", "hf"], "--model-impl: hf exists only for"),
    "zero workers": (["--workers", "0"], "--workers: Input should be greater than or equal to 1"),
    "negative workers": (["--workers", "-1"], "--workers: Input should be greater than or equal to 1"),
    "worker count in words": (["--workers", "two"], "--workers: Input should be a valid integer"),
    "fractional workers": (["--workers", "1.5"], "--workers: Input should be a valid integer"),
    "absurd workers": (["--workers", "100000"], "--workers: Input should be less than or equal to 1024"),
    "zero steps": (["--steps", "0"], "--steps: Input should be greater than or equal to 1"),
    "steps in words": (["--steps", "abc"], "--steps: Input should be a valid integer"),
    "absurd steps": (["--steps", "1e99"], "--steps: Input should be a valid integer"),
    "zero batch": (["--batch-size", "0"], "--batch-size: Input should be greater than or equal to 1"),
    "absurd batch": (["--batch-size", "99999999"], "--batch-size: Input should be less than or equal to 65536"),
    "batch beyond memory": (["--batch-size", "65536", "--seq-len", "128", "--workers", "1024", "--backend", "sim"],
                            "--batch-size: 65536 sequences of 128 tokens need 8.62 GB per worker for their logits "
                            "alone, 8.83e+03 GB for the 1024 worker(s) sharing this machine's"),
    "zero accumulation": (["--grad-accum", "0"], "--grad-accum: Input should be greater than or equal to 1"),
    "zero sequence": (["--seq-len", "0"], "--seq-len: Input should be greater than or equal to 1"),
    "sequence beyond positions": (["--seq-len", "129"], "--seq-len: 129 exceeds gpt-tiny's 128 positions"),
    "absurd sequence": (["--seq-len", "100000000"], "--seq-len: Input should be less than or equal to 1048576"),
    "zero lr": (["--lr", "0"], "--lr: Input should be greater than 0"),
    "negative lr": (["--lr", "-1"], "--lr: Input should be greater than 0"),
    "nan lr": (["--lr", "nan"], "--lr: Input should be a finite number"),
    "infinite lr": (["--lr", "inf"], "--lr: Input should be a finite number"),
    "lr in words": (["--lr", "fast"], "--lr: Input should be a valid number"),
    "p of one": (["--pseudo-sync-prob", "1"], "--pseudo-sync-prob: Input should be less than 1"),
    "negative p": (["--pseudo-sync-prob", "-0.1"], "--pseudo-sync-prob: Input should be greater than or equal to 0"),
    "p of two": (["--pseudo-sync-prob", "2"], "--pseudo-sync-prob: Input should be less than 1"),
    "momentum of one": (["--outer-momentum", "1"], "--outer-momentum: Input should be less than 1"),
    "negative momentum": (["--outer-momentum", "-0.5"], "--outer-momentum: Input should be greater than or equal to 0"),
    "zero eta": (["--eta", "0"], "--eta: Input should be greater than 0"),
    "overshooting pull": (["--lr", "0.5"], "--eta: lr * eta / pseudo_sync_prob = 2.5 >= 1 would overshoot z"),
    "zero outer lr": (["--outer-lr", "0"], "--outer-lr: Input should be greater than 0"),
    "zero sync interval": (["--sync-interval", "0"], "--sync-interval: Input should be greater than or equal to 1"),
    "negative warm-up": (["--warmup-steps", "-1"], "--warmup-steps: Input should be greater than or equal to 0"),
    "zero outer repeats": (["--outer-repeats", "0"], "--outer-repeats: Input should be greater than or equal to 1"),
    "outer repeats in words": (["--outer-repeats", "many"], "--outer-repeats: Input should be a valid integer"),
    "zero eval interval": (["--eval-every", "0"], "--eval-every: Input should be greater than or equal to 1"),
    "zero eval batches": (["--eval-batches", "0"], "--eval-batches: Input should be greater than or equal to 1"),
    "zero stop loss": (["--stop-at-loss", "0"], "--stop-at-loss: Input should be greater than 0"),
    "nan stop time": (["--stop-after-s", "nan"], "--stop-after-s: Input should be a finite number"),
    "zero checkpoint interval": (["--checkpoint-every", "0"], "--checkpoint-every: Input should be greater than or"),
    "keep zero checkpoints": (["--keep-checkpoints", "0"], "--keep-checkpoints: Input should be greater than or"),
    "negative restarts": (["--max-restarts", "-1"], "--max-restarts: Input should be greater than or equal to 0"),
    "zero hang timeout": (["--hang-timeout", "0"], "--hang-timeout: Input should be greater than 0"),
    "negative seed": (["--seed", "-1"], "--seed: Input should be greater than or equal to 0"),
    "tiny vocabulary": (["--vocab-size", "10"], "--vocab-size: Input should be greater than or equal to 257"),
    "min lr above peak": (["--min-lr-ratio", "2"], "--min-lr-ratio: Input should be less than or equal to 1"),
    "negative weight decay": (["--weight-decay", "-1"], "--weight-decay: Input should be greater than or equal to 0"),
    "zero clipping": (["--max-grad-norm", "0"], "--max-grad-norm: Input should be greater than 0"),
    "top-k of nothing": (["--compress", "topk:0"], "--compress: must be none, bf16, int8, int4 or topk:FRACTION"),
    "top-k above one": (["--compress", "topk:2"], "--compress: must be none, bf16, int8, int4 or topk:FRACTION"),
    "unknown device": (["--device", "tpu"], "--device: Input should be 'auto', 'cpu' or 'cuda'"),
    "noloco alone": (["--algo", "noloco", "--workers", "1"], "--workers: noloco needs at least 2 workers"),
    "ddp with an interval": (["--algo", "ddp", "--sync-interval", "4"], "--sync-interval: ddp does not take it"),
    "diagnostics for local sgd": (["--algo", "localsgd", "--diagnostics"], "--diagnostics: localsgd does not take it"),
    "unknown local steps": (["--algo", "diloco", "--local-steps", "sometimes"],
                            "--local-steps: Input should be 'fixed' or 'adaptive' (got 'sometimes')"),
    "ddp with adaptive steps": (["--algo", "ddp", "--local-steps", "adaptive"], "--local-steps: ddp does not take it"),
    "noloco with adaptive steps": (["--algo", "noloco", "--local-steps", "adaptive"],
                                   "--local-steps: noloco does not take it"),
    "adaptive steps live": (["--algo", "diloco", "--local-steps", "adaptive", "--fault-tolerance", "live"],
                            "--local-steps: adaptive runs without --fault-tolerance live"),
    "adaptive steps in batched passes": (["--algo", "localsgd", "--local-steps", "adaptive", "--backend", "sim"],
                                         "--local-steps: adaptive with --backend sim needs --sim-passes threads"),
    "unknown preset": (["--preset", "nope"], "--preset: unknown preset 'nope'; choose one of palsgd-paper-gpt-neo-8m"),
    "unknown schedule": (["--lr-schedule", "linear"], "--lr-schedule: Input should be 'cosine' or 'constant'"),
    "unknown synthetic data": (["--data", "synthetic-poems"], "--data: unknown synthetic dataset 'synthetic-poems'"),
    "hf without a name": (["--data", "hf:"], "--data: 'hf:' names no dataset"),
    "image data for a language model": (["--data", "synthetic-images"], "--data: synthetic-images holds image data"),
    "groups not making the workers": (["--groups", "2", "--group-size", "2", "--workers", "3"],
                                      "--groups: 2 groups of --group-size 2 are 4 processes, not the 3 workers"),
    "groups not dividing the workers": (["--groups", "3", "--workers", "4"],
                                        "--groups: 3 does not divide the 4 workers into equal groups"),
    "group size not dividing the workers": (["--group-size", "3", "--workers", "4"],
                                            "--group-size: 3 does not divide the 4 workers into equal groups"),
    "zero groups": (["--groups", "0"], "--groups: Input should be greater than or equal to 1"),
    "zero group size": (["--group-size", "0"], "--group-size: Input should be greater than or equal to 1"),
    "inner without groups": (["--inner", "fsdp"], "--inner: only worker groups have an inside"),
    "unknown inner": (["--groups", "2", "--inner", "zero"], "--inner: Input should be 'ddp' or 'fsdp'"),
    "fsdp for a model with batch norm": (
        ["--groups", "1", "--group-size", "2", "--inner", "fsdp", "--model", "resnet18-cifar", "--data",
         "synthetic-images"],
        "--inner: FSDP cannot shard resnet18-cifar: its BatchNorm running statistics",
    ),
    "groups in the simulation": (["--groups", "2", "--group-size", "2", "--backend", "sim"],
                                 "--backend: sim simulates single workers, not worker groups"),
    "noloco in one group": (["--algo", "noloco", "--groups", "1", "--group-size", "2"],
                            "--groups: noloco needs at least 2 groups"),
    "unknown flag": (["--learning-rate", "1"], "unrecognized arguments: --learning-rate 1"),
    "flag without its value": (["--steps"], "argument --steps: expected one argument"),
    "negative lr warm-up": (["--lr-warmup", "-1"], "--lr-warmup: Input should be greater than or equal to 0"),
    "outer state on a GPU": (["--outer-device", "gpu"], "--outer-device: Input should be 'cpu'"),
    "negative overlap": (["--algo", "diloco", "--overlap-steps", "-1"], "--overlap-steps: Input should be greater"),
    "merge beyond one": (["--algo", "diloco", "--merge-alpha", "2"], "--merge-alpha: Input should be less than or"),
    "merge without overlap": (["--algo", "diloco", "--merge-alpha", "0.3"], "--merge-alpha: only an overlapped outer"),
    "missing tokenizer file": (["--tokenizer", "/nonexistent/tok.json"], "--tokenizer: no such file"),
    "unknown compression": (["--algo", "diloco", "--compress", "int3"], "--compress: must be none, bf16, int8, int4"),
    "zero fragments": (["--algo", "streamingdiloco", "--num-fragments", "0"], "--num-fragments: Input should be"),
    "unknown fragment pattern": (["--algo", "streamingdiloco", "--fragment-pattern", "random"],
                                 "--fragment-pattern: Input should be 'sequential' or 'strided'"),
    "unknown optimizer": (["--optimizer", "adam"], "--optimizer: Input should be 'adamw', 'muon' or 'sgd'"),
    "muon lr without muon": (["--muon-lr", "0.02"], "--muon-lr: only --optimizer muon takes it"),
    "zero muon lr": (["--optimizer", "muon", "--muon-lr", "0"], "--muon-lr: Input should be greater than 0"),
    "muon for an image model": (["--optimizer", "muon", "--model", "resnet18-cifar", "--data", "synthetic-images"],
                                "--optimizer: muon is for language models; resnet18-cifar's hidden layers are"),
    "muon on fsdp shards": (["--optimizer", "muon", "--groups", "1", "--group-size", "2", "--inner", "fsdp"],
                            "--optimizer: muon orthogonalises whole matrices, not FSDP shards; use --inner ddp"),
    "unknown precision": (["--precision", "fp16"], "--precision: Input should be 'fp32' or 'bf16'"),
    "unknown network": (["--network", "real"], "--network: Input should be 'none' or 'model'"),
    "rate in words": (["--bandwidth", "fast"], "--bandwidth: rate 'fast' is not a tc-style rate"),
    "negative latency": (["--latency", "-1"], "--latency: Input should be greater than or equal to 0"),
    "unknown fault tolerance": (["--fault-tolerance", "pray"], "--fault-tolerance: Input should be 'restart' or"),
    "min groups without live": (["--min-groups", "2"], "--min-groups: only --fault-tolerance live takes it"),
    "lighthouse without live": (["--lighthouse", "h:1"], "--lighthouse: only --fault-tolerance live takes it"),
    "live group without live": (["--live-group", "0"], "--live-group: only --fault-tolerance live takes it"),
    "speeds of the wrong length": (["--workers", "4", "--worker-speeds", "1,1,0.5"],
                                   "--worker-speeds: 3 speeds for 4 workers; give one per worker"),
    "speeds per worker with groups": (["--groups", "2", "--group-size", "2", "--worker-speeds", "1,1,1,0.5"],
                                      "--worker-speeds: 4 speeds for 2 groups; give one per group"),
    "zero speed": (["--worker-speeds", "1,0"], "--worker-speeds: each speed must be in (0, 1] (1: the natural "
                   "speed, the fastest), got 0"),
    "negative speed": (["--worker-speeds", "1,-0.5"], "--worker-speeds: each speed must be in (0, 1]"),
    "speed above one": (["--worker-speeds", "1,2"], "--worker-speeds: each speed must be in (0, 1]"),
    "speed in words": (["--worker-speeds", "1,half"], "--worker-speeds: 'half' is not a number"),
    "empty speed": (["--worker-speeds", "1,"], "--worker-speeds: '' is not a number"),
    "speeds in the simulation": (["--backend", "sim", "--worker-speeds", "1,0.5"],
                                 "--worker-speeds: only a --backend dist run takes it"),
    "zero cpu share": (["--cpu-share", "0"], "--cpu-share: expected auto or a number of cores above 0, got '0'"),
    "cpu share in words": (["--cpu-share", "half"], "--cpu-share: expected auto or a number of cores above 0"),
    "cpu share beyond the cores": (["--cpu-share", "1000"], "--cpu-share: 2 workers x 1000 cores exceed the"),
}
LIVE = ["--fault-tolerance", "live", "--algo", "diloco"]
if importlib.util.find_spec("torchft") is not None:
    FLAG_CASES |= {
        "live without groups": (LIVE, "--fault-tolerance: live needs --groups K"),
        "live with ddp": ([*LIVE, "--groups", "2", "--algo", "ddp"],
                          "live supports localsgd, postlocalsgd, diloco, palsgd, noloco, streamingdiloco, not ddp"),
        "live overlapped": ([*LIVE, "--groups", "2", "--overlap-steps", "1"], "--overlap-steps: live fault"),
        "live early stop": ([*LIVE, "--groups", "2", "--stop-at-loss", "3"], "--stop-at-loss: a live run's groups"),
        "min groups above groups": ([*LIVE, "--groups", "2", "--min-groups", "3"], "--min-groups: 3 exceeds"),
        "live group alone": ([*LIVE, "--groups", "2", "--live-group", "0"], "--lighthouse: give --lighthouse"),
        "live group out of range": ([*LIVE, "--groups", "2", "--live-group", "2", "--lighthouse", "h:1"],
                                    "--live-group: 2 is not one of the 2 groups"),
        "lighthouse without port": ([*LIVE, "--groups", "2", "--live-group", "0", "--lighthouse", "h"],
                                    "--lighthouse: expected HOST:PORT"),
        "negative min groups": ([*LIVE, "--groups", "2", "--min-groups", "0"], "--min-groups: Input should be"),
        "limited live groups on several machines": (
            [*LIVE, "--groups", "2", "--live-group", "0", "--lighthouse", "h:1", "--bandwidth", "1gbit"],
            "--bandwidth: live groups behind limited links run on one machine, not with --lighthouse"),
    }
if not torch.cuda.is_available():
    FLAG_CASES["cuda without a GPU"] = (["--device", "cuda"], "--device: cuda requested but no GPU is available")

CHECKED_ELSEWHERE = {
    "data": "DATA_CASES and test_a_folder_without_class_folders_is_not_image_data",
    "out": "test_an_out_holding_another_run_is_left_alone",
}

DATA_CASES = {
    "missing file": ("absent.txt", None, "no such file"),
    "empty file": ("empty.txt", b"", "is empty"),
    "blank file": ("blank.txt", b" \n\n", "is empty"),
    "binary file": ("binary.txt", bytes(range(256)) * 4, "is not UTF-8 text (binary file?)"),
    "wrong suffix": ("corpus.bin", b"hello", "is not a .txt or .jsonl file"),
    "glob matching nothing": ("*.jsonl", None, "no file matches"),
    "invalid JSON line": ("corpus.jsonl", b'{"text": "a"}\n{"text": \n', "corpus.jsonl:2 is not valid JSON"),
    "JSON line without text": ("corpus.jsonl", b'{"body": "a"}\n', "corpus.jsonl:1 has no string 'text' field"),
    "invalid UTF-8 past 64 KiB": ("late.txt", b"word\n" * 20000 + b"\xff\n",
                                  "late.txt is not UTF-8 text (binary file?): invalid UTF-8 at byte 100000"),
    "NUL byte past 64 KiB": ("late.txt", b"word\n" * 20000 + b"\0\n",
                             "late.txt is not UTF-8 text (binary file?): a NUL byte at byte 100000"),
    "invalid JSON line past 64 KiB": ("corpus.jsonl", b'{"text": "a"}\n' * 5000 + b'{"text": \n',
                                      "corpus.jsonl:5001 is not valid JSON"),
    "one-line corpus": ("one.txt", b"Once upon a time there was a fox.\n",
                        "one.txt holds 1 document; the held-out split needs at least 20 (about 4% are held out, "
                        "the first being document 20); use more data"),
    "too few tokens": ("short.txt", b"a\n" * 30, "short.txt holds at most 90 tokens; --seq-len 64 with 2 workers "
                       "needs at least 194 (a window of 65 tokens for each worker and one held out)"),
}

YAML_CASES = {
    "unknown key": ({"learning_rate": 0.1}, "--config: unknown key 'learning_rate'"),
    "count as text": ({"steps": "ten"}, "--steps: Input should be a valid integer"),
    "diagnostics as text": ({"algo": "diloco", "diagnostics": "maybe"}, "--diagnostics: Input should be a valid boolean"),
    "boolean count": ({"workers": True}, "--workers: Input should be a number, not a boolean"),
    "list for a count": ({"steps": [1, 2]}, "--steps: Input should be a valid integer"),
    "number for a name": ({"algo": 5}, "--algo: Input should be a valid string"),
    "probability out of range": ({"pseudo_sync_prob": 1.5}, "--pseudo-sync-prob: Input should be less than 1"),
    "nan": ({"lr": float("nan")}, "--lr: Input should be a finite number"),
    "mapping for a path": ({"cache_dir": {"a": 1}}, "--cache-dir: Input is not a valid path"),
    "groups not making the workers": ({"groups": 2, "group_size": 2, "workers": 3}, "--groups: 2 groups of"),
    "boolean group size": ({"group-size": True}, "--group-size: Input should be a number, not a boolean"),
    "boolean speed": ({"conditions": {"worker_speeds": [1, True]}}, "--worker-speeds: True is not a number"),
}

RAW_YAML_CASES = {
    "not a mapping": (b"- a\n- b\n", "must hold a mapping of option names to values"),
    "invalid YAML": (b"steps: [1,\n", "is not valid YAML"),
    "binary file": (bytes(range(256)), "is not valid YAML"),
}


def snapshot(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_rejected(argv, message, tmp_path, run_cli):
    before = snapshot(tmp_path)
    code, out, err = run_cli(["train", *argv])
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(("lowcomm train: error: ", "lowcomm: error: "))
    assert message in err
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", FLAG_CASES)
def test_bad_flags(case, tmp_path, run_cli):
    argv, message = FLAG_CASES[case]
    assert_rejected([*argv, "--out", str(tmp_path / "out")], message, tmp_path, run_cli)


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data(case, tmp_path, run_cli):
    name, content, message = DATA_CASES[case]
    if content is not None:
        (tmp_path / name).write_bytes(content)
    assert_rejected(["--data", str(tmp_path / name), "--out", str(tmp_path / "out")], message, tmp_path, run_cli)


def test_a_folder_without_class_folders_is_not_image_data(tmp_path, run_cli):
    (tmp_path / "pictures" / "cats").mkdir(parents=True)
    argv = ["--data", str(tmp_path / "pictures"), "--model", "resnet18-cifar", "--out", str(tmp_path / "out")]
    assert_rejected(argv, "needs at least two class subfolders", tmp_path, run_cli)


@pytest.mark.parametrize("case", YAML_CASES)
def test_bad_yaml_values(case, tmp_path, run_cli):
    values, message = YAML_CASES[case]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(values))
    argv = ["--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out")]
    assert_rejected(argv, message, tmp_path, run_cli)


@pytest.mark.parametrize("case", RAW_YAML_CASES)
def test_bad_yaml_files(case, tmp_path, run_cli):
    content, message = RAW_YAML_CASES[case]
    (tmp_path / "run.yaml").write_bytes(content)
    argv = ["--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out")]
    assert_rejected(argv, message, tmp_path, run_cli)


def test_a_missing_config_file(tmp_path, run_cli):
    argv = ["--config", str(tmp_path / "absent.yaml"), "--out", str(tmp_path / "out")]
    assert_rejected(argv, "--config: cannot read", tmp_path, run_cli)


def test_an_out_holding_another_run_is_left_alone(tmp_path, run_cli):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"algo": "ddp", "steps": 5, "device": "cpu"}))
    (out / ".lowcomm").write_text('{"kind": "run"}')  # lowcomm's marker: a run of its own
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    assert_rejected(["--out", str(out)], "already holds a run; pass --resume", tmp_path, run_cli)
    # --resume takes every option not given from the run's config.yaml: only a flag can differ
    assert_rejected(["--out", str(out), "--resume", "--algo", "diloco"], "holds a different run (algo: 'ddp' there",
                    tmp_path, run_cli)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    assert_rejected(["--out", str(tmp_path / "notes"), "--overwrite"], "holds no lowcomm run", tmp_path, run_cli)
    (tmp_path / "file").write_text("x")
    assert_rejected(["--out", str(tmp_path / "file")], "is not a directory", tmp_path, run_cli)


TORCHRUN_CASES = {
    "groups not making torchrun's world": (["--groups", "2", "--group-size", "3"],
                                           "--groups: 2 groups of --group-size 3 are 6 processes, not the 4 workers "
                                           "torchrun started"),
    "nodes not splitting into equal groups": (["--groups", "3"],
                                              "--groups: 3 does not divide the 4 workers torchrun started"),
}


@pytest.mark.parametrize("case", TORCHRUN_CASES)
def test_bad_groups_under_torchrun(case, tmp_path, run_cli, monkeypatch):
    """As rank 1 of a ``torchrun --nnodes 2 --nproc-per-node 2`` job (which does not report)."""
    for name, value in {"TORCHELASTIC_RUN_ID": "test", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    argv, message = TORCHRUN_CASES[case]
    assert_rejected([*argv, "--out", str(tmp_path / "out")], message, tmp_path, run_cli)


def test_every_option_that_takes_a_value_has_a_malformed_case():
    named = {word for argv, _ in FLAG_CASES.values() for word in argv if word.startswith("--")}
    named |= {flag(key) for values, _ in YAML_CASES.values() for key in values}
    options = [name for name, (section, field) in FLAG_PATHS.items()
               if section == "algorithm" or SECTIONS[section].model_fields[field].annotation is not bool]
    assert [name for name in options if flag(name) not in named and name not in CHECKED_ELSEWHERE] == []


@pytest.mark.parametrize("command", [[sys.executable, "-m", "lowcomm"], ["lowcomm"]])
def test_a_real_process_exits_2_with_one_line(command, tmp_path):
    result = subprocess.run(
        [*command, "train", "--algo", "adam", "--out", str(tmp_path / "out")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("lowcomm train: error: --algo: unknown algorithm 'adam'")
    assert result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
