"""``hf:DIR`` models: built from a local config.json (seeded) or loaded with their weights, offline."""

import json

import pytest
import torch

from lowcomm.models import build_model, model_spec
from lowcomm.models.hf_local import HFCausalLM

TINY_GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 300,
             "bos_token_id": None, "eos_token_id": None}


@pytest.fixture
def config_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_GPT2))
    return tmp_path


def seeded(name, seed, vocab_size=300):
    torch.manual_seed(seed)
    return build_model(name, vocab_size=vocab_size)


def test_a_config_alone_gives_a_seeded_model_in_training_mode_that_maps_tokens_to_logits(config_dir):
    name = f"hf:{config_dir}"
    for spec in (model_spec(name), model_spec(f"hf:{config_dir / 'config.json'}")):
        assert (spec.task, spec.max_positions, spec.vocab_size) == ("lm", 64, 300)
    model = seeded(name, 0)
    assert isinstance(model, HFCausalLM) and model.training and model.max_positions == 64
    assert model(torch.zeros(2, 8, dtype=torch.long)).shape == (2, 8, 300)
    same, other = seeded(f"hf:{config_dir / 'config.json'}", 0), seeded(name, 1)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in same.state_dict().items())
    assert not torch.equal(state["model.transformer.h.0.attn.c_attn.weight"],
                           other.state_dict()["model.transformer.h.0.attn.c_attn.weight"])


def test_a_directory_with_weights_starts_from_them_in_float32_whatever_the_seed(config_dir, tmp_path):
    trained = seeded(f"hf:{config_dir}", 3)
    trained.model.to(torch.bfloat16).save_pretrained(tmp_path / "weights")
    loaded = seeded(f"hf:{tmp_path / 'weights'}", 0, vocab_size=299)  # a smaller tokenizer fits
    assert loaded.training and {p.dtype for p in loaded.parameters()} == {torch.float32}
    for name, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value.float()), name
    with torch.device("meta"):  # as fsdp_problem builds it: the shapes without the weights
        assert next(build_model(f"hf:{tmp_path / 'weights'}", vocab_size=300).parameters()).is_meta


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "absent", "no such directory or config file"),
        (lambda d: d / "empty", "the directory holds no config.json"),
        (lambda d: d / "vit.json", "a 'vit' config is not a causal language model's"),
        (lambda d: d / "untyped.json", "cannot read its config (ValueError: Unrecognized model"),
    ],
)
def test_bad_directories_raise_one_line(make, message, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "vit.json").write_text(json.dumps({"model_type": "vit"}))
    (tmp_path / "untyped.json").write_text(json.dumps({"n_layer": 2}))
    name = f"hf:{make(tmp_path)}"
    for call in (lambda: model_spec(name), lambda: build_model(name, vocab_size=300)):
        with pytest.raises(ValueError, match=r"^hf:") as error:
            call()
        assert message in str(error.value) and "\n" not in str(error.value)


def test_the_datas_vocabulary_must_fit_the_models(config_dir):
    with pytest.raises(ValueError, match="vocab_size: the data's 301 tokens exceed hf:.* vocab_size 300"):
        build_model(f"hf:{config_dir}", vocab_size=301)
