"""lowcomm's language models converted to ``transformers`` ones give the same logits."""

import pytest
import torch

from lowcomm.models import GPTConfig, build_model, gpt_neo_config, GPT_NEO_SHAPES
from lowcomm.models.hf_export import gpt2_config, to_hf_model

VOCAB = 300


def far_from_init(model: torch.nn.Module) -> torch.nn.Module:
    """Weights far from N(0, 0.02), so that a transposed, swapped or unscaled weight shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model.eval()


@pytest.mark.parametrize(("name", "implementation", "architecture", "tokens"), [
    ("gpt-tiny", "lowcomm", "GPT2LMHeadModel", 128),
    ("gpt-neo-8m", "lowcomm", "GPTNeoForCausalLM", 300),  # past the 256-token window of the local layers
    ("gpt-neo-8m", "hf", "GPTNeoForCausalLM", 300),
])
def test_the_hf_model_gives_lowcomms_logits(name, implementation, architecture, tokens):
    model = far_from_init(build_model(name, vocab_size=VOCAB, implementation=implementation))
    hf_model = to_hf_model(name, model, end_of_text_id=0)
    assert type(hf_model).__name__ == architecture
    assert (hf_model.config.bos_token_id, hf_model.config.eos_token_id) == (0, 0)
    input_ids = torch.randint(0, VOCAB, (1, tokens))
    with torch.no_grad():
        expected = model(input_ids)
        torch.testing.assert_close(hf_model(input_ids=input_ids).logits, expected, rtol=0.0, atol=1e-5)
    assert expected.abs().max() > 1.0
    assert sum(p.numel() for p in hf_model.parameters()) == sum(p.numel() for p in model.parameters())


def test_a_gpt_that_no_hf_architecture_matches_is_refused():
    assert gpt2_config(GPTConfig(vocab_size=VOCAB), 0).n_inner == 256
    with pytest.raises(ValueError, match="no Hugging Face architecture matches"):
        gpt2_config(gpt_neo_config(GPT_NEO_SHAPES["gpt-neo-8m"], VOCAB), 0)


def test_an_image_model_is_refused():
    with pytest.raises(ValueError, match="not a language model"):
        to_hf_model("resnet18-cifar", build_model("resnet18-cifar"))
