"""The notification service: signed webhooks, e-mail and SMS for the platform's key events.

Owns
    Merchants' webhook endpoints (URL, event-type subscriptions, signing secrets as
    Transit ciphertexts, at most two active during a rotation, an optional notice
    address), customers' preferences (channels per kind, locale, time zone, quiet
    hours, marketing consent), the occurrences it was told about, and the delivery
    log: one delivery per (event, channel, destination) with every attempt (outcome,
    response code, latency) and the dead letters. Addresses and rendered messages
    are sealed per subject (``sealing.py``) and crypto-shredded on erasure.

Consumes
    Transactions succeeded (``posted``), declined, failed and refunded, payouts
    sent, fraud alerts, frozen accounts, sign-ins from a new device and 2FA
    changes, plus ``lastro.customer.created`` for each customer's owner
    (``events.py``), through the signed-event inbox: a redelivered event has no
    second effect. Contact details never travel in events: accounts is asked
    (``contacts.py``) when a notification is planned.

Delivers (``dispatch.py``, ``channels.py``)
    Webhooks signed per Standard Webhooks (``standardwebhooks``), e-mail
    (multipart text + HTML over SMTP with STARTTLS) and SMS (the gateway, with an
    idempotency key). Exactly one message per event and destination: deliveries
    are unique per (event, channel, destination) and keep their id for life, so
    every attempt, including one after a crash between sending and recording, and
    a replay, carries the same ``webhook-id`` / ``Message-ID`` / idempotency key.
    Retries follow an exponential schedule with jitter; after the last attempt a
    delivery is dead-lettered (table and ``lastro.deadletter``) until replayed. An
    endpoint failing a run of attempts is disabled and its owner told. Webhook
    targets must be public addresses, checked at registration and again at every
    attempt, through the resolver the connection itself uses.

Publishes
    ``lastro.webhook_endpoint.*``, ``lastro.preferences.updated``,
    ``lastro.notification.replayed`` on ``lastro.notifications`` and
    ``lastro.notification.dead_lettered`` on ``lastro.deadletter`` (ids only).

Trusts
    Access tokens from the identity service (``notifications:read|write``; the
    privacy API needs a service token with ``privacy:admin``), signed events, the
    account service for contacts and owners, the KMS, its own schema. It trusts no
    webhook URL: every address is checked, redirects are not followed.
"""
