import pytest
import torch

from lowcomm.models import (
    GPT,
    GPT_NEO_SHAPES,
    GPTConfig,
    GPTNeoShape,
    build_model,
    gpt_neo_config,
    load_hf_weights,
)
from lowcomm.models.gpt import sliding_window_mask
from lowcomm.models.hf_gpt_neo import build_hf_gpt_neo
from tests.models.probes import changed_positions, count_parameters

VOCAB = 50
# global, local, global, local with a 4-token window, run on 12 tokens so the window bites
TINY = GPTNeoShape(4, hidden_size=32, num_heads=4, intermediate_size=64, window_size=4, max_positions=16)




def test_sliding_window_mask():
    expected = [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    assert sliding_window_mask(5, window=2, device=torch.device("cpu")).tolist() == [
        [bool(allowed) for allowed in row] for row in expected
    ]


def test_gpt_neo_config_alternates_global_and_local_layers():
    config = gpt_neo_config(GPT_NEO_SHAPES["gpt-neo-8m"], vocab_size=VOCAB)
    assert [config.window(layer) for layer in range(8)] == [None, 256] * 4
    assert (config.attention_scale, config.qkv_bias, config.max_positions) == (1.0, False, 300)


@pytest.mark.parametrize(("local_layers", "expected"), [((0,), {2, 3, 4, 5}), ((), set(range(2, 12)))])
def test_local_layer_sees_only_its_window(local_layers, expected):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=VOCAB, n_layer=1, local_layers=local_layers, window_size=4)
    input_ids = torch.randint(0, VOCAB, (2, 12))
    # token 2 reaches queries 2..5 (distance < 4) through a local layer, every later one otherwise
    assert changed_positions(GPT(config), input_ids, position=2, vocab_size=VOCAB) == expected


def test_same_weights_give_the_same_logits_as_transformers():
    torch.manual_seed(0)
    hf_model = build_hf_gpt_neo(TINY, VOCAB)
    with torch.no_grad():  # weights far from N(0, 0.02) so that scaling or window mistakes show
        for parameter in hf_model.parameters():
            parameter.normal_(0.0, 0.3)
    model = GPT(gpt_neo_config(TINY, VOCAB))
    load_hf_weights(model, hf_model.model)
    input_ids = torch.randint(0, VOCAB, (3, 12))
    with torch.no_grad():
        expected = hf_model(input_ids)
        torch.testing.assert_close(model(input_ids), expected, rtol=0.0, atol=1e-5)
    assert expected.abs().max() > 1.0
    assert count_parameters(model) == count_parameters(hf_model)


def test_load_hf_weights_skips_old_mask_buffers_and_rejects_other_shapes():
    hf_state = build_hf_gpt_neo(TINY, VOCAB).model.state_dict()
    hf_state["transformer.h.0.attn.attention.bias"] = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    hf_state["transformer.h.0.attn.attention.masked_bias"] = torch.tensor(-1e9)
    load_hf_weights(GPT(gpt_neo_config(TINY, VOCAB)), hf_state)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_hf_weights(GPT(gpt_neo_config(TINY, VOCAB + 1)), hf_state)


@pytest.mark.parametrize("implementation", ["lowcomm", "hf"])
def test_gpt_neo_8m_has_8_054_656_parameters(implementation):
    # wte 50257*128 + wpe 300*128 + ln_f 256, and per layer: q/k/v 3*128*128, out 128*128+128,
    # ln_1/ln_2 512, c_fc 128*512+512, c_proj 512*128+128  ->  6_471_552 + 8 * 197_888
    model = build_model("gpt-neo-8m", vocab_size=50257, implementation=implementation)
    assert count_parameters(model) == 8_054_656


@pytest.mark.parametrize("implementation", ["lowcomm", "hf"])
def test_gpt_neo_125m_parameter_count(implementation):
    # wte 50257*768 + wpe 300*768 + ln_f 1536 + 12 layers * 7_085_568; 125_198_592 with 2048 positions
    with torch.device("meta"):
        model = build_model("gpt-neo-125m", vocab_size=50257, implementation=implementation)
    assert count_parameters(model) == 123_856_128


def test_odd_layer_count_raises():
    with pytest.raises(ValueError, match="num_layers"):
        GPTNeoShape(3, 32, 4, 64, window_size=4, max_positions=16)
