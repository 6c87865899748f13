"""The sync core, in the order the data flows (plain Python, nothing from Dagster):

- `eligibility`, `email_address`: CRM rows → eligible subscribers and classified exclusions;
- `inputs`: asset data (eligibility frames, provider snapshot, ledger) → reconciliation inputs;
- `identity`: the ledger's model of who owns which provider member, and its states;
- `rules`: the one rule set that gives every contact, member and ledger row one action;
- `settled`: the bulk pass that settles rows where CRM, ledger and provider agree exactly;
- `tags`: how each provider stores and compares tags;
- `guards`: the eligible-count drop guard and the removal guard;
- `push`: applies a diff through a provider client; intents before, ledger after each call.
"""
