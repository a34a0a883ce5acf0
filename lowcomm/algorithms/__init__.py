"""One strategy class per algorithm, all with the same API (see :class:`Strategy`)."""

from lowcomm.algorithms.base import Strategy
from lowcomm.algorithms.ddp import DDP
from lowcomm.algorithms.diloco import DiLoCo
from lowcomm.algorithms.local_sgd import LocalSGD
from lowcomm.algorithms.noloco import NoLoCo
from lowcomm.algorithms.palsgd import PALSGD
from lowcomm.algorithms.post_local_sgd import PostLocalSGD
from lowcomm.algorithms.streaming_diloco import StreamingDiLoCo

ALGORITHMS: dict[str, type[Strategy]] = {
    "ddp": DDP,
    "localsgd": LocalSGD,
    "postlocalsgd": PostLocalSGD,
    "diloco": DiLoCo,
    "palsgd": PALSGD,
    "noloco": NoLoCo,
    "streamingdiloco": StreamingDiLoCo,
}

__all__ = ["ALGORITHMS", "DDP", "DiLoCo", "LocalSGD", "NoLoCo", "PALSGD", "PostLocalSGD", "Strategy", "StreamingDiLoCo"]
