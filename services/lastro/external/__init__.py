"""Simulated third parties: an FX rate provider, a card acquirer and an SMS gateway.

These are fakes of *other companies'* products, run locally so the transaction and
notification services meet real HTTP, real latency and real failures: each is its
own aiohttp process over HTTPS (dev CA), started by ``lastro dev up`` and served by
``lastro serve fx|acquirer|sms`` (ports 7101, 7102, 7103 plus the stack's offset).
They trust no Lastro token; callers present the provider's own API key
(``Authorization: Bearer <key>``, ``.dev/secrets/<name>_api_key`` in dev).

What they share lives in :mod:`lastro.external.provider`: API keys, a small SQLite
state file under ``.dev/<name>/`` (a fake's memory, not Lastro infrastructure),
Idempotency-Key handling as a provider does it, and fault injection for tests
(``/admin/faults``, ``/admin/reset``).

* :mod:`~lastro.external.fx`: rates per currency pair that move over time (a
  seeded, mean-reverting random walk), as decimal strings.
* :mod:`~lastro.external.acquirer`: card tokenisation, authorize / capture / void /
  refund with Stripe-like test cards and decline codes, records for reconciliation,
  and settlement batches delivered to Lastro signed with HMAC
  (:mod:`~lastro.external.acquirer_signing` is what the receiving side verifies with).
* :mod:`~lastro.external.sms`: accepts messages and keeps what it received, for
  tests and ``lastro dev sms``.

The contracts are in docs/interfaces.md ("Simulated third parties") and in each
provider's ``<name>.openapi.yaml``.
"""
