"""``tf.train.Example`` bytes for whole columns of coded raw values, each payload byte copied about once.

Ingestion keeps every categorical value as a dense *code* into a per-table dictionary of raw values, so
the wire bytes of a value need to be built once per distinct value, not once per row (``Dictionary``):

* a scalar string or int64 feature's whole map entry (``key``, lengths, value) depends on the value only:
  ``Dictionary.entries(name)`` holds it per code and a row takes it with one ``pc.take``;
* a list (behaviour sequence) is its rows' elements gathered from the dictionary in one ``pc.take``; the
  gathered bytes are already the rows' bodies back to back, so each row is a run of them (no copy),
  behind a header computed from the body lengths alone;
* plain numeric scalars (label, scenario, numeric features, extras) and the headers are written column by
  column into small ``[rows, width]`` byte matrices (``RowBytes``);
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
    """Bytes of each int64's varint (negative: 10)."""
    v = np.asarray(v, np.int64)
    if v.size and v.min() >= 0 and v.max() < 128:
        return np.ones(v.shape, np.int64)
    u = v.view(np.uint64)
    nb = np.ones(u.shape, np.int64)
    for k in range(1, 10):
        big = u >= np.uint64(1 << (7 * k))
        if not big.any():
            break
        nb += big
    return nb


def _uniform(a: np.ndarray):
    """The single value of ``a`` when all entries are equal, else None."""
    return int(a[0]) if len(a) and (a == a[0]).all() else None


class RowBytes:
    """Per-row byte strings assembled block by block in a ``[n, width]`` matrix: each piece (a constant,
    varints, a fixed-width block) owns the columns of its widest row; a row's unused bytes (short varints)
    are masked out in one compaction at the end. ``lengths()`` is known before ``build()``."""

    def __init__(self, n: int):
        self.n, self.ops = n, []

    def const(self, b: bytes) -> "RowBytes":
        if self.ops and self.ops[-1][0] == "c":  # consecutive constants are one block
            b = self.ops.pop()[1].tobytes() + b
        self.ops.append(("c", np.frombuffer(b, np.uint8), None, len(b)))
        return self

    def varint(self, values, nb: np.ndarray = None) -> "RowBytes":
        v = np.asarray(values, np.int64)
        nb = varint_length(v) if nb is None else nb
        width = int(nb.max(initial=1))
        self.ops.append(("v", v, None if (nb == width).all() else nb, width))
        return self

    def fixed(self, block: np.ndarray) -> "RowBytes":
        self.ops.append(("m", block, None, block.shape[1]))
        return self

    def lengths(self) -> np.ndarray:
        out = np.zeros(self.n, np.int64)
        for _, _, w, width in self.ops:
            out += width if w is None else w
        return out

    def build(self) -> pa.Array:
        width = sum(op[3] for op in self.ops)
        mat = np.zeros((self.n, width), np.uint8)
        mask = np.ones((self.n, width), bool) if any(op[2] is not None for op in self.ops) else None
        col = 0
        for kind, data, w, wd in self.ops:
            if kind == "v":
                u = data.view(np.uint64)
                nb = varint_length(data) if w is None else w
                for k in range(wd):
                    byte = ((u >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
                    mat[:, col + k] = byte | ((nb > k + 1).astype(np.uint8) << 7)
                    if w is not None:
                        mask[:, col + k] = w > k
            else:
                mat[:, col:col + wd] = data
            col += wd
        if mask is None:
            return binary(mat.ravel(), np.arange(self.n + 1, dtype=np.int64) * width)
        return binary(mat[mask], wire._offsets(self.lengths()))


def _entry_header(rb: RowBytes, name: str, tag: int, body_len: np.ndarray, packed: bool) -> np.ndarray:
    """Append a map entry's header for bodies of ``body_len`` bytes to ``rb``; returns the entry lengths.
    Bodies of one length (floats, small ints) make the whole header one constant."""
    key = name.encode()
    key_part = bytes([0x0A]) + _varint_bytes(len(key)) + key + bytes([0x12])
    same = _uniform(body_len)
    if same is not None:
        lens = _lengths(len(key_part), np.array([same]), packed)
        hdr = b"\x0a" + _varint_bytes(lens[2][0]) + key_part + _varint_bytes(lens[1][0]) + bytes([tag]) + \
            _varint_bytes(lens[0][0]) + ((b"\x0a" + _varint_bytes(same)) if packed else b"")
        rb.const(hdr)
        return np.full(len(body_len), len(hdr) + same, np.int64)
    len_l, len_f, len_e, nbs = _lengths(len(key_part), body_len, packed)
    rb.const(b"\x0a").varint(len_e, nbs[2]).const(key_part).varint(len_f, nbs[1]).const(bytes([tag]))
    rb.varint(len_l, nbs[0])
    if packed:
        rb.const(b"\x0a").varint(body_len, nbs[3])
    return 1 + nbs[2] + len_e


def _lengths(key_part: int, body_len: np.ndarray, packed: bool):
    """(len of the list, of the Feature, of the map entry, their varint lengths + the body's)."""
    nb_b = varint_length(body_len)
    len_l = body_len + (1 + nb_b if packed else 0)
    nb_l = varint_length(len_l)
    len_f = 1 + nb_l + len_l
    nb_f = varint_length(len_f)
    len_e = key_part + nb_f + len_f
    return len_l, len_f, len_e, (nb_l, nb_f, varint_length(len_e), nb_b)


def _varint_bytes(n: int) -> bytes:
    return wire.varints(np.array([int(n)]))[0].tobytes()


class Dictionary:
    """The wire elements of one code space's raw values: ``0x0A len bytes`` per string, or the varint of
    each int64; the last element is the missing value ('' or 0), taken for code -1."""

    def __init__(self, values, dtype: str):
        self.dtype, self.packed = dtype, dtype == "int64"
        self.tag = wire.INT64_LIST if self.packed else wire.BYTES_LIST
        self.values = None  # the raw int64 values, missing (0) last, of an int64 space (the packed layout's lists)
        if self.packed:
            v = self.values = np.append(np.asarray(values, np.int64), 0)
            buf, off = wire.varints(v)
            self.elements = binary(buf, off)
        else:
            raw = pa.array(list(values) + [b""], pa.binary()) if not isinstance(values, pa.Array) else \
                pa.concat_arrays([values.cast(pa.binary()), pa.array([b""], pa.binary())])
            rb = RowBytes(len(raw)).const(b"\x0a").varint(lengths(raw))
            self.elements = pc.binary_join_element_wise(rb.build(), raw, b"")
        self.element_length = lengths(self.elements)
        self._entries: Dict[str, Tuple[pa.Array, np.ndarray]] = {}
        self._padded = None

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

    def padded(self) -> np.ndarray:
        """The elements as a zero-padded ``[codes + 1, max length]`` byte matrix."""
        if self._padded is None:
            self._padded = _padded(self.elements, self.element_length)
        return self._padded

    def fixed_width(self) -> int:
        """The common byte length of every element, or 0 when they differ."""
        ln = self.element_length
        return int(ln[0]) if len(ln) and (ln == ln[0]).all() else 0



def _padded(arr: pa.Array, ln: np.ndarray) -> np.ndarray:
    """A BinaryArray as a zero-padded ``[len, max length]`` uint8 matrix."""
    off = np.frombuffer(arr.buffers()[1], np.int32, len(arr) + 1, offset=arr.offset * 4).astype(np.int64)
    data = np.frombuffer(arr.buffers()[2], np.uint8)
    width = int(ln.max(initial=0))
    out = np.zeros((len(arr), width), np.uint8)
    cols = np.arange(width)[None, :]
    keep = cols < ln[:, None]
    out[keep] = data[(off[:-1, None] + cols)[keep]]
    return out


def _regroup(items: pa.Array, row_lengths: np.ndarray) -> pa.Array:
    """Consecutive runs of ``items`` (``row_lengths`` elements per row) as one BinaryArray row each, sharing
    ``items``' bytes (no copy)."""
    off = np.frombuffer(items.buffers()[1], np.int32, len(items) + 1, offset=items.offset * 4)
    rows = off[wire._offsets(row_lengths)]
    return pa.Array.from_buffers(pa.binary(), len(row_lengths), [None, pa.py_buffer(rows.astype(np.int32)),
                                                                 items.buffers()[2]])


def _list_body(flat: np.ndarray, row_lengths: np.ndarray, d: Dictionary) -> pa.Array:
    """Each row's elements (``flat`` codes, ``row_lengths`` per row) from the dictionary's elements: one
    gather; the rows are runs of the gathered bytes."""
    w = d.fixed_width()
    if w:  # every element has the same length: one NumPy gather of whole rows
        return binary(d.padded()[flat].ravel(), wire._offsets(row_lengths) * w)
    return _regroup(pc.take(d.elements, pa.array(flat.astype(np.int64))), row_lengths)


def examples(n: int, numeric: Sequence[Tuple[str, str, np.ndarray]],
             coded: Sequence[Tuple[str, np.ndarray, Dictionary]],
             lists: Sequence[Tuple[str, np.ndarray, np.ndarray, Dictionary]]) -> pa.Array:
    """Serialised ``Example`` rows: ``numeric`` (name, 'int'|'float', [n]), ``coded`` scalars (name, codes [n],
    Dictionary; -1 = missing) and ``lists`` (name, flat codes, row lengths [n], Dictionary)."""
    head = RowBytes(n)
    for name, kind, values in numeric:
        if kind == "int":
            v = np.asarray(values, np.int64)
            _entry_header(head, name, wire.INT64_LIST, varint_length(v), True)
            head.varint(v)
        else:
            _entry_header(head, name, wire.FLOAT_LIST, np.full(n, 4, np.int64), True)
            head.fixed(np.ascontiguousarray(np.asarray(values, "<f4")).view(np.uint8).reshape(n, 4))
    pieces: List[pa.Array] = [head.build()] if head.ops else []
    total = head.lengths()
    for name, codes, d in coded:
        arr, ln = d.entries(name)
        idx = _index(codes, d)
        pieces.append(pc.take(arr, pa.array(idx)))
        total = total + ln[idx]
    return _with_lists(n, pieces, total, lists)


def packed_examples(n: int, fields: Dict[str, List[str]], numeric: Sequence[Tuple[str, str, np.ndarray]],
                    coded: Sequence[Tuple[str, np.ndarray, Dictionary]],
                    lists: Sequence[Tuple[str, np.ndarray, np.ndarray, Dictionary]]) -> pa.Array:
    """The rows of ``examples`` in the packed layout (``tfmsr.data.layout``): the scalar columns (``numeric``,
    ``coded``) in one list per packed field of ``fields`` (field -> its columns in order,
    ``layout.packed_columns``); each of ``lists`` stays a feature of its own. A coded int64 column is its raw
    values; a coded string column its dictionary's wire elements, gathered once per column."""
    cols = {name: values for name, _, values in numeric}
    cols.update({name: (_index(codes, d), d) for name, codes, d in coded})
    unknown = sorted({c for names in fields.values() for c in names} - set(cols))
    if unknown or len(cols) != sum(len(names) for names in fields.values()):
        raise ValueError(f"packed_examples: columns {sorted(cols)} do not match the packed fields {fields}")
    head = RowBytes(n)
    if "__float32" in fields:
        block = np.stack([np.asarray(cols[c], "<f4") for c in fields["__float32"]], axis=1)
        _entry_header(head, "__float32", wire.FLOAT_LIST, np.full(n, block.shape[1] * 4, np.int64), True)
        head.fixed(np.ascontiguousarray(block).view(np.uint8).reshape(n, block.shape[1] * 4))
    if "__int64" in fields:
        ints = [_raw_ints(cols[c]) for c in fields["__int64"]]
        nbs = [varint_length(v) for v in ints]
        _entry_header(head, "__int64", wire.INT64_LIST, np.sum(nbs, axis=0), True)
        for v, nb in zip(ints, nbs):
            head.varint(v, nb)
    pieces: List[pa.Array] = [head.build()] if head.ops else []
    total = head.lengths()
    if "__string" in fields:
        strings = [cols[c] for c in fields["__string"]]
        if any(not isinstance(c, tuple) or c[1].values is not None for c in strings):
            raise ValueError("packed_examples: the string columns are coded by string dictionaries")
        body_len = np.sum([d.element_length[idx] for idx, d in strings], axis=0)
        hdr = RowBytes(n)
        total = total + _entry_header(hdr, "__string", wire.BYTES_LIST, body_len, False)
        pieces += [hdr.build()] + [pc.take(d.elements, pa.array(idx)) for idx, d in strings]
    return _with_lists(n, pieces, total, lists)


def _index(codes: np.ndarray, d: Dictionary) -> np.ndarray:
    """Codes as indices into the dictionary's elements (-1, missing -> the missing element, last)."""
    return np.where(codes < 0, len(d.elements) - 1, codes).astype(np.int64)


def _raw_ints(col) -> np.ndarray:
    """An int column of ``packed_examples``: its values, or a coded column's raw values."""
    if isinstance(col, tuple):
        idx, d = col
        if d.values is None:
            raise ValueError("packed_examples: a string column among the int64 columns")
        return d.values[idx]
    return np.asarray(col, np.int64)


def _with_lists(n: int, pieces: List[pa.Array], total: np.ndarray,
                lists: Sequence[Tuple[str, np.ndarray, np.ndarray, Dictionary]]) -> pa.Array:
    """Whole Example rows: ``pieces`` (map entries of ``total`` bytes per row) and a map entry per list."""
    for name, flat, row_lengths, d in lists:
        body = _list_body(flat, row_lengths, d)
        hdr = RowBytes(n)
        body_len = lengths(body)
        total = total + _entry_header(hdr, name, d.tag, body_len, d.packed)
        pieces += [hdr.build(), body]
    top = RowBytes(n).const(b"\x0a").varint(total).build()
    return pc.binary_join_element_wise(top, *pieces, b"")


def split_records(records: pa.Array) -> List[bytes]:
    """One ``bytes`` object per serialised row (what ``TFRecordWriter.write`` takes)."""
    off = np.frombuffer(records.buffers()[1], np.int32, len(records) + 1, offset=records.offset * 4).tolist()
    data = records.buffers()[2].to_pybytes()
    return [data[a:b] for a, b in zip(off[:-1], off[1:])]
