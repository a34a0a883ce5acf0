"""Models: a tiny GPT, GPT-Neo (lowcomm's own or Hugging Face's) and a CIFAR ResNet-18.

Language models map ``input_ids [B, T]`` to logits ``[B, T, vocab]`` and expose ``max_positions``;
the image model maps ``images [B, 3, 32, 32]`` to logits ``[B, num_classes]``.
"""

from lowcomm.models.gpt import GPT, GPTConfig
from lowcomm.models.gpt_neo import GPT_NEO_SHAPES, GPTNeoShape, gpt_neo_config, load_hf_weights
from lowcomm.models.registry import MODEL_NAMES, ModelSpec, build_model, model_spec
from lowcomm.models.resnet import ResNet18

__all__ = [
    "GPT",
    "GPT_NEO_SHAPES",
    "MODEL_NAMES",
    "GPTConfig",
    "GPTNeoShape",
    "ModelSpec",
    "ResNet18",
    "build_model",
    "gpt_neo_config",
    "load_hf_weights",
    "model_spec",
]
