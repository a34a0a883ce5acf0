"""Early stops of a ``lowcomm train`` run (``--stop-at-loss``, ``--stop-after-s``).

Worker 0 decides, on its own evaluation and its own clock, and every worker follows it, so that all
stop after the same step.
"""

from __future__ import annotations

from lowcomm.communication.peers import Peers
from lowcomm.training.config import TrainConfig


def stop_reason(config: TrainConfig, peers: Peers, evaluated: bool, eval_loss: float | None,
                elapsed_s: float | None) -> str | None:
    """Why the run stops after this step, as worker 0 says: ``stop_at_loss`` when this step's
    evaluation (``evaluated``, ``eval_loss``: worker 0's) is at most ``config.run.stop_at_loss``,
    ``stop_after_s`` when worker 0's clock ``elapsed_s`` (None: not asked; the trainer passes where
    it expects the clock at its next check) has reached ``config.run.stop_after_s``; else None. A
    collective wherever either may apply (with a clock limit wherever the clock is asked, with a loss
    limit after an evaluation), so every worker must call it at the same points."""
    by_loss = evaluated and config.run.stop_at_loss is not None
    by_clock = elapsed_s is not None and config.run.stop_after_s is not None
    if not (by_loss or by_clock):
        return None
    reason = None
    if by_loss and eval_loss is not None and eval_loss <= config.run.stop_at_loss:
        reason = "stop_at_loss"
    elif by_clock and elapsed_s >= config.run.stop_after_s:
        reason = "stop_after_s"
    return peers.all_gather(reason)[0]
