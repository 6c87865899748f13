"""Provider clients (Mailchimp, Brevo) behind one `Provider` interface; no Dagster here.

Both clients share `http.ApiClient` (bounded concurrency, pacing, retries with jitter, error
shape, secret scrubbing) and run unchanged against `newsletter_pipelines.sandbox`.
"""
