"""Reading a source: local parquet / JSON / JSONL files or directories, or a Hugging Face hub data set, split by
split, into rows through the source's row mapping."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fspo_recipe.data.sources.base import PreferenceRow, ReadReport, SourceSchemaError, SourceSpec, rows_from_columns

_FILE_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def split_name(name: str) -> str:
    """A source split's name as train / validation / valid / test: ``train-00000-of-00001`` and ``test_prefs``
    (files or hub splits) -> ``train`` / ``test``; anything else -> ``train``."""
    stem = name.split(".")[0].lower()
    for split in ("train", "validation", "valid", "test"):
        if stem == split or stem.startswith(split + "-") or stem.startswith(split + "_"):
            return split
    return "train"


def _json_error(path: Path, ex: json.JSONDecodeError, lineno: int | None = None) -> SourceSchemaError:
    where = f"{path}, line {lineno if lineno is not None else ex.lineno}, column {ex.colno}"
    return SourceSchemaError(f"{where}: not valid JSON ({ex.msg}).")


def _decode(path: Path, data: bytes, lineno: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as ex:
        if lineno is None:  # a whole file: say on which line the bad byte is
            lineno = data.count(b"\n", 0, ex.start) + 1
            column = ex.start - (data.rfind(b"\n", 0, ex.start) + 1) + 1
        else:
            column = ex.start + 1
        raise SourceSchemaError(
            f"{path}, line {lineno}, byte {column}: not UTF-8 text ({ex.reason}); save the file as UTF-8."
        ) from None


def read_json_records(path: Path) -> tuple[list[Any], list[int] | None]:
    """The records of a JSON array file or of a JSONL file (one object per line), errors named by line; and the line
    of each record of a JSONL file (None for an array)."""
    with path.open("rb") as fp:
        head = fp.read(4096).lstrip()
        fp.seek(0)
        if head.startswith(b"["):
            try:
                return json.loads(_decode(path, fp.read())), None
            except json.JSONDecodeError as ex:
                raise _json_error(path, ex) from None
        records, lines = [], []
        for lineno, raw in enumerate(fp, 1):
            line = _decode(path, raw, lineno).rstrip("\r\n")
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as ex:
                    raise _json_error(path, ex, lineno) from None
                lines.append(lineno)
        return records, lines


def _read_file(path: Path) -> tuple[dict[str, list[Any]], list[int] | None]:
    """The columns (name -> values) of one parquet / JSON / JSONL file, and the line of each row of a JSONL file;
    every error names the file."""
    fmt = _FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SourceSchemaError(f"{path}: unsupported file type '{path.suffix}'; use .parquet, .jsonl or .json.")
    if path.stat().st_size == 0:
        raise SourceSchemaError(f"{path}: the file is empty (expected rows in the source schema).")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            columns = pq.read_table(path).to_pydict()
        except (pa.ArrowException, OSError) as ex:
            raise SourceSchemaError(f"{path}: not a readable parquet file ({ex}).") from None
        if not columns or not len(next(iter(columns.values()))):
            raise SourceSchemaError(f"{path}: the file has no rows.")
        return columns, None
    records, lines = read_json_records(path)
    if not records:
        raise SourceSchemaError(f"{path}: the file has no records (only blank lines).")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise SourceSchemaError(f"{path}: record {bad + 1} is not a JSON object; every record must be one.")
    keys: dict[str, None] = {}
    for r in records:
        keys.update(dict.fromkeys(r))
    return {k: [r.get(k) for r in records] for k in keys}, lines


def read_source(
    spec: SourceSpec, inputs: Sequence[str], report: ReadReport, *, cache_dir: str | None = None,
    keep_identical: bool = False, options: Mapping[str, Any] | None = None,
) -> dict[str, list[PreferenceRow]]:
    """Read ``inputs`` (local files or directories, or one hub name) into rows per source split.

    A local file's split is taken from its name (``train*``, ``test*``; others are ``train``); a directory contributes
    every parquet/JSON/JSONL file below it. Anything that is not an existing path is taken as a hub name and loaded
    with Hugging Face ``datasets`` (network needed).
    """
    by_split: dict[str, list[PreferenceRow]] = {}
    local = [Path(i) for i in inputs if Path(i).exists()]
    remote = [i for i in inputs if not Path(i).exists()]

    files: list[Path] = []
    for path in local:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in _FILE_FORMATS
                                and (spec.file_pattern is None or fnmatch.fnmatch(p.name, spec.file_pattern))))
        else:
            files.append(path)
    if local and not files:
        which = f" named {spec.file_pattern}" if spec.file_pattern else ""
        raise SourceSchemaError(f"{', '.join(map(str, local))}: no .parquet, .jsonl or .json file{which} found.")

    for path in files:
        columns, lines = _read_file(path)
        rows = rows_from_columns(spec, path.name, columns, report, str(path), keep_identical=keep_identical,
                                 lines=lines, options=options)
        by_split.setdefault(split_name(path.name), []).extend(rows)

    for name in remote:
        for split, data in load_hub(name, cache_dir, spec.hub_config).items():
            if spec.hub_splits is not None and split not in spec.hub_splits:
                continue
            rows = rows_from_columns(spec, split, data, report, f"{name} [{split}]", keep_identical=keep_identical,
                                     options=options)
            by_split.setdefault(split_name(split), []).extend(rows)
    return by_split


def load_hub(name: str, cache_dir: str | None, config: str | None = None) -> dict[str, dict[str, list[Any]]]:
    """The splits (name -> columns) of a hub data set (``config``: one of its configurations); network needed."""
    try:
        import datasets
    except ImportError as ex:
        raise SourceSchemaError(
            f"'{name}' is not a local path, and reading a hub data set needs Hugging Face `datasets`: "
            "pip install -e '.[data]'."
        ) from ex
    try:
        dd = datasets.load_dataset(name, config, cache_dir=cache_dir)
    except Exception as ex:  # noqa: BLE001 (datasets raises many types; the user needs the name and the cause)
        raise SourceSchemaError(
            f"'{name}' is not a local file or directory, and loading it from the Hugging Face hub failed: {ex}"
        ) from ex
    return {split: ds.to_dict() for split, ds in dd.items()}
