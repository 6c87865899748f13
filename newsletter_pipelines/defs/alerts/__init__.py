"""Alerts: failed runs, failed blocking checks and stalled sensors, to the log and a webhook."""
