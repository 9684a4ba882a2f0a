"""The trace store: safetensors shards plus a manifest, written atomically, resumable.

    >>> store = TraceStore("runs/default/traces", config={"teacher": "smollm2"})
    >>> store.done()                     # ids already traced: a re-run skips them
    {'gsm8k/train/0', 'gsm8k/train/1'}
    >>> store.add(trace); store.flush()  # shard-00001.safetensors appears whole, or not at all
    >>> store.get("gsm8k/train/0").attn.shape
    (30, 9, 58, 40)

A shard holds `shard_size` traces; its tensors are named "<k>/<array>" and its
safetensors metadata carries the schema and each trace's id, texts and
layer/head lists. A shard is written to a temporary name, fsynced, then renamed
into place, and only then listed in manifest.json (itself replaced
atomically). A kill at any moment therefore loses at most the shard being
written; leftovers under temporary names are swept on the next open.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import BadInput, MyceliumError
from .trace import SCHEMA, Trace

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"


def _fsync(fh) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    """Write data to path so readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            _fsync(fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StoreError(MyceliumError):
    pass


class TraceStore:
    def __init__(self, root: str | os.PathLike, config: dict | None = None, shard_size: int = 16):
        self.root = Path(root)
        self.shard_size = shard_size
        self.pending: list[Trace] = []
        path = self.root / MANIFEST
        if config is None and not path.exists():
            raise StoreError(f"no traces in {self.root}: run `mycelium trace` first")
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(TMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)
        if path.exists():
            try:
                self.manifest = json.loads(path.read_text())
            except json.JSONDecodeError:
                raise StoreError(f"{path}: manifest is not valid JSON") from None
            if self.manifest.get("schema") != SCHEMA:
                raise StoreError(f"{path}: not a Mycelium trace manifest (schema {self.manifest.get('schema')!r}, "
                                 f"expected {SCHEMA!r})")
            if config is not None and self.manifest["config_key"] != config_key(config):
                raise StoreError(f"{self.root} holds traces made with another configuration; "
                                 "use another --run folder or remove this one")
        else:
            self.manifest = {"schema": SCHEMA, "config": config, "config_key": config_key(config), "shards": [],
                             "stats": {}}

    # -- writing -------------------------------------------------------------
    def done(self) -> set[str]:
        return {i for shard in self.manifest["shards"] for i in shard["ids"]}

    def add(self, trace: Trace) -> None:
        self.pending.append(trace)
        if len(self.pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        from safetensors.numpy import save

        tensors, metas = {}, []
        for k, t in enumerate(self.pending):
            for name in Trace.ARRAYS:
                tensors[f"{k}/{name}"] = np.ascontiguousarray(getattr(t, name))
            metas.append({"id": t.id, "question": t.question, "solution": t.solution, "layers": t.layers,
                          "heads": t.heads, "meta": t.meta})
        blob = save(tensors, metadata={"schema": SCHEMA, "traces": json.dumps(metas, ensure_ascii=False)})
        name = f"shard-{len(self.manifest['shards']):05d}.safetensors"
        atomic_write(self.root / name, blob)
        self.manifest["shards"].append({"file": name, "ids": [t.id for t in self.pending], "bytes": len(blob)})
        self.save_manifest()
        self.pending = []

    def save_manifest(self) -> None:
        atomic_write(self.root / MANIFEST, json.dumps(self.manifest, indent=1, ensure_ascii=False).encode())

    # -- reading -------------------------------------------------------------
    def read_shard(self, name: str) -> list[Trace]:
        from safetensors import safe_open

        path = self.root / name
        if not path.is_file():
            raise StoreError(f"{path}: shard listed in the manifest is missing")
        try:
            with safe_open(str(path), framework="numpy") as f:
                header = f.metadata() or {}
                if header.get("schema") != SCHEMA:
                    raise StoreError(f"{path}: not a Mycelium trace shard (schema {header.get('schema')!r})")
                metas = json.loads(header["traces"])
                out = []
                for k, m in enumerate(metas):
                    arrays = {a: f.get_tensor(f"{k}/{a}") for a in Trace.ARRAYS}
                    out.append(Trace(id=m["id"], question=m["question"], solution=m["solution"], layers=m["layers"],
                                     heads=m["heads"], meta=m.get("meta", {}), **arrays))
                return out
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoding failure means a damaged file
            raise StoreError(f"{path}: corrupt trace shard ({e.__class__.__name__}: {str(e)[:120]})") from None

    def __iter__(self) -> Iterator[Trace]:
        for shard in self.manifest["shards"]:
            yield from self.read_shard(shard["file"])

    def __len__(self) -> int:
        return len(self.done())

    def get(self, problem_id: str) -> Trace:
        for shard in self.manifest["shards"]:
            if problem_id in shard["ids"]:
                return next(t for t in self.read_shard(shard["file"]) if t.id == problem_id)
        raise BadInput(f"no trace for {problem_id!r} in {self.root}")
