"""lowcomm deletes or replaces only what it wrote (issue #25): ``--overwrite`` only in a directory its
marker names as a lowcomm run, and there only lowcomm's files; a run's ``config.yaml`` (or anyone's
YAML) cannot ask for ``--overwrite``; ``bench --out`` writes only into a bench of its own; and a run
directory is locked while a run uses it."""

import signal
import subprocess
import sys
import time

import yaml

from lowcomm.launching.rundir import prepare_run_directory, read_run_config
from lowcomm.training.config import load_config, resolve
from tests.train_runs import PERIODIC, SHORT

TINY = ["--steps", "4", "--batch-size", "4", "--seq-len", "16", "--eval-every", "4", "--eval-batches", "1"]


def snapshot(directory):
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def one_line_refusal(result, expected):
    code, stdout, stderr = result
    assert (code, stderr.count("\n"), stdout) == (2, 1, ""), stderr
    assert expected in stderr, stderr


def test_overwrite_refuses_a_directory_lowcomm_did_not_mark(run_cli, tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text("algo: ddp\n")
    (project / "notes.txt").write_text("mine\n")
    (project / "src" / "main.py").write_text("print('hi')\n")
    before = snapshot(project)
    one_line_refusal(run_cli(["train", *TINY, "--out", str(project), "--overwrite"]),
                     "is not empty and holds no lowcomm run (no .lowcomm marker)")
    assert snapshot(project) == before


def test_overwrite_of_a_run_deletes_only_lowcomms_files(tmp_path):
    run = tmp_path / "run"
    prepare_run_directory(resolve(load_config(overrides={"out": str(run)})))
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "analysis.md").write_text("# my notes\n")
    prepare_run_directory(resolve(load_config(overrides={"out": str(run), "overwrite": True, "seed": "7"})))
    assert sorted(p.name for p in run.iterdir()) == [".lowcomm", ".lowcomm.lock", "analysis.md", "config.yaml",
                                                     "resolved.yaml"]
    assert (run / "analysis.md").read_text() == "# my notes\n"


def test_no_yaml_can_ask_for_overwrite(run_cli, tmp_path):
    run = tmp_path / "run"
    prepare_run_directory(resolve(load_config(overrides={"out": str(run), "overwrite": True})))
    (run / "analysis.md").write_text("# my notes\n")
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert "overwrite" not in recorded["run"] and "resume" not in recorded["run"]
    before = snapshot(run)
    one_line_refusal(run_cli(["train", "--config", str(run / "config.yaml")]), "already holds a run")
    foreign = tmp_path / "theirs.yaml"
    foreign.write_text(yaml.safe_dump({"out": str(run), "overwrite": True}))
    one_line_refusal(run_cli(["train", "--config", str(foreign)]), f"{foreign} sets overwrite; only the flag --overwrite may")
    assert snapshot(run) == before


def test_bench_refuses_an_out_that_is_not_a_bench_of_its_own(run_cli, tmp_path, cache_dir):
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.csv").write_text("the user's\n")
    (out / "report.md").write_text("# the user's\n")
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        one_line_refusal(run_cli(["bench", "--algos", "ddp", *TINY, "--cache-dir", cache_dir, "--out", str(out), *extra]),
                         "is not empty and holds no lowcomm bench")
    assert snapshot(out) == before


def test_a_second_run_in_a_directory_in_use_is_refused(tmp_path, cache_dir):
    out = tmp_path / "out"
    args = [*SHORT, *PERIODIC, "--cache-dir", cache_dir, "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "lowcomm", "train", *args, "--steps", "2000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not (out / "checkpoints" / "step_00000008").exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            time.sleep(0.01)
        for flag in ("--resume", "--overwrite"):
            second = subprocess.run([sys.executable, "-m", "lowcomm", "train", *args, "--steps", "2000", flag],
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr[-3000:]
            assert second.stderr == (f"lowcomm train: error: --out: another lowcomm process is using {out}; "
                                     "wait for it to end or choose another directory\n")
        assert first.poll() is None and (out / "checkpoints" / "step_00000008").is_dir()
    finally:
        first.terminate()
        first.communicate()


def test_resume_refuses_without_a_run_or_an_intact_checkpoint(run_cli, tmp_path):
    one_line_refusal(run_cli(["train", *TINY, "--out", str(tmp_path / "absent"), "--resume"]),
                     "holds no run to resume; start one without --resume")
    assert not (tmp_path / "absent").exists()
    run = tmp_path / "run"
    prepare_run_directory(resolve(load_config(overrides={"out": str(run)})))
    (run / "checkpoints" / "step_00000004").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 4, "loss": 1.0}\n')
    before = snapshot(run)
    one_line_refusal(run_cli(["train", "--out", str(run), "--resume"]),
                     "holds no intact checkpoint (step_00000004: no manifest (an unfinished write)); start afresh with --overwrite")
    assert snapshot(run) == before


def test_resume_takes_every_option_not_given_from_the_runs_config(run_cli, tmp_path, cache_dir):
    out = tmp_path / "run"
    assert run_cli(["train", "--algo", "ddp", *TINY, "--steps", "8", "--checkpoint-every", "4", "--seed", "3",
                    "--cache-dir", cache_dir, "--out", str(out)])[0] == 0
    code, stdout, stderr = run_cli(["train", "--out", str(out), "--resume", "--steps", "12"])
    assert code == 0, stderr
    assert f"lowcomm train: resuming from step 8 ({out / 'checkpoints' / 'step_00000008'})" in stdout
    recorded = read_run_config(out)
    assert (recorded["algo"], recorded["seed"], recorded["steps"], recorded["batch_size"]) == ("ddp", 3, 12, 4)


def test_ctrl_c_stops_with_one_line_a_loss_plot_and_a_way_to_resume(tmp_path, cache_dir):
    out = tmp_path / "out"
    launcher = subprocess.Popen([sys.executable, "-m", "lowcomm", "train", *SHORT, *PERIODIC, "--steps", "4000",
                                 "--cache-dir", cache_dir, "--out", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (out / "checkpoints" / "step_00000016").exists():
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        time.sleep(0.01)
    launcher.send_signal(signal.SIGINT)
    _, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("lowcomm train: interrupted at step ")
    assert last.endswith(f"; resume with: lowcomm train --out {out} --resume")
    assert "Traceback" not in stderr and (out / "loss.png").stat().st_size > 0
