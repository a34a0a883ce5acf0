"""Each algorithm's declared options: they merge along its bases, fill in the constructor's defaults,
check values, and give the docstring and the options reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowcomm import ALGORITHMS, DiLoCo, LocalSGD, PALSGD, PostLocalSGD
from lowcomm.algorithms.options import Option, integer
from lowcomm.algorithms.reference import REFERENCE, options_reference
from tests.distributed import run_workers


def test_a_subclass_declaration_replaces_its_bases() -> None:
    assert LocalSGD.options()["warmup_steps"].default == 0 and LocalSGD.resolve_options({})["warmup_steps"] == 0
    assert PostLocalSGD.options()["warmup_steps"].default == 32
    with pytest.raises(ValueError, match=r"^warmup_steps: Input should be greater than or equal to 1 \(got 0\)$"):
        PostLocalSGD.resolve_options({"warmup_steps": 0})
    assert list(PostLocalSGD.options()) == ["sync_interval", "warmup_steps", "compress", "compress_block_size",
                                          "local_steps"]


@pytest.mark.parametrize("algo, name, value, message", [
    ("localsgd", "sync_interval", 0, "sync_interval: Input should be greater than or equal to 1 (got 0)"),
    ("localsgd", "sync_interval", True, "sync_interval: Input should be a number, not a boolean"),
    ("localsgd", "compress", "int2", "compress: must be none, bf16, int8, int4 or topk:FRACTION with 0 < FRACTION <= 1, "
                                     "got 'int2'"),
    ("diloco", "outer_lr", float("inf"), "outer_lr: Input should be a finite number"),
    ("diloco", "outer_momentum", 1.0, "outer_momentum: Input should be less than 1 (got 1.0)"),
    ("diloco", "merge_alpha", 1.5, "merge_alpha: Input should be less than or equal to 1 (got 1.5)"),
    ("diloco", "outer_device", "cuda", "outer_device: Input should be 'cpu' (got 'cuda')"),
    ("palsgd", "pseudo_sync_prob", -0.1, "pseudo_sync_prob: Input should be greater than or equal to 0 (got -0.1)"),
    ("palsgd", "eta", 0, "eta: Input should be greater than 0 (got 0)"),
    ("palsgd", "outer_repeats", 0, "outer_repeats: Input should be greater than or equal to 1 (got 0)"),
    ("noloco", "outer_momentum", -0.5, "outer_momentum: Input should be greater than or equal to 0 (got -0.5)"),
    ("streamingdiloco", "num_fragments", 0, "num_fragments: Input should be greater than or equal to 1 (got 0)"),
    ("streamingdiloco", "fragment_pattern", "random", "fragment_pattern: Input should be 'sequential' or 'strided' "
                                                      "(got 'random')"),
])
def test_a_declared_check_rejects_a_bad_value_with_one_line(algo: str, name: str, value: object, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        ALGORITHMS[algo].resolve_options({name: value})
    assert str(raised.value) == message


def test_the_constructor_takes_the_declared_keywords_with_their_defaults() -> None:
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError) as raised:
        DiLoCo(model, torch.optim.SGD(model.parameters(), lr=0.1), eta=1.0)
    assert str(raised.value) == ("DiLoCo: unknown option 'eta'; it takes sync_interval, warmup_steps, outer_lr, "
                                 "outer_momentum, outer_optimizer, outer_device, overlap_steps, merge_alpha, compress, "
                                 "compress_block_size, diagnostics, local_steps")
    assert PALSGD.resolve_options({"outer_lr": 1}) == {name: option.default for name, option in PALSGD.options().items()
                                                       } | {"outer_lr": 1.0}


def build(algo: str, options: dict) -> dict:
    model = nn.Linear(2, 1)
    strategy = ALGORITHMS[algo](model, torch.optim.SGD(model.parameters(), lr=0.01), **options)
    return {"values": strategy.option_values, "sync_interval": getattr(strategy, "sync_interval", None)}


def test_a_library_call_gets_the_given_options_and_the_declared_defaults() -> None:
    built = run_workers(build, 1, "diloco", {"sync_interval": 8, "outer_lr": 0.5})[0]
    assert built["sync_interval"] == 8
    assert built["values"] == {name: option.default for name, option in DiLoCo.options().items()} | {
        "sync_interval": 8, "outer_lr": 0.5}


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_declared_default_meets_its_check(algo: str) -> None:
    options = ALGORITHMS[algo].resolve_options({}, [1e-3])
    assert options == {name: option.default for name, option in ALGORITHMS[algo].options().items()}


def test_only_palsgd_steps_skip_their_batch() -> None:
    defaults = {algo: {name: o.default for name, o in cls.options().items()} for algo, cls in ALGORITHMS.items()}
    shares = {algo: cls.skipped_batch_share(defaults[algo]) for algo, cls in ALGORITHMS.items()}
    assert shares == {algo: 0.2 if algo == "palsgd" else 0.0 for algo in ALGORITHMS}
    assert ALGORITHMS["palsgd"].skipped_batch_share(defaults["palsgd"] | {"pseudo_sync_prob": 0.5}) == 0.5


def test_only_noloco_gossips() -> None:
    assert {algo: cls.traffic for algo, cls in ALGORITHMS.items()} == {
        algo: "gossip" if algo == "noloco" else "all_reduce" for algo in ALGORITHMS
    }


def test_an_option_without_a_type_takes_any_value() -> None:
    assert Option("outer_optimizer", None, "a factory").checked("anything") == "anything"
    assert Option("count", 1, "a count", integer(ge=1)).checked("3") == 3  # as a flag gives it


def test_each_class_docstring_states_its_options() -> None:
    for cls in ALGORITHMS.values():
        for name, option in cls.options().items():
            assert f"    {name}: {option.describe()}" in cls.__doc__


def test_the_options_reference_is_current() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == options_reference(), (
        "docs/options.md is stale: run python -m lowcomm.algorithms.reference"
    )
