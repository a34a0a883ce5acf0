import io

import pytest
import torch

from lowcomm.data.batches import Batches, held_out_batches
from lowcomm.data.language import TokenWindows

SEQ_LEN = 4


def windows(count: int) -> TokenWindows:
    """``count`` windows of an arange stream: window i's first input is i * SEQ_LEN."""
    return TokenWindows(torch.arange(count * SEQ_LEN + 1, dtype=torch.int32), SEQ_LEN)


def window_ids(batches: Batches, count: int) -> list[int]:
    return [int(i) for _ in range(count) for i in next(batches)[0][:, 0] // SEQ_LEN]


def test_token_windows_give_next_token_targets():
    stream = windows(3)
    assert len(stream) == 3
    inputs, targets = stream[torch.tensor([1, 0])]
    assert inputs.tolist() == [[4, 5, 6, 7], [0, 1, 2, 3]]
    assert targets.tolist() == [[5, 6, 7, 8], [1, 2, 3, 4]]
    assert inputs.dtype == targets.dtype == torch.int64
    assert len(TokenWindows(torch.arange(4), SEQ_LEN)) == 0


def test_ranks_own_disjoint_shards_that_cover_the_data():
    seen = [set(window_ids(Batches(windows(10), batch_size=1, seed=0, rank=r, world_size=3), 4)) for r in range(3)]
    assert seen == [{0, 3, 6, 9}, {1, 4, 7}, {2, 5, 8}]


def test_each_epoch_is_a_permutation_and_batches_run_into_the_next():
    batches = Batches(windows(10), batch_size=3, seed=0, rank=1, world_size=2)  # owns 1, 3, 5, 7, 9
    ids = window_ids(batches, 5)
    assert sorted(ids[:5]) == sorted(ids[5:10]) == [1, 3, 5, 7, 9]
    assert ids[:5] != ids[5:10]
    assert batches.state_dict() == {"epoch": 3, "offset": 0, "shard_size": 5}


def test_same_seed_and_rank_give_the_same_stream_and_another_seed_another():
    def stream(seed):
        return window_ids(Batches(windows(100), batch_size=8, seed=seed, rank=0, world_size=2), 10)

    assert stream(7) == stream(7)
    assert stream(7) != stream(8)


def test_resuming_from_a_saved_state_continues_exactly():
    original = Batches(windows(11), batch_size=4, seed=5, rank=0, world_size=1)
    window_ids(original, 7)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state == {"epoch": 2, "offset": 6, "shard_size": 11}  # 28 = 2 * 11 + 6
    resumed = Batches(windows(11), batch_size=4, seed=5, rank=0, world_size=1)
    resumed.load_state_dict(state)
    assert window_ids(resumed, 20) == window_ids(original, 20)


def test_a_state_from_another_shard_is_rejected():
    state = Batches(windows(11), batch_size=4, seed=5, rank=0, world_size=1).state_dict()
    with pytest.raises(ValueError, match="state: saved for a shard of 11 examples, this one has 6"):
        Batches(windows(11), batch_size=4, seed=5, rank=0, world_size=2).load_state_dict(state)


def test_a_state_from_a_shard_of_another_size_is_continued_at_the_same_share_of_its_epoch():
    """11 examples on 1 worker, 6 taken of epoch 2: on rank 1 of 2 (5 examples), 6 * 5 // 11 = 2 taken."""
    state = {"epoch": 2, "offset": 6, "shard_size": 11}
    continued = Batches(windows(11), batch_size=1, seed=5, rank=1, world_size=2)
    continued.continue_from(state)
    assert continued.state_dict() == {"epoch": 2, "offset": 2, "shard_size": 5}
    assert window_ids(continued, 3) == [int(i) for i in continued.epoch_order(2)[2:5]]
    same = Batches(windows(11), batch_size=1, seed=5, rank=0, world_size=1)
    same.continue_from(state)  # the same size: exactly where it was
    assert same.state_dict() == state


def test_too_little_data_or_a_negative_seed_is_rejected():
    with pytest.raises(ValueError, match="data: 2 training examples cannot feed 3 workers"):
        Batches(windows(2), batch_size=1, seed=0, rank=2, world_size=3)
    with pytest.raises(ValueError, match="seed: must be >= 0, got -1"):
        Batches(windows(2), batch_size=1, seed=-1, rank=0, world_size=1)


def test_held_out_batches_are_the_first_examples_in_order():
    batches = held_out_batches(windows(7), batch_size=3, count=2)
    assert [(inputs[:, 0] // SEQ_LEN).tolist() for inputs, _ in batches] == [[0, 1, 2], [3, 4, 5]]
    batches = held_out_batches(windows(4), batch_size=3, count=2)
    assert [(inputs[:, 0] // SEQ_LEN).tolist() for inputs, _ in batches] == [[0, 1, 2], [3]]
    with pytest.raises(ValueError, match="held-out split is too small"):
        held_out_batches(windows(0), batch_size=3, count=2)
