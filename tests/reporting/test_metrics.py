import json

from lowcomm.reporting.metrics import MetricsLog, write_json_atomically


def lines(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_reopening_at_a_checkpoints_offset_drops_the_records_written_after_it(tmp_path):
    log = MetricsLog(tmp_path, offset=0, step=0)
    log.write({"step": 1, "loss": 2.5})
    offset = log.durable_offset()
    assert offset == len('{"step": 1, "loss": 2.5}\n')
    log.write({"step": 2, "loss": 2.25})
    log.write({"step": 2, "eval_loss": 2.0})
    log.close()
    assert len(lines(tmp_path)) == 3
    log = MetricsLog(tmp_path, offset=offset, step=1)
    log.write({"step": 2, "loss": 2.125})
    log.close()
    assert lines(tmp_path) == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.125}]
    assert any((tmp_path / "tensorboard").iterdir())


def test_an_offset_past_the_end_never_pads_the_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    MetricsLog(tmp_path, offset=1000, step=1).close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_json_is_replaced_whole(tmp_path):
    write_json_atomically(tmp_path / "summary.json", {"steps": 3})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"steps": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
