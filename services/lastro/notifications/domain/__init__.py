"""The notification service's pure rules: kinds and channels, preferences and
routing, templates, webhook endpoints (URLs, address policy, secrets) and delivery
retries. No I/O; unit-tested without a database."""
