import math

import pytest
import torch
import torch.nn.functional as F

from lowcomm.models import GPT, GPTConfig
from tests.models.probes import changed_positions, count_parameters

VOCAB = 32



def test_logits_shape_and_max_positions():
    model = GPT(GPTConfig(vocab_size=VOCAB))
    assert model(torch.zeros(2, 16, dtype=torch.long)).shape == (2, 16, VOCAB)
    assert model.max_positions == 128


def test_parameter_count_with_tied_embeddings():
    model = GPT(GPTConfig(vocab_size=VOCAB))
    assert model.lm_head.weight is model.wte.weight
    # wte 32*64 + wpe 128*64 + ln_f 2*64, and per layer: q/k/v/out 4*(64*64+64), ln_1/ln_2 4*64,
    # c_fc 64*256+256, c_proj 256*64+64  ->  2048 + 8192 + 128 + 2 * 49_984
    assert count_parameters(model) == 110_336


def test_a_token_changes_only_its_own_and_later_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB))
    input_ids = torch.randint(0, VOCAB, (2, 16))
    assert changed_positions(model, input_ids, position=5, vocab_size=VOCAB) == set(range(5, 16))


def test_bad_input_ids_raise():
    model = GPT(GPTConfig(vocab_size=VOCAB))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="129 tokens exceed max_positions=128"):
        model(torch.zeros(1, 129, dtype=torch.long))


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"vocab_size": VOCAB, "n_embd": 66}, "n_embd"),
        ({"vocab_size": VOCAB, "local_layers": (2,)}, "local_layers"),
        ({"vocab_size": VOCAB, "local_layers": (1,)}, "window_size"),
    ],
)
def test_bad_config_raises_naming_the_argument(options, bad):
    with pytest.raises(ValueError, match=bad):
        GPTConfig(**options)


def test_training_steps_fit_a_fixed_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB))
    tokens = torch.randint(0, VOCAB, (4, 17))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # N(0, 0.02) weights give near-uniform predictions: loss ~ ln(vocab) = 3.466
    assert losses[0] == pytest.approx(math.log(VOCAB), abs=0.1)
    assert losses[-1] < 0.5
