import sys

import pytest
import torch

from lowcomm.models import GPT, MODEL_NAMES, ModelSpec, ResNet18, build_model, model_spec
from lowcomm.models.hf_local import HFCausalLM


def test_model_names_and_specs():
    assert MODEL_NAMES == ("gpt-tiny", "gpt-neo-8m", "gpt-neo-125m", "resnet18-cifar")
    assert [model_spec(name) for name in MODEL_NAMES] == [
        ModelSpec("gpt-tiny", "lm", 128),
        ModelSpec("gpt-neo-8m", "lm", 300),
        ModelSpec("gpt-neo-125m", "lm", 300),
        ModelSpec("resnet18-cifar", "image", None),
    ]


@pytest.mark.parametrize(
    ("name", "implementation", "kind"),
    [("gpt-tiny", "lowcomm", GPT), ("gpt-neo-8m", "lowcomm", GPT), ("gpt-neo-8m", "hf", HFCausalLM)],
)
def test_language_models_map_tokens_to_logits(name, implementation, kind):
    model = build_model(name, vocab_size=100, implementation=implementation)
    assert isinstance(model, kind)
    assert model.max_positions == model_spec(name).max_positions
    logits = model(torch.zeros(2, 8, dtype=torch.long))
    assert type(logits) is torch.Tensor
    assert logits.shape == (2, 8, 100)


def test_gpt_neo_125m_builds_abstractly():
    with torch.device("meta"):
        model = build_model("gpt-neo-125m", vocab_size=100)
    assert (model.config.n_layer, model.config.n_embd, model.max_positions) == (12, 768, 300)


def test_image_model():
    model = build_model("resnet18-cifar", num_classes=7)
    assert isinstance(model, ResNet18)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize(
    ("name", "options", "bad"),
    [
        ("gpt-2", {}, "'gpt-2'"),
        ("gpt-tiny", {}, "vocab_size"),
        ("gpt-tiny", {"vocab_size": 100, "implementation": "hf"}, "implementation"),
        ("gpt-neo-8m", {"vocab_size": 100, "implementation": "jax"}, "implementation"),
        ("resnet18-cifar", {"vocab_size": 100}, "vocab_size"),
        ("resnet18-cifar", {"implementation": "hf"}, "implementation"),
    ],
)
def test_bad_arguments_raise_naming_them(name, options, bad):
    with pytest.raises(ValueError, match=bad):
        build_model(name, **options)


def test_unknown_spec_names_the_model():
    with pytest.raises(ValueError, match="unknown model 'gpt-2'"):
        model_spec("gpt-2")


def test_hf_implementation_without_transformers_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match=r"pip install 'lowcomm\[hf\]'"):
        build_model("gpt-neo-8m", vocab_size=100, implementation="hf")
