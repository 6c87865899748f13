"""newsletter_pipelines: keeps newsletter providers in sync with a CRM."""
