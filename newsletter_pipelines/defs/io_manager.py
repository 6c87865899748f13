"""The `io_manager` resource: asset values as Parquet files under NEWSLETTER_IO_BASE_URI, a
local folder or an object store (`s3://bucket/prefix`), through fsspec and universal-pathlib."""

from __future__ import annotations

import os
import uuid
from collections.abc import Collection, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field
from upath import UPath

from newsletter_pipelines.bulk import collect_garbage, freeze_lasting, release_freed_memory, thaw
from newsletter_pipelines.storage.frames import read_frame, to_table, write_table

_LOCAL = ("", "file", "local")  # fsspec protocols of the local filesystem
COLUMNS = "columns"
"""Metadata key of an `AssetIn`: the input is those columns of the stored frame only."""
ROWS_WITH = "rows_with"
"""Metadata key of an `AssetIn`: the input is the stored frame's rows with a value in one of
those columns only (`storage.frames.read_frame`)."""
LAZY = "lazy"
"""Metadata key of an `AssetIn`: True, the input is a `StoredFrame`, read when it is loaded."""
ARROW_TEXT = "arrow_text"
"""Metadata key of an `AssetIn`: True, the stored frame's plain text columns are read as
`state.columns.TEXT` (Arrow-backed, missing values NaN), not one Python str per value."""


class ParquetIOManager(dg.UPathIOManager):
    """Stores pandas DataFrames as `<base>/<asset key>.parquet`, a partition as
    `<base>/<asset key>/<partition>.parquet` (`storage.frames`: read back equal, their Python
    objects included). Any other value is a TypeError: nothing is pickled.

    An input whose `AssetIn` metadata names `columns` is those columns only (the others are
    not read), `rows_with` those rows only, with `arrow_text` True its text columns
    Arrow-backed; one with `lazy` True is a `StoredFrame`, read only if the asset loads it."""

    extension = ".parquet"

    # `load_input` and `handle_output` are UPathIOManager's without its DEBUG log lines
    # ("Loading file from …", "Loading 1 partitions...", "Writing file at …"): each is an event
    # the instance stores (a database write), 4 of a run's ~130 events per step, and says no
    # more than the LOADED_INPUT / HANDLED_OUTPUT events beside it and the `path` metadata

    def __init__(self, base_path: UPath) -> None:
        super().__init__(base_path=base_path)
        self._step: object = None  # the step whose inputs were loaded last

    def load_input(self, context: dg.InputContext) -> Any:
        """The input; before a step's first, what earlier steps freed is handed back (a run
        executes its steps in one process: `definitions`)."""
        step = _step(context)
        if step is None or step != self._step:
            self._step = step
            collect_garbage()  # the frames of earlier steps that pandas left in reference cycles
            release_freed_memory()
        if context.has_asset_key and context.has_asset_partitions:
            paths = self._get_paths_for_partitions(context)
            allow_missing = (context.definition_metadata or {}).get("allow_missing_partitions")
            if len(paths) != 1 or allow_missing:
                return super().load_input(context)  # several partitions: Dagster's way
            (path,) = paths.values()
        else:
            path = self._get_path(context)
        return self.load_from_path(context, path)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if not context.has_asset_partitions:
            path = self._get_path(context)
        else:
            paths = self._get_paths_for_partitions(context)
            if len(paths) != 1:
                super().handle_output(context, obj)  # refuses several partitions, naming why
                return
            (path,) = paths.values()
            self._handle_transition_to_partitioned_asset(context, path.parent)
        self.make_directory(path.parent)
        self.dump_to_path(context, obj, path)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"{_name(context)}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be "
                f"stored; {type(self).__name__} stores pandas DataFrames only (as Parquet)"
            )
        try:
            table = to_table(obj)  # before the file is opened: a failure leaves no file
        except TypeError as exc:
            raise TypeError(f"{_name(context)}: {exc}") from exc
        if path.protocol not in _LOCAL:  # an object store: the object appears whole on close
            with path.open("wb") as file:
                write_table(table, file)
            return
        # a local file: written beside, then renamed over the old one, so a run reading it at
        # the same time (two audiences' runs share the unpartitioned values) reads one whole file
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with temporary.open("wb") as file:
                write_table(table, file)
            os.replace(temporary.path, path.path)
        finally:
            Path(temporary.path).unlink(missing_ok=True)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame | StoredFrame:
        wanted = context.definition_metadata or {}
        stored = StoredFrame(
            path,
            wanted.get(COLUMNS),
            tuple(wanted.get(ROWS_WITH, ())),
            bool(wanted.get(ARROW_TEXT)),
        )
        return stored if wanted.get(LAZY) else stored.load()


@dataclass(frozen=True)
class StoredFrame:
    """An asset's stored frame, not read yet (an input the asset may not need)."""

    path: UPath
    columns: Sequence[str] | None = None  # None: all
    rows_with: Sequence[str] = ()  # empty: all rows
    arrow_text: bool = False  # the plain text columns as `state.columns.TEXT`
    arrow_structs: Sequence[str] = ()  # struct columns left undecoded (`frames.struct_objects`)

    def load(self) -> pd.DataFrame:
        """The frame (read again at each call)."""
        with self.path.open("rb") as file:
            return read_frame(
                file,
                self.columns,
                self.rows_with,
                arrow_text=self.arrow_text,
                arrow_structs=self.arrow_structs,
            )

    def load_where(self, column: str, values: Collection[str | None]) -> pd.DataFrame:
        """The frame's rows whose text column `column` holds one of `values`, the others not
        decoded (`storage.frames.read_frame`'s `rows_in`; read again at each call)."""
        with self.path.open("rb") as file:
            return read_frame(
                file,
                self.columns,
                self.rows_with,
                (column, values),
                arrow_text=self.arrow_text,
                arrow_structs=self.arrow_structs,
            )

    def part(
        self, columns: Sequence[str] | None = None, rows_with: Sequence[str] = ()
    ) -> StoredFrame:
        """The same stored frame, of `columns` only (None: those of this one) and of the rows
        with a value in one of `rows_with` only (empty: those of this one)."""
        return replace(
            self,
            columns=self.columns if columns is None else list(columns),
            rows_with=tuple(rows_with) or self.rows_with,
        )


def _step(context: dg.InputContext) -> tuple[str, str] | None:
    """The run and step loading the input (None: a context built outside a run)."""
    with suppress(dg.DagsterInvariantViolationError):
        step = context.step_context
        return step.run_id, step.step.key
    return None


def _name(context: dg.OutputContext) -> str:
    if context.has_asset_key:
        return f"asset {context.asset_key.to_user_string()}"
    return f"output {context.name!r} of {context.step_key}"


class ParquetIOManagerResource(dg.ConfigurableIOManagerFactory):
    """Asset values as Parquet under `base_uri`. Object-store credentials come from the
    environment only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, an instance
    role...), never from this config."""

    base_uri: str = Field(
        description="Folder or object-store prefix of the values (NEWSLETTER_IO_BASE_URI)."
    )

    def create_io_manager(self, context: dg.InitResourceContext) -> ParquetIOManager:
        """The IO manager of a run, made as it starts (`bulk.freeze_lasting`)."""
        freeze_lasting()
        return ParquetIOManager(base_path=UPath(self.base_uri))

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """As the run ends, nothing it froze stays frozen (`bulk.thaw`)."""
        thaw()
