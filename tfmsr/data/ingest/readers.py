"""Input files -> streamed chunks of typed pyarrow columns (CSV/TSV, Parquet, JSON lines; plain or .gz).

Every path goes through ``tf.io.gfile`` (local files, ``gs://``, ``hdfs://``, ... whatever TensorFlow reads);
a path may be a glob. Each reader yields ``Chunk`` objects of at most ``chunk_bytes`` of input, holding only
the declared columns converted to their declared types (``string``/``int64``/``float64``; the spec's
``null_values`` are missing). The fast path is pyarrow's multi-threaded parser; when it rejects the input, a
second, plain-Python pass over the file finds the first offending line and raises one ``DataError`` naming
the file, the line, the column, the value and what was expected (a wrong separator, a short line, a value
that is not an integer, ...). An empty file is an error, never a silent zero.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import pyarrow as pa
import pyarrow.compute as pc

from tfmsr.data.ingest.spec import InputSpec
from tfmsr.data.pipeline import DataError

ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
PARQUET_ROWS = 262_144


@dataclass
class Chunk:
    """Rows ``first_row ..`` (0-based data rows) of one file; data row r sits on line ``line_offset + r``."""
    file: str
    file_index: int
    first_row: int
    line_offset: int
    columns: Dict[str, pa.Array]
    fraction: float  # share of the file read so far

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values())))

    def line(self, i: int) -> int:
        return self.line_offset + self.first_row + int(i)

    def at(self, i: int) -> str:
        """'line N' of row i (text formats), 'row N' (Parquet, 0-based)."""
        return f"{'row' if self.line_offset == 0 else 'line'} {self.line(i)}"


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def expand_paths(inp: InputSpec, root: str) -> List[str]:
    """The files of an input: each path resolved against ``root``; globs expanded (sorted, >= 1 match)."""
    gfile = _gfile()
    out = []
    for p in inp.paths:
        p = os.path.expandvars(os.path.expanduser(p))
        if "://" not in p and not os.path.isabs(p):
            p = os.path.join(root, p)
        if any(c in p for c in "*?["):
            found = sorted(gfile.glob(p))
            if not found:
                raise DataError(f"{inp.where}.path: no file matches {p}")
            out += found
        elif not gfile.exists(p):
            raise DataError(f"{inp.where}.path: no file {p}")
        else:
            out.append(p)
    return out


class _GFileIO(io.RawIOBase):
    """A ``tf.io.gfile.GFile`` as a standard binary stream (pyarrow and gzip want ``closed``, ``readinto``)."""

    def __init__(self, path: str):
        super().__init__()
        self._f = _gfile().GFile(path, "rb")

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b) -> int:
        data = self._f.read(len(b))
        b[:len(data)] = data
        return len(data)

    def read(self, size=-1) -> bytes:
        return self._f.read(size if size is not None and size >= 0 else -1)

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset, whence=0) -> int:
        self._f.seek(offset, whence)
        return self._f.tell()

    def close(self):
        if not self.closed:
            self._f.close()
        super().close()


def _open_raw(path: str):
    return _GFileIO(path)


def _open_binary(path: str):
    """(raw handle, decompressed binary stream)."""
    raw = _open_raw(path)
    return raw, (gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw)


def _size(path: str) -> int:
    return max(1, _gfile().stat(path).length)


def read_chunks(path: str, inp: InputSpec, file_index: int = 0, chunk_bytes: int = 16 << 20) -> Iterator[Chunk]:
    """Stream one file of ``inp`` as chunks; DataError for anything that does not fit the declaration."""
    fn = {"csv": _csv_chunks, "tsv": _csv_chunks, "parquet": _parquet_chunks, "jsonl": _json_chunks}[inp.format]
    rows = 0
    for chunk in fn(path, inp, file_index, chunk_bytes):
        rows += chunk.rows
        yield chunk
    if rows == 0:
        first = 2 if inp.header and inp.format in ("csv", "tsv") else 1
        raise DataError(f"{path} line {first}: no data rows (empty input; expected rows with columns "
                        f"{', '.join(inp.columns)})")


def read_table(path: str, inp: InputSpec) -> Dict[str, pa.Array]:
    """A whole (side) table in memory: column -> array."""
    parts = list(read_chunks(path, inp))
    return {c: pa.concat_arrays([p.columns[c] for p in parts]) for c in inp.columns}


# ---------------------------------------------------------------------------------------------- CSV
def _first_line(path: str, inp: InputSpec) -> Optional[str]:
    raw, fh = _open_binary(path)
    with raw:
        line = fh.readline()
    if not line.strip():
        return None
    return line.decode(inp.encoding, errors="replace").rstrip("\r\n")


def _split_line(line: str, inp: InputSpec) -> List[str]:
    quoting = dict(quotechar=inp.quote) if inp.quote else dict(quoting=csv.QUOTE_NONE)
    return next(csv.reader([line], delimiter=inp.sep, **quoting))


def _other_separators(line: str, sep: str) -> str:
    found = [repr(c) for c in (",", "\t", ";", "|") if c != sep and c in line]
    return f"; the line contains {' and '.join(found)}: wrong separator?" if found else ""


def _check_header(path: str, inp: InputSpec, fields: List[str]) -> List[str]:
    header = [f.strip() for f in fields]
    for col, ty in inp.columns.items():
        if col not in header:
            hint = _other_separators(fields[0], inp.sep) if len(fields) == 1 else ""
            raise DataError(f"{path} line 1 (header): no column '{col}' (the spec's {inp.where}.columns reads "
                            f"{col}: {ty}; the header has {len(header)} column(s) {', '.join(header)} with sep "
                            f"{inp.sep!r}{hint})")
    return header


def _csv_options(inp: InputSpec, raw_names: List[str], chunk_bytes: int):
    import pyarrow.csv as pacsv

    stripped = {r: r.strip() for r in raw_names}
    wanted = [r for r in raw_names if stripped[r] in inp.columns]
    read = pacsv.ReadOptions(block_size=chunk_bytes, encoding=inp.encoding, use_threads=True,
                             column_names=None if inp.header else list(raw_names))
    parse = pacsv.ParseOptions(delimiter=inp.sep, quote_char=inp.quote or False)
    convert = pacsv.ConvertOptions(column_types={r: ARROW[inp.columns[stripped[r]]] for r in wanted},
                                   include_columns=wanted, null_values=inp.null_values, strings_can_be_null=True,
                                   quoted_strings_can_be_null=True)
    return read, parse, convert, {r: stripped[r] for r in wanted}


def _csv_chunks(path: str, inp: InputSpec, file_index: int, chunk_bytes: int) -> Iterator[Chunk]:
    import pyarrow.csv as pacsv

    first = _first_line(path, inp)
    what = f"{'a header and ' if inp.header else ''}rows with columns {', '.join(inp.names or inp.columns)}"
    if first is None:
        raise DataError(f"{path} line 1: empty input (expected {what})")
    fields = _split_line(first, inp)
    if inp.header:
        _check_header(path, inp, fields)
        raw_names = fields
    else:
        if len(fields) != len(inp.names):
            raise DataError(f"{path} line 1: {len(fields)} field(s) where {len(inp.names)} are declared "
                            f"({', '.join(inp.names)}) with sep {inp.sep!r}{_other_separators(first, inp.sep)}")
        raw_names = list(inp.names)
    read, parse, convert, rename = _csv_options(inp, raw_names, chunk_bytes)
    size, start = _size(path), 0
    raw, fh = _open_binary(path)
    with raw:
        try:
            reader = pacsv.open_csv(fh, read_options=read, parse_options=parse, convert_options=convert)
            for batch in reader:
                cols = {rename[n]: batch.column(n) for n in batch.schema.names}
                yield Chunk(path, file_index, start, 1 + int(inp.header), cols, raw.tell() / size)
                start += batch.num_rows
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            raise _locate_csv(path, inp, raw_names, e) from None


def _locate_csv(path: str, inp: InputSpec, raw_names: List[str], err: Exception) -> DataError:
    """The first line the fast parser rejected, found by a plain-Python pass (error path only)."""
    cols = {i: (n.strip(), inp.columns[n.strip()]) for i, n in enumerate(raw_names) if n.strip() in inp.columns}
    nulls = set(inp.null_values)
    quoting = dict(quotechar=inp.quote) if inp.quote else dict(quoting=csv.QUOTE_NONE)
    raw, fh = _open_binary(path)
    with raw:
        text = io.TextIOWrapper(fh, encoding=inp.encoding, errors="strict", newline="")
        reader = csv.reader(text, delimiter=inp.sep, **quoting)
        try:
            for row in reader:
                if reader.line_num == 1 and inp.header:
                    continue
                if len(row) != len(raw_names):
                    return DataError(f"{path} line {reader.line_num}: {len(row)} field(s) where {len(raw_names)} "
                                     f"are expected ({', '.join(raw_names)}) with sep {inp.sep!r}"
                                     f"{_other_separators(inp.sep.join(row), inp.sep)}")
                for i, (name, ty) in cols.items():
                    bad = _bad_value(row[i], ty, nulls)
                    if bad:
                        return DataError(f"{path} line {reader.line_num}: column '{name}' value {row[i]!r} "
                                         f"is not {bad} (the spec declares {name}: {ty})")
        except UnicodeDecodeError as e:
            return DataError(f"{path}: not {inp.encoding} text ({e}); set the input's encoding")
    return DataError(f"{path}: cannot parse ({str(err).splitlines()[0]})")


def _bad_value(v: str, ty: str, nulls) -> Optional[str]:
    """What ``v`` fails to be as ``ty`` ('an integer', 'a number'), or None."""
    if v in nulls or ty == "string":
        return None
    try:
        int(v) if ty == "int64" else float(v)
    except ValueError:
        return "an integer" if ty == "int64" else "a number"
    return None


# ---------------------------------------------------------------------------------------------- JSON lines
def _json_chunks(path: str, inp: InputSpec, file_index: int, chunk_bytes: int) -> Iterator[Chunk]:
    import pyarrow.json as pajson

    schema = pa.schema([(c, ARROW[t]) for c, t in inp.columns.items()])
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    size, start, seen = _size(path), 0, {c: 0 for c in inp.columns}
    raw, fh = _open_binary(path)
    with raw:
        carry = b""
        while True:
            block = fh.read(chunk_bytes)
            data = carry + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            data, carry = data[:cut], data[cut:]
            if not data.strip():
                if not block:
                    break
                continue
            try:
                table = pajson.read_json(pa.BufferReader(data), parse_options=parse,
                                         read_options=pajson.ReadOptions(block_size=len(data) + 1))
            except pa.ArrowInvalid as e:
                raise _locate_json(path, data, start, inp, e) from None
            cols = {c: table.column(c).combine_chunks() for c in inp.columns}
            for c, a in cols.items():
                seen[c] += len(a) - a.null_count
            yield Chunk(path, file_index, start, 1, cols, raw.tell() / size)
            start += table.num_rows
    missing = [c for c, n in seen.items() if n == 0]
    if start and missing:
        raise DataError(f"{path} line 1: no row has field '{missing[0]}' (the spec's {inp.where}.columns reads "
                        f"{missing[0]}: {inp.columns[missing[0]]})")


def _locate_json(path: str, data: bytes, first_row: int, inp: InputSpec, err: Exception) -> DataError:
    want = {"int64": (int,), "float64": (int, float), "string": (str,)}
    for i, line in enumerate(data.decode("utf-8", errors="replace").split("\n")):
        if not line.strip():
            continue
        where = f"{path} line {first_row + i + 1}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return DataError(f"{where}: not valid JSON ({e.msg} at character {e.pos + 1})")
        if not isinstance(obj, dict):
            return DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        for col, ty in inp.columns.items():
            v = obj.get(col)
            if v is not None and (isinstance(v, bool) or not isinstance(v, want[ty])):
                return DataError(f"{where}: field '{col}' value {v!r} is not {_noun(ty)} "
                                 f"(the spec declares {col}: {ty})")
    return DataError(f"{path}: cannot parse the JSON lines after row {first_row} ({str(err).splitlines()[0]})")


def _noun(ty: str) -> str:
    return {"int64": "an integer", "float64": "a number", "string": "a string"}[ty]


# ---------------------------------------------------------------------------------------------- Parquet
def _parquet_chunks(path: str, inp: InputSpec, file_index: int, chunk_bytes: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    raw = _open_raw(path)
    with raw:
        try:
            pf = pq.ParquetFile(raw)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a Parquet file ({e})") from None
        names = pf.schema_arrow.names
        for col, ty in inp.columns.items():
            if col not in names:
                raise DataError(f"{path} (Parquet schema): no column '{col}' (the spec's {inp.where}.columns reads "
                                f"{col}: {ty}; the file has {', '.join(names)})")
        start = 0
        total = max(1, pf.metadata.num_rows)
        for batch in pf.iter_batches(batch_size=PARQUET_ROWS, columns=list(inp.columns)):
            cols = {c: _cast(batch.column(c), c, inp, path, start) for c in inp.columns}
            yield Chunk(path, file_index, start, 0, cols, (start + batch.num_rows) / total)
            start += batch.num_rows


def _cast(arr: pa.Array, col: str, inp: InputSpec, path: str, start: int) -> pa.Array:
    ty = ARROW[inp.columns[col]]
    if arr.type == ty:
        return arr
    try:
        return pc.cast(arr, ty)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = arr.to_pylist()
        for i, v in enumerate(values):
            try:
                pc.cast(pa.array([v]), ty)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise DataError(f"{path} row {start + i}: column '{col}' value {v!r} ({arr.type}) is not "
                                f"{_noun(inp.columns[col])} (the spec declares {col}: {inp.columns[col]})") from None
        raise DataError(f"{path}: column '{col}' of type {arr.type} does not convert to {inp.columns[col]}") from None


