"""Provider clients (Mailchimp, Brevo) behind one `Provider` interface; no Dagster here
(except `resources`).

Both clients share `http.ApiClient` (bounded concurrency, pacing, retries with jitter, error
shape, secret scrubbing) and run unchanged against `newsletter_pipelines.sandbox`.

Choices measured with `benchmarks/bench_providers.py`:
- Mailchimp creates: batch subscribe, 500 a call: 100,000 contacts = 200 write calls.
- Mailchimp updates and tag changes of existing members: per-member operations inside
  `/batches` (1,000 a batch), because it costs ceil(operations/1000) write calls whatever the
  number of distinct tags, and every operation comes back with its own result; the segment
  endpoint needs 1 + ceil(members/500) calls per tag (10,000 members with 3 new tags: 10 calls
  via `/batches` against 24 via segments). Ten operations or fewer go out directly.
- Brevo creates: `/contacts/import` in 8 MB chunks (100,000 contacts = 2 calls), then the list
  is read back (500 a page) for ids and statuses.
"""
