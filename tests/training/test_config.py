import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from lowcomm import ALGORITHMS
from lowcomm.models import MODEL_NAMES
from lowcomm.training.config import FLAG_PATHS, LAUNCH_FIELDS, SECTIONS, TrainConfig, load_config, resolve
from lowcomm.training.cpu_share import quota_problem, usable_cores

COMPRESS_RULE = "--compress: must be none, bf16, int8, int4 or topk:FRACTION with 0 < FRACTION <= 1"
ALGORITHM_FIELDS = ("sync_interval", "warmup_steps", "pseudo_sync_prob", "eta", "outer_lr", "outer_momentum")


def loaded(*args, **kwargs) -> TrainConfig:
    """The config as ``lowcomm train`` runs it: validated, then resolved for this machine."""
    return resolve(load_config(*args, **kwargs))


def algorithm_fields(config: TrainConfig) -> tuple:
    return tuple(getattr(config.algorithm, name, None) for name in ALGORITHM_FIELDS)


def test_the_defaults_are_the_embedded_quick_start():
    config = loaded()
    assert (config.algo, config.model.name, config.data.source, config.layout.workers) == (
        "palsgd", "gpt-tiny", "synthetic-stories", 2)
    assert config.run.device == ("cuda" if torch.cuda.is_available() else "cpu")  # "auto": a GPU if there is one
    assert config.run.out.parent == Path("lowcomm-runs")
    # PALSGD's paper values, but DiLoCo's outer lr: z must keep up in a 384-step run.
    assert algorithm_fields(config) == (32, 32, 0.2, 1.0, 0.7, 0.9)
    assert load_config(overrides={"outer_lr": "0.5"}).algorithm.outer_lr == 0.5


@pytest.mark.parametrize(
    "algo, expected",
    [
        # PALSGD (Naganuma et al. 2025): H=32, S=32, p=0.2, eta=1, outer SGD lr 0.1, Nesterov 0.9.
        ("palsgd", (32, 32, 0.2, 1.0, 0.1, 0.9)),
        # DiLoCo (Douillard et al. 2023): outer SGD lr 0.7, Nesterov 0.9.
        ("diloco", (32, 0, None, None, 0.7, 0.9)),
        # NoLoCo (Kolehmainen et al. 2025): H=50, alpha 0.7, mu 0.5.
        ("noloco", (50, 0, None, None, 0.7, 0.5)),
        ("localsgd", (32, 0, None, None, None, None)),
        ("postlocalsgd", (32, 32, None, None, None, None)),
        ("ddp", (None,) * 6),
        ("streamingdiloco", (32, 0, None, None, 0.7, 0.9)),  # takes DiLoCo's through **kwargs
    ],
)
def test_each_algorithm_gets_its_papers_defaults(algo, expected):
    assert algorithm_fields(load_config(overrides={"algo": algo})) == expected


def test_algorithm_kwargs_hold_exactly_what_the_strategy_takes():
    assert load_config(overrides={"algo": "ddp"}).algorithm_kwargs() == {"max_grad_norm": 1.0}
    assert load_config(overrides={"algo": "palsgd", "seed": "7"}).algorithm_kwargs() == {
        "sync_interval": 32,
        "warmup_steps": 32,
        "pseudo_sync_prob": 0.2,
        "eta": 1.0,
        "outer_lr": 0.1,
        "outer_momentum": 0.9,
        "outer_device": None,
        "overlap_steps": 0,
        "merge_alpha": None,  # only an overlapped outer step merges
        "compress": "none",
        "diagnostics": False,  # the workers' spread costs an all-reduce per outer step
        "local_steps": "fixed",
        "outer_repeats": 1,
        "seed": 7,
        "max_grad_norm": 1.0,
    }


@pytest.mark.parametrize("algo", ["localsgd", "postlocalsgd", "diloco", "palsgd", "streamingdiloco"])
def test_every_averaging_algorithm_takes_compression(algo):
    config = load_config(overrides={"algo": algo, "compress": "topk:0.01"})
    assert config.algorithm_kwargs()["compress"] == "topk:0.01"
    assert load_config(overrides={"algo": algo}).algorithm_kwargs()["compress"] == "none"


def test_flags_win_over_the_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"steps": 10, "lr": 0.01, "sync-interval": 8, "algo": "diloco"}))
    config = load_config(path, {"steps": "20"})
    assert (config.run.steps, config.optimizer.lr, config.algorithm.sync_interval, config.algo) == (
        20, 0.01, 8, "diloco")


@pytest.mark.parametrize("groups", [{}, {"groups": "2", "group_size": "2", "inner": "fsdp"}])
def test_a_written_config_reads_back_as_the_same_config(groups, tmp_path):
    config = load_config(overrides={"algo": "noloco", "out": str(tmp_path), "lr": "1e-3", **groups})
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config
    assert set(yaml.safe_load(path.read_text())) == {*SECTIONS, "algorithm"}  # in sections


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"algo": "adam"}, f"--algo: unknown algorithm 'adam'; choose one of {', '.join(ALGORITHMS)}"),
        ({"model": "gpt-5"}, f"--model: unknown model 'gpt-5'; choose one of {', '.join(MODEL_NAMES)}"),
        ({"steps": "0"}, "--steps: Input should be greater than or equal to 1 (got '0')"),
        ({"workers": "two"}, (
            "--workers: Input should be a valid integer, unable to parse string as an integer (got 'two')"
        )),
        ({"batch_size": True}, "--batch-size: Input should be a number, not a boolean"),
        ({"lr": "nan"}, "--lr: Input should be a finite number"),
        ({"lr": True}, "--lr: Input should be a number, not a boolean"),
        ({"pseudo_sync_prob": "1"}, "--pseudo-sync-prob: Input should be less than 1 (got '1')"),
        ({"outer_momentum": "-0.1"}, "--outer-momentum: Input should be greater than or equal to 0 (got '-0.1')"),
        ({"algo": "noloco", "outer_momentum": "1"}, "--outer-momentum: Input should be less than 1 (got '1')"),
        ({"algo": "diloco", "merge_alpha": "0.3"},
         "--merge-alpha: only an overlapped outer step merges; give overlap_steps > 0 or no merge_alpha"),
        ({"tokenizer": "/nonexistent/tok.json"}, "--tokenizer: no such file '/nonexistent/tok.json'"),
        ({"tokenizer": "./absent-folder"}, "--tokenizer: no such folder './absent-folder'"),
        ({"seq_len": "129"}, "--seq-len: 129 exceeds gpt-tiny's 128 positions"),
        ({"algo": "noloco", "workers": "1"}, "--workers: noloco needs at least 2 workers"),
        pytest.param({"device": "cuda"}, "--device: cuda requested but no GPU is available",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is available")),
        ({"algo": "ddp", "sync_interval": "4"}, "--sync-interval: ddp does not take it"),
        ({"algo": "diloco", "eta": "2"}, "--eta: diloco does not take it"),
        ({"lr": "0.1", "eta": "2"}, "--eta: lr * eta / pseudo_sync_prob = 1 >= 1 would overshoot z"),
        ({"data": "synthetic-images"}, "--data: synthetic-images holds image data; gpt-tiny needs lm data"),
        ({"model_impl": "hf"}, "--model-impl: hf exists only for gpt-neo-8m, gpt-neo-125m"),
        ({"data": "/nonexistent/corpus.txt"}, "--data: no such file '/nonexistent/corpus.txt'"),
        ({"compress": "topk:0"}, f"{COMPRESS_RULE}, got 'topk:0'"),
        ({"compress": "topk:1.5"}, f"{COMPRESS_RULE}, got 'topk:1.5'"),
        ({"compress": "topk:one"}, f"{COMPRESS_RULE}, got 'topk:one'"),
        ({"compress": "int2"}, f"{COMPRESS_RULE}, got 'int2'"),
        ({"algo": "noloco", "compress": "int8"}, "--compress: noloco does not take it"),
        ({"algo": "ddp", "compress": "topk:0.01"}, "--compress: ddp does not take it"),
        ({"outer_repeats": "0"}, "--outer-repeats: Input should be greater than or equal to 1 (got '0')"),
        ({"algo": "diloco", "outer_repeats": "16"}, "--outer-repeats: diloco does not take it"),
        ({"algo": "postlocalsgd", "warmup_steps": "0"},
         "--warmup-steps: Input should be greater than or equal to 1 (got '0')"),
        ({"run": {"stepz": 3}}, "--config: unknown key 'run.stepz'"),
        ({"algorithm": {"name": "diloco", "eta": 1}}, "--eta: diloco does not take it"),
    ],
)
def test_bad_values_raise_one_line_naming_the_flag(overrides, message):
    with pytest.raises(ValueError) as raised:
        loaded(overrides=overrides)
    assert str(raised.value) == message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_cuda_is_accepted_where_there_is_a_gpu():
    assert loaded(overrides={"device": "cuda"}).run.device == "cuda"


def test_yaml_problems_name_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 10\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="^--config: unknown key 'learning_rate'$"):
        load_config(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping of option names to values$"):
        load_config(path)
    with pytest.raises(ValueError, match="^--config: cannot read .*absent.yaml: No such file or directory$"):
        load_config(tmp_path / "absent.yaml")


def test_under_torchrun_the_worker_count_is_its_world_size(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert load_config().layout.workers == 2  # validation does not look at the environment
    assert loaded().layout.workers == 3
    with pytest.raises(ValueError, match="^--workers: 2 differs from torchrun's WORLD_SIZE 3$"):
        loaded(overrides={"workers": "2"})


def layout(config):
    return config.layout.workers, config.layout.groups, config.layout.group_size, config.layout.inner


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({}, (2, None, None, None)),  # no groups: every process is a worker, as before groups existed
        ({"group_size": "1", "workers": "3"}, (3, None, None, None)),
        ({"groups": "2", "group_size": "2"}, (4, 2, 2, "ddp")),
        ({"groups": "2", "group_size": "2", "workers": "4", "inner": "fsdp"}, (4, 2, 2, "fsdp")),
        ({"groups": "2"}, (2, 2, 1, "ddp")),
        ({"group_size": "2", "workers": "6"}, (6, 3, 2, "ddp")),
        ({"groups": "4", "group_size": "1"}, (4, 4, 1, "ddp")),
    ],
)
def test_any_two_of_workers_groups_and_group_size_give_the_third(overrides, expected):
    assert layout(loaded(overrides=overrides)) == expected


@pytest.mark.skipif(importlib.util.find_spec("torchft") is None, reason="needs the ft extra (pip install 'lowcomm[ft]')")
@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"groups": "3"}, (3, 3, 1, "ddp")),  # groups of one process
        ({"groups": "2", "group_size": "2"}, (4, 2, 2, "ddp")),  # a group of G ranks fails and rejoins whole
        ({"groups": "3", "workers": "6"}, (6, 3, 2, "ddp")),
        ({"groups": "2", "group_size": "2", "inner": "fsdp"}, (4, 2, 2, "fsdp")),
    ],
)
def test_live_worker_groups_take_any_group_size(overrides, expected):
    config = loaded(overrides={"fault_tolerance": "live", "algo": "diloco", **overrides})
    assert layout(config) == expected


@pytest.mark.skipif(importlib.util.find_spec("torchft") is None, reason="needs the ft extra (pip install 'lowcomm[ft]')")
@pytest.mark.skipif(quota_problem() is not None, reason="no CPU cgroup with quotas here")
def test_live_groups_take_speeds_and_share_the_cores_of_the_machine_they_run_on():
    """Speeds per group; ``--cpu-share auto`` splits this machine's cores among the ranks it runs:
    all groups', or with ``--live-group`` (a machine per group) that group's only."""
    live = {"fault_tolerance": "live", "algo": "diloco", "groups": "2", "group_size": "2",
            "worker_speeds": "1,0.5", "cpu_share": "auto"}
    every_group = loaded(overrides=live)
    assert every_group.conditions.worker_speeds == [1.0, 0.5]
    assert every_group.conditions.cpu_share == usable_cores() / 4
    one_group = loaded(overrides={**live, "live_group": "1", "lighthouse": "127.0.0.1:29510"})
    assert one_group.conditions.cpu_share == usable_cores() / 2


@pytest.mark.parametrize(
    "local_world_size, overrides, expected",
    [
        ("2", {}, (4, 2, 2, "ddp")),  # torchrun --nnodes 2 --nproc-per-node 2: the nodes are the groups
        ("2", {"inner": "fsdp"}, (4, 2, 2, "fsdp")),
        ("2", {"groups": "4"}, (4, 4, 1, "ddp")),
        ("2", {"group_size": "1"}, (4, None, None, None)),  # opting out: every process a worker
        ("1", {}, (4, None, None, None)),  # --nproc-per-node 1: every node one worker
        ("4", {}, (4, None, None, None)),  # one node: every process a worker, as with the local launcher
    ],
)
def test_under_torchrun_the_nodes_are_the_groups(local_world_size, overrides, expected, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    assert layout(loaded(overrides=overrides)) == expected


def test_a_grouped_run_keeps_its_identity_in_another_layout(tmp_path):
    out = str(tmp_path)
    two_by_two = loaded(overrides={"out": out, "groups": "2", "group_size": "2"})
    assert two_by_two.run_identity() == loaded(overrides={"out": out, "groups": "4", "workers": "4"}).run_identity()
    assert two_by_two.run_identity() != loaded(overrides={"out": out, "groups": "2", "group_size": "2",
                                                          "inner": "fsdp"}).run_identity()
    four = loaded(overrides={"out": out, "workers": "4"})
    assert loaded(overrides={"out": out}).run_identity() != four.run_identity()


def test_launch_fields_do_not_change_the_run_identity(tmp_path):
    plain = load_config(overrides={"out": str(tmp_path / "a")})
    launched = load_config(
        overrides={"out": str(tmp_path / "b"), "max_restarts": "3", "hang_timeout": "5", "keep_checkpoints": "1"}
    )
    assert plain.run_identity() == launched.run_identity()
    assert LAUNCH_FIELDS.isdisjoint(plain.run_identity())
    assert plain.run_identity() != load_config(overrides={"out": str(tmp_path / "a"), "steps": "7"}).run_identity()


def test_every_field_is_a_flag_with_a_description():
    fields = {(section, field) for section, cls in SECTIONS.items() for field in cls.model_fields}
    assert fields <= set(FLAG_PATHS.values())
    assert all(cls.model_fields[field].description for section, cls in SECTIONS.items() for field in cls.model_fields)
    assert FLAG_PATHS["algo"] == ("algorithm", "name") and FLAG_PATHS["sync_interval"] == ("algorithm", "sync_interval")


def test_validation_does_not_look_at_the_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("WORLD_SIZE", "3")
    config = load_config(overrides={"data": str(tmp_path / "absent.txt"), "groups": "2", "out": str(tmp_path)})
    assert (config.run.device, config.layout.workers, config.layout.group_size) == ("auto", 2, None)
    with pytest.raises(ValueError, match="^--data: no such file"):
        resolve(config)


def test_the_resolved_values_are_recorded_apart(tmp_path):
    config = load_config(overrides={"groups": "2", "out": str(tmp_path)})
    resolved = resolve(config)
    assert resolved.to_yaml() == config.to_yaml()  # the config as given
    assert yaml.safe_load(resolved.resolved_yaml()) == {
        "run": {"device": resolved.run.device}, "layout": {"group_size": 1, "inner": "ddp"}}
    assert config.run.device == "auto" and config.layout.group_size is None  # resolve changes a copy


def test_a_flat_yaml_file_reads_as_its_sections(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"algo": "diloco", "steps": 5, "outer_lr": 0.5, "model": "gpt-tiny"}))
    nested = tmp_path / "new.yaml"
    nested.write_text(yaml.safe_dump({"algorithm": {"name": "diloco", "outer_lr": 0.5}, "run": {"steps": 5},
                                      "model": {"name": "gpt-tiny"}}))
    assert load_config(path, {"out": str(tmp_path)}) == load_config(nested, {"out": str(tmp_path)})


PAPER = "palsgd-paper-gpt-neo-8m"


@pytest.fixture
def beside_shared_data(tmp_path, monkeypatch):
    """A working directory whose ``../shared/data/linux-docs.txt`` exists, as in the project's checkout."""
    data = tmp_path / "shared" / "data"
    data.mkdir(parents=True)
    (data / "linux-docs.txt").write_text("The general rule is that the ACPI namespace describes everything.\n" * 50)
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")
    return tmp_path


def test_the_papers_preset_loads_and_validates(beside_shared_data):
    config = loaded(None, {"out": beside_shared_data / "out"}, PAPER)
    assert (config.algo, config.data.source, config.layout.workers) == ("palsgd", "../shared/data/linux-docs.txt", 4)
    # step-bound: 4 workers x 8 micro-batches x 10 sequences x 64 tokens a step
    assert (config.data.grad_accum, config.data.batch_size, config.data.seq_len) == (8, 10, 64)
    # the paper's optimizer: AdamW at 0.01 without a schedule, clipping 1
    optimizer = config.optimizer
    assert (optimizer.lr, optimizer.lr_schedule, optimizer.lr_warmup, optimizer.max_grad_norm) == (
        0.01, "constant", 0, 1.0)
    # H, S, p, eta, outer Nesterov SGD lr and momentum
    assert algorithm_fields(config) == (32, 32, 0.2, 1.0, 0.1, 0.9)
    # outer steps after steps 64, 96, ..., 1984: (2000 - 32) // 32 = 61 >= 50 synchronisations
    assert (config.run.steps - config.algorithm.warmup_steps) // config.algorithm.sync_interval == 61
    assert config.eval.eval_every == 50  # bench's grid for 2000 steps: the divisor of 100 up to 2000 // 40


def test_flags_and_config_files_win_over_the_preset(beside_shared_data):
    out = beside_shared_data / "out"
    config = load_config(None, {"out": out, "lr": "0.005", "steps": "64"}, PAPER)
    assert (config.optimizer.lr, config.run.steps, config.optimizer.lr_schedule, config.algorithm.outer_lr) == (
        0.005, 64, "constant", 0.1)
    own = beside_shared_data / "own.yaml"
    own.write_text("sync_interval: 16\noverlap_steps: 2\n")
    config = load_config(own, {"out": out, "outer_lr": "0.7"}, PAPER)
    algorithm = config.algorithm
    assert (algorithm.sync_interval, algorithm.overlap_steps, algorithm.warmup_steps, algorithm.outer_lr) == (
        16, 2, 32, 0.7)


def test_a_preset_gives_each_algorithm_only_the_options_it_takes(beside_shared_data):
    ddp = load_config(None, {"algo": "ddp", "out": beside_shared_data / "out"}, PAPER)
    assert algorithm_fields(ddp) == (None,) * 6
    assert (ddp.optimizer.lr, ddp.optimizer.lr_schedule, ddp.run.steps, ddp.data.batch_size) == (
        0.01, "constant", 2000, 10)
    diloco = load_config(None, {"algo": "diloco", "out": beside_shared_data / "out"}, PAPER)
    assert algorithm_fields(diloco) == (32, 32, None, None, 0.1, 0.9)
    with pytest.raises(ValueError, match="--sync-interval: ddp does not take it"):
        load_config(None, {"algo": "ddp", "sync_interval": "8", "out": beside_shared_data / "out"}, PAPER)


def test_an_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="^--preset: unknown preset 'palsgd'; choose one of palsgd-paper-gpt-neo-8m$"):
        load_config(None, {}, "palsgd")
