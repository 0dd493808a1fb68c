"""``tf.train.Example`` bytes for whole columns of coded raw values, each payload byte copied about once.

Ingestion keeps every categorical value as a dense *code* into a per-table dictionary of raw values, so
the wire bytes of a value need to be built once per distinct value, not once per row (``Dictionary``):

* a scalar string or int64 feature's whole map entry (``key``, lengths, value) depends on the value only:
  ``Dictionary.entries(name)`` holds it per code and a row takes it with one ``pc.take``;
* a list (behaviour sequence) is the rows' elements gathered from the dictionary (``pc.take``) and joined
  per row (``pc.binary_join``), behind a header computed from the body lengths alone;
* plain numeric scalars (label, scenario, numeric features, extras) are written column by column into a
  ``[rows, width]`` byte matrix (``RowBytes``) that starts with the ``Example`` header;
* one ``binary_join_element_wise`` over these few pieces gives the serialised rows.

The format is the one documented in ``tfmsr/data/wire.py``; the tests parse the bytes with protobuf.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tfmsr.data import wire

_TAG = pa.scalar(b"\x0a", pa.binary())


def binary(buf: np.ndarray, off: np.ndarray) -> pa.Array:
    """Segments (uint8 buffer, int64 offsets) as a pyarrow BinaryArray (no copy of the bytes)."""
    if off[-1] - off[0] >= 2 ** 31:
        raise ValueError("encode: more than 2 GiB in one column chunk; encode fewer rows at a time")
    off32 = (off - off[0]).astype(np.int32)
    data = np.ascontiguousarray(buf[off[0]:off[-1]])
    return pa.Array.from_buffers(pa.binary(), len(off) - 1, [None, pa.py_buffer(off32), pa.py_buffer(data)])


def lengths(arr: pa.Array) -> np.ndarray:
    """Byte length of each element of a BinaryArray (int64)."""
    off = np.frombuffer(arr.buffers()[1], np.int32, len(arr) + 1, offset=arr.offset * 4)
    return np.diff(off).astype(np.int64)


def varint_length(v: np.ndarray) -> np.ndarray:
    u = np.asarray(v, np.int64).view(np.uint64)
    nb = np.ones(u.shape, np.int64)
    for k in range(1, 10):
        big = u >= np.uint64(1 << (7 * k))
        if not big.any():
            break
        nb += big
    return nb


class RowBytes:
    """Per-row byte strings assembled column by column (constants, varints, fixed-width byte blocks) in a
    ``[n, width]`` matrix; ``lengths()`` is known before ``build()``."""

    def __init__(self, n: int):
        self.n, self.ops = n, []

    def const(self, b: bytes) -> "RowBytes":
        self.ops.append(("c", np.frombuffer(b, np.uint8), len(b)))
        return self

    def varint(self, values) -> "RowBytes":
        v = np.asarray(values, np.int64)
        self.ops.append(("v", v, varint_length(v)))
        return self

    def fixed(self, block: np.ndarray) -> "RowBytes":
        self.ops.append(("m", block, block.shape[1]))
        return self

    def lengths(self) -> np.ndarray:
        out = np.zeros(self.n, np.int64)
        for _, _, w in self.ops:
            out += w
        return out

    def build(self) -> pa.Array:
        width = sum(int(np.max(w, initial=0)) if isinstance(w, np.ndarray) else w for _, _, w in self.ops)
        mat = np.zeros((self.n, width), np.uint8)
        rows = np.arange(self.n)
        pos = 0  # a scalar while every row has the same layout so far, else an [n] array
        for kind, data, w in self.ops:
            if kind == "v":
                if np.isscalar(pos) and len(w) and not (w == w[0]).all():
                    pos = np.full(self.n, pos, np.int64)
                u = data.view(np.uint64)
                for k in range(int(np.max(w, initial=0))):
                    byte = ((u >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
                    byte |= (w > k + 1).astype(np.uint8) << 7
                    if np.isscalar(pos):
                        mat[:, pos + k] = byte
                    else:
                        m = w > k
                        mat[rows[m], pos[m] + k] = byte[m]
                pos = pos + (int(w[0]) if np.isscalar(pos) and len(w) else 0 if np.isscalar(pos) else w)
            elif np.isscalar(pos):
                mat[:, pos:pos + w] = data
                pos += w
            else:
                mat[rows[:, None], pos[:, None] + np.arange(w)] = data
                pos = pos + w
        if np.isscalar(pos):
            return binary(mat.ravel(), np.arange(self.n + 1, dtype=np.int64) * pos)
        return binary(mat[np.arange(width)[None, :] < pos[:, None]], wire._offsets(pos))


def _entry_header(rb: RowBytes, name: str, tag: int, body_len: np.ndarray, packed: bool) -> np.ndarray:
    """Append a map entry's header for bodies of ``body_len`` bytes to ``rb``; returns the entry lengths."""
    key = name.encode()
    len_l = body_len + (1 + varint_length(body_len) if packed else 0)
    len_f = 1 + varint_length(len_l) + len_l
    key_part = bytes([0x0A]) + bytes(wire.varints(np.array([len(key)]))[0]) + key + bytes([0x12])
    len_e = len(key_part) + varint_length(len_f) + len_f
    rb.const(b"\x0a").varint(len_e).const(key_part).varint(len_f).const(bytes([tag])).varint(len_l)
    if packed:
        rb.const(b"\x0a").varint(body_len)
    return 1 + varint_length(len_e) + len_e


class Dictionary:
    """The wire elements of one code space's raw values: ``0x0A len bytes`` per string, or the varint of
    each int64; the last element is the missing value ('' or 0), taken for code -1."""

    def __init__(self, values, dtype: str):
        self.dtype, self.packed = dtype, dtype == "int64"
        self.tag = wire.INT64_LIST if self.packed else wire.BYTES_LIST
        if self.packed:
            v = np.append(np.asarray(values, np.int64), 0)
            buf, off = wire.varints(v)
            self.elements = binary(buf, off)
        else:
            raw = pa.array(list(values) + [b""], pa.binary()) if not isinstance(values, pa.Array) else \
                pa.concat_arrays([values.cast(pa.binary()), pa.array([b""], pa.binary())])
            rb = RowBytes(len(raw)).const(b"\x0a").varint(lengths(raw))
            self.elements = pc.binary_join_element_wise(rb.build(), raw, b"")
        self.element_length = lengths(self.elements)
        self._entries: Dict[str, Tuple[pa.Array, np.ndarray]] = {}

    def __len__(self):
        return len(self.elements) - 1

    def entries(self, name: str) -> Tuple[pa.Array, np.ndarray]:
        """(whole map entry of a scalar feature ``name`` per code, its length)."""
        if name not in self._entries:
            rb = RowBytes(len(self.elements))
            _entry_header(rb, name, self.tag, self.element_length, self.packed)
            arr = pc.binary_join_element_wise(rb.build(), self.elements, b"")
            self._entries[name] = (arr, lengths(arr))
        return self._entries[name]

    def take(self, codes: np.ndarray) -> pa.Array:
        idx = np.where(codes < 0, len(self.elements) - 1, codes).astype(np.int64)
        return pc.take(self.elements, pa.array(idx))


def _index(codes: np.ndarray, d: Dictionary) -> pa.Array:
    return pa.array(np.where(codes < 0, len(d.elements) - 1, codes).astype(np.int64))


def _list_body(codes: np.ndarray, d: Dictionary) -> pa.Array:
    """Rows of ``codes`` [n, L] (entries < 0 dropped) joined from the dictionary's elements."""
    keep = codes >= 0
    items = pc.take(d.elements, pa.array(codes[keep].astype(np.int64)))
    offs = pa.array(wire._offsets(keep.sum(axis=1)).astype(np.int32))
    return pc.binary_join(pa.ListArray.from_arrays(offs, items), b"")


def examples(n: int, numeric: Sequence[Tuple[str, str, np.ndarray]],
             coded: Sequence[Tuple[str, np.ndarray, Dictionary]],
             lists: Sequence[Tuple[str, np.ndarray, Dictionary]]) -> pa.Array:
    """Serialised ``Example`` rows: ``numeric`` (name, 'int'|'float', [n]), ``coded`` scalars (name, codes [n],
    Dictionary) and ``lists`` (name, codes [n, L] with -1 padding, Dictionary)."""
    head = RowBytes(n)
    total = np.zeros(n, np.int64)
    for name, kind, values in numeric:
        if kind == "int":
            v = np.asarray(values, np.int64)
            total += _entry_header(head, name, wire.INT64_LIST, varint_length(v), True)
            head.varint(v)
        else:
            total += _entry_header(head, name, wire.FLOAT_LIST, np.full(n, 4, np.int64), True)
            head.fixed(np.ascontiguousarray(np.asarray(values, "<f4")).view(np.uint8).reshape(n, 4))
    pieces: List[pa.Array] = []
    for name, codes, d in coded:
        arr, ln = d.entries(name)
        idx = _index(codes, d)
        pieces.append(pc.take(arr, idx))
        total += ln[idx.to_numpy()]
    for name, codes, d in lists:
        body = _list_body(codes, d)
        rb = RowBytes(n)
        total += _entry_header(rb, name, d.tag, lengths(body), d.packed)
        pieces += [rb.build(), body]
    top = RowBytes(n).const(b"\x0a").varint(total)
    top.ops += head.ops
    return pc.binary_join_element_wise(top.build(), *pieces, b"")


def split_records(records: pa.Array) -> List[bytes]:
    """One ``bytes`` object per serialised row (what ``TFRecordWriter.write`` takes)."""
    off = np.frombuffer(records.buffers()[1], np.int32, len(records) + 1, offset=records.offset * 4).tolist()
    data = records.buffers()[2].to_pybytes()
    return [data[a:b] for a, b in zip(off[:-1], off[1:])]
