-- The sync's state database beside Dagster's (NEWSLETTER_STATE_DATABASE_URL in compose.yaml).
CREATE DATABASE newsletter_state OWNER dagster;
