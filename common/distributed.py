"""Gathering evaluation results across DDP processes, so a table does not depend on the number of devices.

Evaluation under DDP shards every split across the processes. Lightning's test and validation samplers
(``torch.utils.data.DistributedSampler``) pad a split whose length does not divide by the world size with
repeated samples, so ranks see equal batch counts; its predict sampler does not pad. The tensor all-gather of
Lightning needs equal shapes on every rank, which uneven shards do not have, and cannot carry text. So each
rank keeps what it evaluated *keyed by the sample's index in its dataset*; :func:`gather_keyed` collects those
mappings from every rank with ``torch.distributed.all_gather_object`` (any picklable value, any size, gloo or
NCCL) and merges them: a padded repeat has the index of the sample it repeats and falls out of the merge, and
sorting by index restores the one-process order. Outside DDP both functions return their input.

Hand-written on purpose: neither torch nor Lightning offers an object gather that drops sampler padding.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, TypeVar

import torch.distributed as dist

V = TypeVar("V")


def world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` outside DDP). Every rank must call it."""
    n = world_size()
    if n == 1:
        return [obj]
    out: list[Any] = [None] * n
    dist.all_gather_object(out, obj)
    return out


def gather_keyed(local: Mapping[Hashable, V]) -> dict[Hashable, V]:
    """Merge ``{sample key: value}`` mappings of every rank into one, sorted by key; every rank gets it.

    A key seen on several ranks (the sampler's padding repeats a sample) is kept once: the first rank's value.
    Keys must be sortable (sample indices, or ``(template, index)`` tuples).
    """
    merged: dict[Hashable, V] = {}
    for part in gather_objects(dict(local)):
        for key, value in part.items():
            merged.setdefault(key, value)
    return dict(sorted(merged.items()))
