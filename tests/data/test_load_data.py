import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowcomm.data import load_data
from lowcomm.data.split import held_out_mask
from lowcomm.data.stories import generate_stories
from lowcomm.data.tokenizer import END_OF_TEXT, load_tokenizer

KJV = Path(__file__).resolve().parents[2].parent / "shared/data/kjv.txt"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One tokenizer cache for the synthetic-stories tests, so the BPE is trained once."""
    return tmp_path_factory.mktemp("cache")


def stories_bundle(cache_dir, rank=0, world_size=2, seed=0, **options):
    options = {"batch_size": 4, "seq_len": 32, "vocab_size": 400, "eval_batches": 3} | options
    return load_data("synthetic-stories", rank=rank, world_size=world_size, seed=seed, cache_dir=cache_dir, **options)


def test_lm_batches_are_next_token_pairs_from_the_right_split(tmp_path):
    documents = [f"Document {i}. {story}" for i, story in enumerate(generate_stories(300))]
    path = tmp_path / "stories.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    options = {"batch_size": 4, "seq_len": 16, "seed": 0, "vocab_size": 400, "eval_batches": 2}
    bundle = load_data(str(path), rank=1, world_size=2, cache_dir=tmp_path / "cache", **options)
    assert (bundle.task, bundle.vocab_size, bundle.num_classes) == ("lm", 400, None)
    (tokenizer_path,) = (tmp_path / "cache").glob("bpe-400-*.json")
    tokenizer = load_tokenizer(str(tokenizer_path))
    held_out = held_out_mask(len(documents))
    train_text = "".join(d + END_OF_TEXT for d, h in zip(documents, held_out) if not h)
    eval_text = "".join(d + END_OF_TEXT for d, h in zip(documents, held_out) if h)
    inputs, targets = next(bundle.train)
    assert inputs.shape == targets.shape == (4, 16) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    for row, target in zip(inputs, targets):
        assert tokenizer.backend.decode([*row.tolist(), int(target[-1])], skip_special_tokens=False) in train_text
    assert [len(batch_inputs) for batch_inputs, _ in bundle.eval_batches] == [4, 4]
    first_eval = tokenizer.backend.decode(bundle.eval_batches[0][0][0].tolist(), skip_special_tokens=False)
    assert eval_text.startswith(first_eval) and first_eval.startswith("Document 19. ")  # 19: first held out
    assert first_eval not in train_text


def test_ranks_share_eval_batches_but_not_training_windows(cache_dir):
    first, second = stories_bundle(cache_dir, rank=0), stories_bundle(cache_dir, rank=1)
    for (a, x), (b, y) in zip(first.eval_batches, second.eval_batches, strict=True):
        assert torch.equal(a, b) and torch.equal(x, y)
    assert not torch.equal(next(first.train)[0], next(second.train)[0])
    alone = stories_bundle(cache_dir, world_size=1)
    shard_sizes = [b.train.state_dict()["shard_size"] for b in (first, second, alone)]
    assert shard_sizes[0] + shard_sizes[1] == shard_sizes[2]


def test_same_seed_and_rank_reproduce_and_a_resumed_stream_continues_exactly(cache_dir):
    original, again = stories_bundle(cache_dir, rank=1, seed=3), stories_bundle(cache_dir, rank=1, seed=3)
    for _ in range(5):
        assert torch.equal(next(original.train)[0], next(again.train)[0])
    resumed = stories_bundle(cache_dir, rank=1, seed=3)
    resumed.train.load_state_dict(original.train.state_dict())
    for _ in range(5):
        assert torch.equal(next(original.train)[0], next(resumed.train)[0])


def test_a_named_tokenizer_file_is_used_instead_of_training_one(cache_dir, tmp_path):
    stories_bundle(cache_dir)
    (tokenizer_path,) = cache_dir.glob("bpe-400-*.json")
    bundle = stories_bundle(tmp_path / "unused", tokenizer=str(tokenizer_path), vocab_size=1000)
    assert bundle.vocab_size == 400
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rank": 2}, r"rank: must be in \[0, world_size=2\), got 2"),
        ({"batch_size": 0}, "batch_size: must be >= 1, got 0"),
        ({"seq_len": 200_000}, "held-out split is too small"),
    ],
)
def test_bad_arguments_are_value_errors(cache_dir, options, message):
    with pytest.raises(ValueError, match=message):
        stories_bundle(cache_dir, **options)


@pytest.mark.skipif(not KJV.exists(), reason=f"{KJV} not present")
def test_kjv_loads_as_a_language_modelling_task(tmp_path):
    bundle = load_data(str(KJV), rank=0, world_size=4, batch_size=8, seq_len=128, seed=0, cache_dir=tmp_path)
    assert bundle.vocab_size == 2048
    assert len(bundle.eval_batches) == 8
    assert next(bundle.train)[0].max() < 2048


def test_unreachable_hub_gives_one_line_errors_fast():
    script = """
from lowcomm.data import load_data
from lowcomm.data.tokenizer import load_tokenizer
options = {"rank": 0, "world_size": 1, "batch_size": 1, "seq_len": 8, "seed": 0, "cache_dir": "."}
for load in (
    lambda: load_data("hf:lowcomm-tests/no-such-dataset", **options),
    lambda: load_tokenizer("lowcomm-tests/no-such-tokenizer"),
):
    try:
        load()
    except ValueError as error:
        print(error)
"""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=60)
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout + result.stderr
    dataset_error = "data: cannot load hf dataset 'lowcomm-tests/no-such-dataset' (split 'train'): hub unreachable"
    assert lines[0].startswith(dataset_error)
    assert lines[1].startswith("tokenizer: cannot load 'lowcomm-tests/no-such-tokenizer': hub unreachable")
