"""Provider side: audience snapshots, the reconciliation diff, the push, the full-sync job."""
