"""Driver-side listing of the inputs: one row per image file or Parquet row, with a stable sample id.

Nothing is filtered here: hidden files, stray text files and files outside a class folder are
inputs like any other, so the decode stage can reject them by name and the manifest loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from adq_ray.config import Config
from adq_ray.storage import read_json, resolve

INVENTORY_SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),  # position in the sorted listing
        ("path", pa.string()),  # full URI; `<file>#<row>` for a Parquet row
        ("label", pa.int64()),  # class index, -1 when unknown
        ("class_name", pa.string()),  # "" when unknown
        ("nbytes", pa.int64()),  # size of the encoded image (file size, or the Parquet value's length)
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


def list_inputs(config: Config) -> Inventory:
    """List `config.input` (local folder, s3:// prefix, Parquet file or folder) in a stable order."""
    fs, root = resolve(config.input)
    root = root.rstrip("/")
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input not found: {config.input}")
    if info.type == pafs.FileType.File:
        files = [info]
    else:
        files = [f for f in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if f.type == pafs.FileType.File]
    if not files:
        raise ValueError(f"input folder is empty: {config.input}")
    files.sort(key=lambda f: f.path)
    scheme = config.input.split("://", 1)[0] + "://" if "://" in config.input else ""
    if _input_format(config, info, files) == "parquet":
        return _list_parquet(config, fs, files, scheme)
    return _list_image_folder(config, root, files, scheme)


def _input_format(config: Config, info: pafs.FileInfo, files: list[pafs.FileInfo]) -> str:
    """The requested format, or for "auto": Parquet when every data file is Parquet."""
    data = [f for f in files if not _is_metadata(f.base_name)]
    is_parquet = bool(data) and all(f.base_name.endswith(PARQUET_SUFFIXES) for f in data)
    fmt = config.input_format if config.input_format != "auto" else ("parquet" if is_parquet else "imagefolder")
    if fmt == "imagefolder" and info.type == pafs.FileType.File:
        raise ValueError(f"input is a single file, not an ImageFolder or Parquet: {config.input}")
    return fmt


def _is_metadata(name: str) -> bool:
    """Hidden and underscore files (_SUCCESS, _metadata, .crc) that sit beside Parquet data."""
    return name.startswith((".", "_"))


def _list_image_folder(config: Config, root: str, files: list[pafs.FileInfo], scheme: str) -> Inventory:
    """`<class>/<file>` inputs; with `labeled`, files elsewhere (root, deeper, hidden folder) get -1."""
    parts = [f.path[len(root) + 1 :].split("/") for f in files]
    if config.labeled:
        classes = sorted({p[0] for p in parts if len(p) == 2 and not p[0].startswith(".")})
        if not classes:
            raise ValueError(
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
        },
        schema=INVENTORY_SCHEMA,
    )
    return Inventory(table, classes)


def _list_parquet(config: Config, fs: pafs.FileSystem, files: list[pafs.FileInfo], scheme: str) -> Inventory:
    """One input per Parquet row, in (file, row) order.

    The image column is streamed once, by batches, for each value's length (nbytes); the bytes
    themselves are dropped and read again, in parallel, by the decode stage.
    """
    files = [f for f in files if f.base_name.endswith(PARQUET_SUFFIXES) and not _is_metadata(f.base_name)]
    if not files:
        raise ValueError(f"no Parquet files under {config.input}")
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
        raise ValueError(f"Parquet input has no rows: {config.input}")
    if config.labeled:
        labels, classes = _label_indices(pa.chunked_array(raw_labels))
    else:
        labels, classes = pa.array([0] * len(paths), pa.int64()), [SINGLE_CLASS]
    names = pa.array(classes + [""], pa.string()).take(pc.if_else(pc.equal(labels, -1), len(classes), labels))
    table = pa.table(
        {
            "sample_id": pa.array(range(len(paths)), pa.int64()),
            "path": paths,
            "label": labels,
            "class_name": names,
            "nbytes": pa.concat_arrays(lengths),
        },
        schema=INVENTORY_SCHEMA,
    )
    return Inventory(table, classes)


def _label_indices(values: pa.ChunkedArray) -> tuple[pa.Array, list[str]]:
    """Class indices (-1 for null or negative) and class names for an integer or string label column.

    Integers are class indices already (names "0".."max"); strings map to their sorted position.
    """
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_integer(values.type):
        ints = values.cast(pa.int64())
        top = pc.max(ints).as_py()
        classes = [str(i) for i in range((top if top is not None else -1) + 1)]
        labels = pc.if_else(pc.greater_equal(ints, 0), ints, -1)
    elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        classes = sorted(pc.unique(values.drop_null()).to_pylist())
        labels = pc.index_in(values, value_set=pa.array(classes, values.type)).cast(pa.int64())
    else:
        raise ValueError(f"label column must hold integers or strings, got {values.type}")
    return pc.fill_null(labels, -1).combine_chunks(), classes
