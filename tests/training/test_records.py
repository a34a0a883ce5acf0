from pathlib import Path

import pytest

from lowcomm.training.records import Evaluation, TrainPoint, read_records
from tests.benchmarks import recorded
from tests.benchmarks.recorded import MB


def test_records_of_a_run_with_a_pseudo_synchronisation(tmp_path: Path) -> None:
    records = read_records(recorded.palsgd(tmp_path) / "metrics.jsonl")
    assert records.train == [TrainPoint(1, 9.0, 1.0), TrainPoint(2, 9.0, 2.0), TrainPoint(4, 9.0, 4.0)]
    assert records.evaluations == [Evaluation(2, 3.2, 1.5, 200, 1 * MB, 0.1), Evaluation(4, 2.5, 2.8, 400, 2.5 * MB, 0.3)]
    assert records.sync_steps == [3]
    assert records.step_bytes == {1: 1 * MB, 3: 1.5 * MB}


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="metrics.jsonl is missing"):
        read_records(tmp_path / "metrics.jsonl")
