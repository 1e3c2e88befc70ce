"""Read a W&B offline run folder (``wandb/offline-run-*``) without uploading it.

Offline runs keep everything ``wandb sync`` will upload in one ``run-<id>.wandb`` file: a LevelDB-style log of
protobuf ``Record`` messages (run header with name/group/tags, config updates, history rows, summary). Reading
it lets the ablation report link each setting to its W&B run and lets the tests check group, tags and metrics
of real offline runs. The log layout (7-byte file header ``:W&B`` + magic + version, then 32 KiB blocks of
records with a 7-byte ``crc32, length, type`` header; types full/first/middle/last) is the one wandb's own
``datastore`` reader uses.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_RECORD_HEADER = struct.Struct("<IHB")  # crc32, data length, record type
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline W&B run holds: identity, grouping, config, logged metric names and final summary."""

    path: Path
    run_id: str = ""
    name: str = ""
    project: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history_keys: set[str] = field(default_factory=set)
    history_rows: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


def _records(data: bytes) -> list[bytes]:
    """Split a ``.wandb`` log into its record payloads (re-joining records split across blocks)."""
    ident, magic, _ = _FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError("not a W&B run log (bad header)")
    pos, out, pending = _FILE_HEADER.size, [], b""
    while pos + _RECORD_HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER.size:  # block trailer padding
            pos += left
            continue
        _, length, kind = _RECORD_HEADER.unpack_from(data, pos)
        pos += _RECORD_HEADER.size
        chunk = data[pos:pos + length]
        pos += length
        if kind == 0 and length == 0:  # zero padding at the end of a block or file
            continue
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            out.append(pending + chunk)
            pending = b""
    return out


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Parse ``run_dir/run-*.wandb`` (an ``offline-run-*`` folder) into an :class:`OfflineRun`."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    run = OfflineRun(path=run_dir)
    for payload in _records(logs[0].read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.name, run.project, run.group = r.run_id, r.display_name, r.project, r.run_group
            run.tags = list(r.tags)
            run.config.update({i.key: _value(i.value_json) for i in r.config.update})
        elif kind == "config":
            run.config.update({i.key: _value(i.value_json) for i in record.config.update})
        elif kind == "history":
            run.history_rows += 1
            run.history_keys.update(i.key or "/".join(i.nested_key) for i in record.history.item)
        elif kind == "summary":
            run.summary.update({i.key or "/".join(i.nested_key): _value(i.value_json)
                                for i in record.summary.update})
    return run
