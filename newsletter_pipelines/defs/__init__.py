"""Dagster objects only, one folder per domain; logic lives in the plain modules beside."""
