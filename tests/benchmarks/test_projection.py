"""Reading recorded runs, the side-by-side table and the projections, against hand-worked numbers.

The runs are those of :mod:`tests.benchmarks.recorded`; the network in the projections carries
1 MB/s (8 Mbit/s), so a step that makes a worker send 1.5 MB costs 1.5 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lowcomm.communication.network_model import NetworkModel
from lowcomm.benchmarks.projection import project, project_all
from lowcomm.benchmarks.results import Target, results_rows
from lowcomm.benchmarks.runs import Evaluation, read_run
from lowcomm.cli import main
from tests.benchmarks import recorded
from tests.benchmarks.recorded import MB

ONE_MB_PER_S = NetworkModel(8e6)


@pytest.fixture
def runs(tmp_path: Path) -> dict:
    return {name: read_run(getattr(recorded, name)(tmp_path)) for name in ("ddp", "localsgd", "palsgd", "noloco")}


def test_read_run(runs: dict) -> None:
    assert runs["ddp"].evaluations == [Evaluation(2, 3.0, 2.0, 200, 3 * MB, 0.4), Evaluation(4, 2.0, 4.0, 400, 6 * MB, 0.8)]
    assert runs["ddp"].step_bytes == {1: 1.5 * MB, 2: 1.5 * MB, 3: 1.5 * MB, 4: 1.5 * MB}
    assert runs["palsgd"].step_bytes == {1: 1 * MB, 3: 1.5 * MB}  # step 3 has only a pseudo record
    assert runs["noloco"].step_bytes == {2: 2 * MB, 4: 2 * MB}
    assert runs["localsgd"].time_to_target(2.0) == 3.0
    assert runs["palsgd"].time_to_target(2.0) is None


def test_read_run_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="summary.json is missing"):
        read_run(tmp_path)


def test_projection_at_one_megabyte_per_second(runs: dict) -> None:
    # DDP: four all-reduces of 1.5 s replace 0.8 s of waiting; each hides 0.5 s behind the backward
    # pass (its early buckets' 0.4 MB payload would take 0.6 s)
    assert runs["ddp"].overlap_per_step == (0.5, 0.6 * MB)
    ddp = project(runs["ddp"], ONE_MB_PER_S, 4, target=2.0)
    assert ddp.time_to_target_s == pytest.approx(4.0 - 0.8 + 4 * 1.0)
    assert ddp.wall_time_s == pytest.approx(4.5 - 0.8 + 4 * 1.0)
    # Local SGD: the 1 MB broadcast (1 s) and two all-reduces (1.5 s each)
    assert project(runs["localsgd"], ONE_MB_PER_S, 4, 2.0).time_to_target_s == pytest.approx(3.0 - 0.2 + 4.0)
    palsgd = project(runs["palsgd"], ONE_MB_PER_S, 4, 2.0)
    assert (palsgd.wall_time_s, palsgd.time_to_target_s) == (pytest.approx(3.0 - 0.3 + 2.5), None)
    # NoLoCo: 2 MB to one partner, twice
    assert project(runs["noloco"], ONE_MB_PER_S, 4, 2.0).time_to_target_s == pytest.approx(2.9 - 0.2 + 4.0)


def test_projection_to_other_worker_counts_and_latency(runs: dict) -> None:
    # two workers: a worker sends the whole 1 MB payload once per all-reduce; the early buckets'
    # 0.4 MB take 0.4 s, all hidden
    assert project(runs["ddp"], ONE_MB_PER_S, 2, 2.0).time_to_target_s == pytest.approx(4.0 - 0.8 + 4 * 0.6)
    # five: 2 * 4/5 MB; NoLoCo's triple makes its members send to two partners
    assert project(runs["ddp"], ONE_MB_PER_S, 5, 2.0).time_to_target_s == pytest.approx(4.0 - 0.8 + 4 * 1.1)
    assert project(runs["noloco"], ONE_MB_PER_S, 5, 2.0).time_to_target_s == pytest.approx(2.9 - 0.2 + 2 * 4.0)
    # 10 ms per message: a ring all-reduce among four takes 6 of them
    slow_start = NetworkModel(8e6, latency_s=0.01)
    assert project(runs["ddp"], slow_start, 4, 2.0).time_to_target_s == pytest.approx(4.0 - 0.8 + 4 * 1.06)


def test_project_all_gives_speedups_over_ddp_at_each_point(runs: dict) -> None:
    ordered = [runs[name] for name in ("ddp", "localsgd", "noloco")]
    projections = project_all(ordered, [8e6, 80e6], [4], latency_s=0.0, target=2.0)
    assert [(p.algo, p.bandwidth_bps) for p in projections] == [
        ("ddp", 8e6), ("localsgd", 8e6), ("noloco", 8e6), ("ddp", 80e6), ("localsgd", 80e6), ("noloco", 80e6)]
    assert projections[1].speedup_vs_ddp == pytest.approx(7.2 / 6.8)
    assert projections[2].speedup_vs_ddp == pytest.approx(7.2 / 6.7)
    # at 10 MB/s DDP's all-reduces take 0.15 s, of which its early buckets' 0.06 s hide
    assert projections[4].speedup_vs_ddp == pytest.approx((4.0 - 0.8 + 4 * 0.09) / (3.0 - 0.2 + 0.4))


def test_a_one_worker_run_cannot_be_projected(runs: dict, tmp_path: Path) -> None:
    alone = recorded.write_run(tmp_path / "alone", {**runs["ddp"].summary, "workers": 1},
                               [recorded.evaluation(4, 2.0, 4.0, 0, 0.0)])
    with pytest.raises(ValueError, match="run: .* one worker"):
        project(read_run(alone), ONE_MB_PER_S, 4, 2.0)


def test_with_worker_groups_the_slow_links_are_the_groups(tmp_path: Path) -> None:
    """Each group's link carries what its ranks send between groups: DiLoCo's 2 MB per sync (a 2 MB
    payload among 2 groups, 2 s at 1 MB/s), DDP's 3 MB per step (each rank's 1.5 MB share of its ring's
    links between groups, x 2 ranks). DDP's measured waits on the slow link (rank 0's 0.2 s by step 2,
    0.4 s by step 4) give way to the modelled 3 s a step."""
    diloco, ddp = read_run(recorded.grouped_diloco(tmp_path)), read_run(recorded.grouped_ddp(tmp_path))
    assert (diloco.links, ddp.links) == (2, 2)
    assert diloco.link_step_bytes == {2: 2 * MB, 4: 2 * MB}
    assert ddp.link_step_bytes == {1: 3 * MB, 2: 3 * MB, 3: 3 * MB, 4: 3 * MB}
    assert project(diloco, ONE_MB_PER_S, 2, 2.1).time_to_target_s == pytest.approx(2.9 - 0.2 + 2 * 2.0)
    assert project(ddp, ONE_MB_PER_S, 2, 2.0).wall_time_s == pytest.approx(4.0 - 0.4 + 4 * 3.0)
    assert project(ddp, ONE_MB_PER_S, 2, 3.0).time_to_target_s == pytest.approx(2.0 - 0.2 + 2 * 3.0)
    # On 4 groups, the same payloads: 2 x 3/4 of them per link
    assert project(diloco, ONE_MB_PER_S, 4, 2.1).time_to_target_s == pytest.approx(2.9 - 0.2 + 2 * 3.0)
    rows = results_rows([ddp, diloco], [Target("given", 2.1, "--target-loss")], "tokens")
    assert rows[1]["comm_bytes_between_groups"] == 8 * MB


PROJECT_REFUSALS = {
    "out a file": (["--out", "{file}"], "--out: {file} exists and is not a directory"),
    "NaN target": (["--target-loss", "nan"], "--target-loss: must be a finite number above 0 (no loss is below 0), got nan"),
    "infinite target": (["--target-loss", "inf"], "--target-loss: must be a finite number above 0"),
    "negative target": (["--target-loss", "-1"], "--target-loss: must be a finite number above 0"),
}


@pytest.mark.parametrize("case", PROJECT_REFUSALS)
def test_project_refuses_bad_input_with_one_line_and_exit_code_2(case: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    arguments, message = PROJECT_REFUSALS[case]
    run, file = recorded.ddp(tmp_path), tmp_path / "taken.csv"
    file.write_text("mine\n")
    assert main(["project", str(run), *(a.format(file=file) for a in arguments)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"lowcomm project: error: {message.format(file=file)}")
    assert file.read_text() == "mine\n" and not (run / "projection").exists()
