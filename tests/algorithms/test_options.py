"""Each algorithm's declared options: they match its constructor, merge along its bases, and check values."""

from __future__ import annotations

import inspect

import pytest

from lowcomm import ALGORITHMS, LocalSGD, PostLocalSGD
from lowcomm.algorithms.options import Option

STRATEGY_ARGUMENTS = {"self", "model", "optimizer", "mesh", "communicator", "max_grad_norm"}


def constructor_keywords(cls: type) -> dict[str, object]:
    """The keyword parameters of ``cls``'s constructor and their defaults, following ``**kwargs``
    into its bases' constructors, without the arguments every strategy takes."""
    keywords: dict[str, object] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        for parameter in parameters:
            if parameter.kind is parameter.KEYWORD_ONLY and parameter.name not in STRATEGY_ARGUMENTS:
                keywords.setdefault(parameter.name, parameter.default)
        if all(parameter.kind is not parameter.VAR_KEYWORD for parameter in parameters):
            break
    return keywords


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_the_declared_options_are_the_constructors_keywords(algo: str) -> None:
    declared = {name: option.default for name, option in ALGORITHMS[algo].options().items()}
    assert declared == constructor_keywords(ALGORITHMS[algo])


def test_a_subclass_declaration_replaces_its_bases() -> None:
    assert LocalSGD.options()["warmup_steps"].default == 0 and LocalSGD.check_option("warmup_steps", 0) == 0
    assert PostLocalSGD.options()["warmup_steps"].default == 32
    with pytest.raises(ValueError, match=r"^warmup_steps: must be an integer >= 1, got 0$"):
        PostLocalSGD.check_option("warmup_steps", 0)
    assert list(PostLocalSGD.options()) == ["sync_interval", "warmup_steps", "compress", "compress_block_size"]


@pytest.mark.parametrize("algo, name, value, message", [
    ("localsgd", "sync_interval", 0, "sync_interval: must be an integer >= 1, got 0"),
    ("localsgd", "sync_interval", True, "sync_interval: must be an integer >= 1, got True"),
    ("localsgd", "compress", "int2", "compress: must be none, bf16, int8, int4 or topk:FRACTION with 0 < FRACTION <= 1, "
                                     "got 'int2'"),
    ("diloco", "outer_lr", float("inf"), "outer_lr: must be a finite number > 0, got inf"),
    ("diloco", "outer_momentum", 1.0, "outer_momentum: must be in [0, 1), got 1.0"),
    ("diloco", "merge_alpha", 1.5, "merge_alpha: must be in [0, 1], got 1.5"),
    ("palsgd", "pseudo_sync_prob", -0.1, "pseudo_sync_prob: must be in [0, 1), got -0.1"),
    ("palsgd", "eta", 0, "eta: must be a finite number > 0, got 0"),
    ("palsgd", "outer_repeats", 0, "outer_repeats: must be an integer >= 1, got 0"),
    ("noloco", "outer_momentum", -0.5, "outer_momentum: must be in [0, 1), got -0.5"),
    ("streamingdiloco", "num_fragments", 0, "num_fragments: must be an integer >= 1, got 0"),
])
def test_a_declared_check_rejects_a_bad_value_with_one_line(algo: str, name: str, value: object, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        ALGORITHMS[algo].check_option(name, value)
    assert str(raised.value) == message
    with pytest.raises(ValueError) as raised:  # the configuration's check, before any worker starts
        options = {option.name: option.default for option in ALGORITHMS[algo].options().values()}
        ALGORITHMS[algo].check_options(1e-3, options | {name: value})
    assert str(raised.value) == message


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_declared_default_meets_its_check(algo: str) -> None:
    options = {name: option.default for name, option in ALGORITHMS[algo].options().items()}
    ALGORITHMS[algo].check_options(1e-3, options)
    assert all(option.checked(option.default) == option.default for option in ALGORITHMS[algo].options().values())


def test_only_palsgd_steps_skip_their_batch() -> None:
    defaults = {algo: {name: o.default for name, o in cls.options().items()} for algo, cls in ALGORITHMS.items()}
    shares = {algo: cls.skipped_batch_share(defaults[algo]) for algo, cls in ALGORITHMS.items()}
    assert shares == {algo: 0.2 if algo == "palsgd" else 0.0 for algo in ALGORITHMS}
    assert ALGORITHMS["palsgd"].skipped_batch_share(defaults["palsgd"] | {"pseudo_sync_prob": 0.5}) == 0.5


def test_only_noloco_gossips() -> None:
    assert {algo: cls.traffic for algo, cls in ALGORITHMS.items()} == {
        algo: "gossip" if algo == "noloco" else "all_reduce" for algo in ALGORITHMS
    }


def test_an_option_without_a_check_takes_any_value() -> None:
    assert Option("outer_device", None).checked("meta") == "meta"
