"""The state database: tables the sync keeps beside the CRM (ledger and outcomes, eligibility
exclusions and baseline, the webhook inbox). Their schema is under alembic migrations (`schema`):
a change to a table needs a new revision in `migrations/versions`."""
