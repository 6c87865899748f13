"""The `io_manager` resource: asset values as Parquet files under NEWSLETTER_IO_BASE_URI, a
local folder or an object store (`s3://bucket/prefix`), through fsspec and universal-pathlib."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field
from upath import UPath

from newsletter_pipelines.storage.frames import read_frame, to_table, write_table


class ParquetIOManager(dg.UPathIOManager):
    """Stores pandas DataFrames as `<base>/<asset key>.parquet`, a partition as
    `<base>/<asset key>/<partition>.parquet` (`storage.frames`: read back equal, their Python
    objects included). Any other value is a TypeError: nothing is pickled."""

    extension = ".parquet"

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
        with path.open("wb") as file:
            write_table(table, file)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        with path.open("rb") as file:
            return read_frame(file)


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
        return ParquetIOManager(base_path=UPath(self.base_uri))
