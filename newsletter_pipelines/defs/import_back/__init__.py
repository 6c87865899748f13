"""Dagster wiring of the import-back (provider → CRM): asset, job, schedule."""
