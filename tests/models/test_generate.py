import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowcomm.models.generate import continue_tokens

VOCAB = 8


class CountingLM(nn.Module):
    """Logits 10 for (token + 1) mod 8 after each token, 0 for the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return 10.0 * F.one_hot((input_ids + 1) % VOCAB, VOCAB).float() + self.offset


def test_greedy_counts_on_and_stops_at_the_stop_token():
    assert continue_tokens(CountingLM(), [5, 3], 6) == [4, 5, 6, 7, 0, 1]
    assert continue_tokens(CountingLM(), [3], 6, stop_id=6) == [4, 5, 6]


def test_sampling_is_reproducible_with_a_seed_and_follows_the_temperature():
    def sample(seed, temperature):
        generator = torch.Generator().manual_seed(seed)
        return continue_tokens(CountingLM(), [0], 40, temperature=temperature, generator=generator)

    assert sample(1, 1e3) == sample(1, 1e3)
    assert sample(1, 1e3) != sample(2, 1e3)
    assert len(set(sample(1, 1e3))) > 4  # near-uniform draws at a high temperature
    assert sample(1, 0.1) == continue_tokens(CountingLM(), [0], 40)  # near-greedy at a low one


def test_negative_temperature_raises():
    with pytest.raises(ValueError, match="temperature"):
        continue_tokens(CountingLM(), [0], 1, temperature=-1.0)
