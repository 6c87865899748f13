"""How asset values are stored: pandas DataFrames as Parquet (`frames`), with the Python objects
of their object columns as tagged JSON (`codec`). No Dagster here: the IO manager is in
`defs/io_manager.py`."""
