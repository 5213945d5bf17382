"""Reads the records of an offline W&B run file (``run-ID.wandb``): the LevelDB log format
that wandb writes (32 KiB blocks of checksummed chunks) holding its protobuf ``Record``s; the
tests read back what an offline run logged without uploading it."""

import struct

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768


def records(path):
    """Every Record of the file, in order (checksums not verified)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", data[:8]
    pos, chunks = 7, []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        body = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            chunks = [body]
        elif kind == 2:
            chunks = [body]
            continue
        elif kind == 3:
            chunks.append(body)
            continue
        elif kind == 4:
            chunks.append(body)
        rec = pb.Record()
        rec.ParseFromString(b"".join(chunks))
        yield rec


def items(update) -> dict:
    """A history, summary or config update as {key: JSON text}."""
    return {(i.key or "/".join(i.nested_key)): i.value_json for i in update}


def run_log(path) -> dict:
    """What one offline run file holds: its run id and config, the history rows, the last
    summary values and the artifacts' file names."""
    import json

    out = {"run_id": None, "config": {}, "history": [], "summary": {}, "artifacts": []}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run_id"] = rec.run.run_id
            out["config"].update(items(rec.run.config.update))
        elif kind == "config":
            out["config"].update(items(rec.config.update))
        elif kind == "history":
            out["history"].append({k: json.loads(v) for k, v in items(rec.history.item).items()})
        elif kind == "summary":
            out["summary"].update({k: json.loads(v) for k, v in items(rec.summary.update).items()})
        elif kind == "artifact":
            out["artifacts"] += [e.path for e in rec.artifact.manifest.contents]
    return out
