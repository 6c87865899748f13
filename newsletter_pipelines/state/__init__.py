"""The state database: tables the sync keeps beside the CRM (exclusions; later ledger, outcomes)."""
