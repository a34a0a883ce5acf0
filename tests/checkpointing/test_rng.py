import io
import random

import numpy as np
import torch

from lowcomm.checkpointing.rng import rng_state, seed_everything, set_rng_state


def draws():
    return random.random(), float(np.random.rand()), torch.rand(2).tolist()


def test_a_saved_state_replays_every_generator_after_a_weights_only_round_trip():
    seed_everything(3)
    draws()
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    expected = draws()
    seed_everything(4)
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert draws() == expected
