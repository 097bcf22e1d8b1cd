"""Shared platform code, no business rules: configuration, database units of
work, events (outbox, relay, inbox, CloudEvents with HMAC), the HTTP app
factory (problem+json, auth, idempotency, rate limits), security helpers,
resilience, observability, audit and money."""
