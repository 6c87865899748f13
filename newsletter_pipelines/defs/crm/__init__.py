"""CRM side: contacts and eligible subscribers, with blocking checks."""
