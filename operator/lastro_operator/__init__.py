"""The Lastro operator: FraudRule and RetentionPolicy custom resources, reconciled.

Design overview
---------------
What it owns: nothing durable. The custom resources (``crds/``) are the desired state;
the fraud service and each service's privacy API hold the effect. The operator carries
one to the other and reports the outcome in each resource's ``status``.

- ``fraudrule``: validates a FraudRule's CEL expression (``expressions``), publishes
  the rule to the fraud admin API (``PUT /v1/rules/{id}``, revision
  ``<uid>:<generation>``), waits until ``GET /v1/rules/{id}`` shows that revision
  (the rule-set version that carries it becomes ``status.appliedVersion``), and on
  delete withdraws the rule behind a finalizer. shadow <-> enforce is just another
  generation: the fraud service switches rule sets live, nothing restarts.
- ``retentionpolicy``: on each policy's cron schedule (or when the
  ``lastro.io/run-requested`` annotation changes), asks the owning service to purge
  one data class (``POST /internal/v1/privacy/purge``) and records the counts,
  ``lastRun`` and a Kubernetes Event per run. Ledger entries and postings are never a
  data class: the CRD refuses them, this package refuses them, the service refuses them.

What it trusts: the Kubernetes API (its ServiceAccount, least-privilege RBAC from the
chart), the identity service for client-credentials tokens (audience = the service
called; scopes ``fraud:admin`` and ``privacy:admin``), the dev CA or the cluster CA
for TLS. Handlers are thin and idempotent; what they compute lives in plain functions
unit-tested without a cluster (tests/unit/test_operator_*.py).
"""
