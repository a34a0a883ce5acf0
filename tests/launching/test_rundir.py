import pytest
import torch
import yaml

from lowcomm.checkpointing.checkpoint import Checkpointer, checkpoints_of
from lowcomm.communication.peers import Peers
from lowcomm.launching.rundir import prepare_run_directory, read_run_config
from lowcomm.training.config import load_config, resolve


def config_for(out, **overrides):
    return resolve(load_config(overrides={"out": str(out), **overrides}))


def checkpointed(out, step=1):
    """Give the run in ``out`` a checkpoint of ``step`` (``--resume`` needs one)."""
    Checkpointer(checkpoints_of(out), Peers(0, 1, lambda v: [v])).save(step, {"step": step}, {"w": torch.zeros(1)})


RUN_FILES = [".lowcomm", ".lowcomm.lock", "config.yaml", "resolved.yaml"]


def snapshot(directory):
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def test_a_fresh_directory_gets_the_config_and_the_resolved_values_apart(tmp_path):
    config = config_for(tmp_path / "run", algo="diloco")
    prepare_run_directory(config)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == RUN_FILES
    given = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (given["algorithm"], given["run"]["device"]) == ({**given["algorithm"], "name": "diloco", "outer_lr": 0.7},
                                                            "auto")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert yaml.safe_load((tmp_path / "run" / "resolved.yaml").read_text()) == {"run": {"device": device}}
    saved = read_run_config(tmp_path / "run")
    assert (saved["algo"], saved["outer_lr"], saved["device"]) == ("diloco", 0.7, device)


def test_a_directory_holding_a_run_needs_resume_or_overwrite(tmp_path):
    prepare_run_directory(config_for(tmp_path))
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    checkpointed(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="already holds a run; pass --resume to continue it or --overwrite"):
        prepare_run_directory(config_for(tmp_path))
    assert snapshot(tmp_path) == before
    prepare_run_directory(config_for(tmp_path, resume=True, max_restarts="2"))
    assert snapshot(tmp_path)["metrics.jsonl"] == b"{}\n"
    assert read_run_config(tmp_path)["max_restarts"] == 2


def test_resuming_a_different_run_is_refused_and_names_the_difference(tmp_path):
    prepare_run_directory(config_for(tmp_path, seed="100"))
    checkpointed(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"holds a different run \(seed: 100 there, 200 here\)"):
        prepare_run_directory(config_for(tmp_path, seed="200", resume=True))
    assert snapshot(tmp_path) == before


def test_resuming_may_change_the_steps_but_not_below_those_done(tmp_path):
    prepare_run_directory(config_for(tmp_path, steps="100"))
    checkpointed(tmp_path, 60)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"^--steps: .* has already trained 60 steps; resume it with --steps 60 or more$"):
        prepare_run_directory(config_for(tmp_path, steps="59", resume=True))
    assert snapshot(tmp_path) == before
    for steps in (60, 80, 200):
        prepare_run_directory(config_for(tmp_path, steps=str(steps), resume=True))
        assert read_run_config(tmp_path)["steps"] == steps


def test_overwrite_replaces_a_run_but_never_a_foreign_directory(tmp_path):
    prepare_run_directory(config_for(tmp_path, steps="100"))
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    prepare_run_directory(config_for(tmp_path, steps="200", overwrite=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == RUN_FILES
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ValueError, match="is not empty and holds no lowcomm run"):
        prepare_run_directory(config_for(foreign, overwrite=True))
    assert (foreign / "cat.jpg").read_bytes() == b"\xff\xd8"


def test_out_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        prepare_run_directory(config_for(tmp_path / "file"))


def test_a_grouped_run_resumes_in_another_layout_but_not_without_groups(tmp_path):
    prepare_run_directory(config_for(tmp_path, groups="2", group_size="2"))
    checkpointed(tmp_path)
    prepare_run_directory(config_for(tmp_path, groups="1", group_size="4", resume=True))
    assert read_run_config(tmp_path)["group_size"] == 4
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="holds a run with worker groups; resume it with them"):
        prepare_run_directory(config_for(tmp_path, workers="4", resume=True))
    with pytest.raises(ValueError, match=r"holds a different run \(inner: 'ddp' there, 'fsdp' here\)"):
        prepare_run_directory(config_for(tmp_path, groups="4", group_size="1", inner="fsdp", resume=True))
    assert snapshot(tmp_path) == before


def test_a_run_recorded_before_a_field_existed_resumes_at_that_fields_default(tmp_path):
    prepare_run_directory(config_for(tmp_path, algo="palsgd"))
    checkpointed(tmp_path)
    recorded = read_run_config(tmp_path)  # as an older lowcomm recorded it: flat, resolved, in config.yaml alone
    for newer in ("outer_repeats", "lr_schedule"):
        del recorded[newer]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recorded))
    (tmp_path / "resolved.yaml").unlink()
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"holds a different run \(outer_repeats: 1 there, 2 here\)"):
        prepare_run_directory(config_for(tmp_path, algo="palsgd", outer_repeats="2", resume=True))
    with pytest.raises(ValueError, match=r"holds a different run \(lr_schedule: 'cosine' there, 'constant' here\)"):
        prepare_run_directory(config_for(tmp_path, algo="palsgd", lr_schedule="constant", resume=True))
    assert snapshot(tmp_path) == before
    prepare_run_directory(config_for(tmp_path, algo="palsgd", resume=True))
    assert read_run_config(tmp_path)["outer_repeats"] == 1
