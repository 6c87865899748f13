"""CRM access (SQLAlchemy 2): schema, demo loading, reading contacts with their tags."""
