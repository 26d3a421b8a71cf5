"""Driver-side listing of the inputs: one row per image file or Parquet row, with a stable sample id.

Nothing is filtered here: hidden files, stray text files and files outside a class folder are
inputs like any other, so the decode stage can reject them by name and the manifest loses nothing.
Directory symlinks are not followed (a loop cannot make the listing endless or list a file twice);
they, and every other entry that is not a regular file (FIFO, socket, device, dangling link), are
listed with the reason they cannot be read, never opened. `walk_input` returns the listing with a
digest of (path, size, mtime) that keys the embed stage, so a changed input re-runs what depends on it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from adq_ray.config import Config
from adq_ray.errors import InputError
from adq_ray.storage import read_json, resolve

INVENTORY_SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),  # position in the sorted listing
        ("path", pa.string()),  # full URI; `<file>#<row>` for a Parquet row
        ("label", pa.int64()),  # class index, -1 when unknown
        ("class_name", pa.string()),  # "" when unknown
        ("nbytes", pa.int64()),  # size of the encoded image (file size, or the Parquet value's length)
        ("reason", pa.string()),  # why the listing itself rejects the entry (not a regular file), else ""
    ]
)
SINGLE_CLASS = "all"
PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_ROW = r"^(?P<file>.*\.(?:parquet|pq))#(?P<row>\d+)$"


@dataclass(frozen=True)
class Inventory:
    """Every input of a run (`table`, INVENTORY_SCHEMA) and the class names indexed by `label`."""

    table: pa.Table
    classes: list[str]

    def __len__(self) -> int:
        return self.table.num_rows

    @classmethod
    def read(cls, table_uri: str, classes_uri: str) -> Inventory:
        """Load an inventory saved as a Parquet table plus a JSON list of class names."""
        fs, path = resolve(table_uri)
        return cls(pq.read_table(path, filesystem=fs, schema=INVENTORY_SCHEMA), list(read_json(classes_uri)))

    def subset(self, sample_ids: Sequence[int] | np.ndarray) -> Inventory:
        """The inputs with these sample ids (same classes, so labels keep their meaning)."""
        keep = pc.is_in(self.table["sample_id"], value_set=pa.array(np.asarray(sample_ids, np.int64)))
        return Inventory(self.table.filter(keep), self.classes)


def parquet_rows(paths: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """True where an inventory path names a Parquet row (`<file>.parquet#<row>`) rather than a file."""
    return pc.match_substring_regex(paths, PARQUET_ROW)


def image_bytes(column: pa.Array) -> pa.Array:
    """The encoded bytes of an image column: binary, or a struct with a `bytes` field (Hugging Face)."""
    return column.field("bytes") if pa.types.is_struct(column.type) else column


class Entry(NamedTuple):
    """One listed entry: its path inside the filesystem, size, mtime (ns) and why it cannot be read ("" if it can)."""

    path: str
    size: int
    mtime_ns: int
    reason: str = ""

    @property
    def base_name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Listing:
    """What `config.input` holds right now: every entry in path order, and its digest (the embed cache key)."""

    root: str  # the input's path inside its filesystem
    scheme: str  # "s3://" or "" (prefixed to paths in the inventory)
    single_file: bool  # the input names one file (a Parquet file)
    entries: list[Entry]

    @property
    def files(self) -> list[Entry]:
        """The regular files (file symlinks included)."""
        return [e for e in self.entries if not e.reason]

    @property
    def digest(self) -> str:
        """sha256 over (path, size, mtime, reason) of every entry: any added, removed or changed input changes it."""
        h = hashlib.sha256()
        for e in self.entries:
            h.update(f"{e.path}\t{e.size}\t{e.mtime_ns}\t{e.reason}\n".encode())
        return h.hexdigest()[:16]


def walk_input(config: Config) -> Listing:
    """List `config.input` (local folder, s3:// prefix, Parquet file or folder) in path order; always ends."""
    fs, root = resolve(config.input)
    root = root.rstrip("/") or "/"
    info = fs.get_file_info(root)
    scheme = config.input.split("://", 1)[0] + "://" if "://" in config.input else ""
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input not found: {config.input}")
    if info.type == pafs.FileType.File:
        return Listing(root, scheme, True, [Entry(info.path, info.size or 0, info.mtime_ns or 0)])
    if isinstance(fs, pafs.LocalFileSystem):
        entries = _walk_local(root)
    else:
        selector = pafs.FileSelector(root, recursive=True)
        entries = [
            Entry(f.path, f.size or 0, f.mtime_ns or 0)
            for f in fs.get_file_info(selector)
            if f.type == pafs.FileType.File
        ]
    if not entries:
        raise InputError(f"input folder is empty: {config.input}")
    return Listing(root, scheme, False, sorted(entries))


def _walk_local(root: str) -> list[Entry]:
    """Every entry under a local folder; directory symlinks are listed (rejected), not followed."""
    entries, folders = [], [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as it:
                children = list(it)
        except OSError as err:
            entries.append(Entry(folder, 0, 0, f"unreadable directory: {err.strerror or err}"))
            continue
        for child in children:
            if child.is_dir(follow_symlinks=False):
                folders.append(child.path)
            else:
                entries.append(_local_entry(child))
    return entries


def _local_entry(child: os.DirEntry) -> Entry:
    """A non-directory entry: a regular file (or a link to one), else a rejection naming what it is."""
    try:
        st = os.stat(child.path)  # follows a file symlink to its target
    except OSError as err:
        return Entry(child.path, 0, 0, f"broken symlink: {err.strerror or err}")
    if stat.S_ISREG(st.st_mode):
        return Entry(child.path, st.st_size, st.st_mtime_ns)
    if stat.S_ISDIR(st.st_mode):
        return Entry(child.path, 0, st.st_mtime_ns, "directory symlink (not followed)")
    return Entry(child.path, 0, st.st_mtime_ns, f"not a regular file: {_kind(st.st_mode)}")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "unknown file type"


def list_inputs(config: Config, listing: Listing | None = None) -> Inventory:
    """The inventory of `config.input` (from `listing` when given, so that it matches the digest that keys it)."""
    listing = listing or walk_input(config)
    fs, _ = resolve(config.input)
    if _input_format(config, listing) == "parquet":
        return _list_parquet(config, fs, listing)
    return _list_image_folder(config, listing)


def _input_format(config: Config, listing: Listing) -> str:
    """The requested format, or for "auto": Parquet when every data file is Parquet."""
    data = [f for f in listing.files if not _is_metadata(f.base_name)]
    is_parquet = bool(data) and all(f.base_name.endswith(PARQUET_SUFFIXES) for f in data)
    fmt = config.input_format if config.input_format != "auto" else ("parquet" if is_parquet else "imagefolder")
    if fmt == "imagefolder" and listing.single_file:
        raise InputError(f"input is a single file, not an ImageFolder or Parquet: {config.input}")
    return fmt


def _is_metadata(name: str) -> bool:
    """Hidden and underscore files (_SUCCESS, _metadata, .crc) that sit beside Parquet data."""
    return name.startswith((".", "_"))


def _list_image_folder(config: Config, listing: Listing) -> Inventory:
    """`<class>/<file>` inputs; with `labeled`, files elsewhere (root, deeper, hidden folder) get -1."""
    files, root, scheme = listing.entries, listing.root.rstrip("/"), listing.scheme
    parts = [f.path[len(root) + 1 :].split("/") for f in files]
    if config.labeled:
        classes = sorted(
            {p[0] for p, f in zip(parts, files) if len(p) == 2 and not p[0].startswith(".") and not f.reason}
        )
        if not classes:
            raise InputError(
                f"no class folders under {config.input}: ImageFolder expects <class>/<file>; "
                "set labeled=False for a flat folder"
            )
        index = {name: i for i, name in enumerate(classes)}
        labels = [index.get(p[0], -1) if len(p) == 2 else -1 for p in parts]
    else:
        classes, labels = [SINGLE_CLASS], [0] * len(files)
    table = pa.table(
        {
            "sample_id": pa.array(range(len(files)), pa.int64()),
            "path": [scheme + f.path for f in files],
            "label": pa.array(labels, pa.int64()),
            "class_name": [classes[label] if label >= 0 else "" for label in labels],
            "nbytes": pa.array([f.size for f in files], pa.int64()),
            "reason": pa.array([f.reason for f in files], pa.string()),
        },
        schema=INVENTORY_SCHEMA,
    )
    return Inventory(table, classes)


def _list_parquet(config: Config, fs: pafs.FileSystem, listing: Listing) -> Inventory:
    """One input per Parquet row, in (file, row) order.

    The image column is streamed once, by batches, for each value's length (nbytes); the bytes
    themselves are dropped and read again, in parallel, by the decode stage.
    """
    scheme = listing.scheme
    files = [f for f in listing.files if f.base_name.endswith(PARQUET_SUFFIXES) and not _is_metadata(f.base_name)]
    unreadable = [f for f in listing.entries if f.reason]  # listed as rejected rows, never opened
    if not files:
        raise InputError(f"no Parquet files under {config.input}")
    columns = [config.image_column] + ([config.label_column] if config.labeled else [])
    paths, lengths, raw_labels = [], [], []
    for f in files:
        with pq.ParquetFile(fs.open_input_file(f.path)) as pf:
            names = pf.schema_arrow.names
            missing = [c for c in columns if c not in names]
            if missing:
                raise ValueError(f"{scheme}{f.path} has no column(s) {missing}; columns: {names}")
            paths += [f"{scheme}{f.path}#{row}" for row in range(pf.metadata.num_rows)]
            for batch in pf.iter_batches(columns=columns):
                lengths.append(pc.fill_null(pc.binary_length(image_bytes(batch.column(0))), 0).cast(pa.int64()))
                raw_labels += batch.columns[1:]
    if not paths:
        raise InputError(f"Parquet input has no rows: {config.input}")
    if config.labeled:
        labels, classes = _label_indices(pa.chunked_array(raw_labels))
    else:
        labels, classes = pa.array([0] * len(paths), pa.int64()), [SINGLE_CLASS]
    paths += [scheme + f.path for f in unreadable]
    labels = pa.concat_arrays([labels, pa.array([-1] * len(unreadable), pa.int64())])
    lengths.append(pa.array([0] * len(unreadable), pa.int64()))
    names = pa.array(classes + [""], pa.string()).take(pc.if_else(pc.equal(labels, -1), len(classes), labels))
    table = pa.table(
        {
            "sample_id": pa.array(range(len(paths)), pa.int64()),
            "path": paths,
            "label": labels,
            "class_name": names,
            "nbytes": pa.concat_arrays(lengths),
            "reason": pa.array([""] * (len(paths) - len(unreadable)) + [f.reason for f in unreadable], pa.string()),
        },
        schema=INVENTORY_SCHEMA,
    )
    return Inventory(table, classes)


def _label_indices(values: pa.ChunkedArray) -> tuple[pa.Array, list[str]]:
    """Class indices (-1 for null or a negative integer) and class names for an integer or string label column.

    Indices are dense over the distinct values, in sorted order (labels {3, 20000000} are classes 0 and 1,
    named "3" and "20000000"): memory is O(distinct labels), whatever their values.
    """
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_integer(values.type):
        values = values.cast(pa.int64())
        values = pc.if_else(pc.greater_equal(values, 0), values, pa.scalar(None, pa.int64()))
    elif not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise InputError(f"label column must hold integers or strings, got {values.type}")
    distinct = pc.unique(values.drop_null()).sort()
    labels = pc.index_in(values, value_set=distinct).cast(pa.int64())
    return pc.fill_null(labels, -1).combine_chunks(), [str(v) for v in distinct.to_pylist()]
