from pathlib import Path

import pytest

from lowcomm.reporting.records import Evaluation, SyncDiagnostics, TrainPoint, read_records
from tests.benchmarks import recorded
from tests.benchmarks.recorded import MB


def test_records_of_a_run_with_a_pseudo_synchronisation(tmp_path: Path) -> None:
    records = read_records(recorded.palsgd(tmp_path) / "metrics.jsonl")
    assert records.train == [TrainPoint(1, 9.0, 1.0), TrainPoint(2, 9.0, 2.0), TrainPoint(4, 9.0, 4.0)]
    assert records.evaluations == [Evaluation(2, 3.2, 1.5, 200, 1 * MB, 0.1), Evaluation(4, 2.5, 2.8, 400, 2.5 * MB, 0.3)]
    assert records.sync_steps == [3]
    assert records.sync_diagnostics == [SyncDiagnostics(3, 0.5, 0.25, None)]
    assert records.step_bytes == {1: 1 * MB, 3: 1.5 * MB}


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="metrics.jsonl is missing"):
        read_records(tmp_path / "metrics.jsonl")


def test_an_overlapped_outer_step_has_its_diagnostics_in_a_record_of_its_own(tmp_path: Path) -> None:
    run = recorded.write_run(tmp_path / "overlap", {}, [
        {"step": 2, "sync": "outer", "bytes": 100},
        {"step": 3, "sync": "outer", "bytes": 0, "pseudo_grad_norm": 1.5, "worker_spread": 0.5,
         "pseudo_grad_cosine": -0.25},
    ])
    records = read_records(run / "metrics.jsonl")
    assert records.sync_steps == [2]
    assert records.sync_diagnostics == [SyncDiagnostics(3, 1.5, 0.5, -0.25)]
