"""Bad arguments raise ValueError naming the argument."""

from __future__ import annotations

import torch
from torch import nn

from lowcomm import ALGORITHMS
from tests.distributed import run_workers

CASES = [
    ("localsgd", {"sync_interval": 0}, "sync_interval"),
    ("diloco", {"sync_interval": -3}, "sync_interval"),
    ("diloco", {"warmup_steps": -1}, "warmup_steps"),
    ("palsgd", {"pseudo_sync_prob": 1.0}, "pseudo_sync_prob"),
    ("palsgd", {"pseudo_sync_prob": -0.1}, "pseudo_sync_prob"),
    ("palsgd", {"eta": 0.0}, "eta"),
    ("palsgd", {"eta": -1.0}, "eta"),
    ("palsgd", {"pseudo_sync_prob": 0.1, "eta": 1.0}, "eta"),  # gamma * eta / p = 0.5 * 1 / 0.1 = 5
    ("palsgd", {"outer_repeats": 0}, "outer_repeats"),
    ("postlocalsgd", {"warmup_steps": 0}, "warmup_steps"),
    ("diloco", {"outer_momentum": 1.5}, "outer_momentum"),
    ("diloco", {"outer_lr": 0}, "outer_lr"),
    ("noloco", {}, "communicator"),  # one worker
    ("localsgd", {"max_grad_norm": 0.0}, "max_grad_norm"),
    ("diloco", {"merge_alpha": 0.3}, "merge_alpha"),  # only an overlapped outer step merges
    ("diloco", {"overlap_steps": 1, "merge_alpha": 1.5}, "merge_alpha"),
]


def messages() -> list[str]:
    found = []
    for algo, options, _ in CASES:
        model = nn.Linear(2, 1)
        try:
            ALGORITHMS[algo](model, torch.optim.SGD(model.parameters(), lr=0.5), **options)
            found.append("no error")
        except ValueError as error:
            found.append(str(error))
    for algo in ALGORITHMS:
        try:
            ALGORITHMS[algo](nn.ReLU(), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
            found.append("no error")
        except ValueError as error:
            found.append(str(error))
        model, other = nn.Linear(2, 1), nn.Linear(2, 1)
        try:
            ALGORITHMS[algo](model, torch.optim.SGD(other.parameters(), lr=0.1))
            found.append("no error")
        except ValueError as error:
            found.append(str(error))
    return found


def test_bad_arguments_name_the_argument() -> None:
    found = run_workers(messages, 1)[0]
    for (algo, options, name), message in zip(CASES, found):
        assert message.startswith(name + ":"), (algo, options, message)
    assert "= 5 >= 1" in found[7]  # gamma * eta / p = 0.5 * 1 / 0.1
    rest = found[len(CASES):]
    assert all(m.startswith("model:") for m in rest[0::2]), rest
    assert all(m.startswith("optimizer:") for m in rest[1::2]), rest
