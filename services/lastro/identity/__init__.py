"""The identity service: users, two-factor authentication and the OAuth 2.0 server.

Owns
    Users (username, argon2id password hash, TOTP seed encrypted through Transit,
    the last TOTP time step used, hashed one-time recovery codes), OAuth clients
    (argon2id secret hash, grant types, scopes, audiences, redirect URIs),
    authorization codes, login tickets, refresh-token families and the ES256
    signing keys (private halves encrypted through Transit). Its audit log records
    sign-up, every login success and failure, 2FA changes, token issuance,
    refresh-token reuse and revocation, client creation and key rotation.

    The authorization server (:mod:`lastro.identity.oauth`, authlib) issues RFC 9068
    JWT access tokens (``typ: at+jwt``, ``scope``, ``aud``, ``amr``, ``acr``,
    ``auth_time``, ``client_id``, ``jti``; 10 minutes) for client_credentials
    (merchants and services, audience chosen with ``audience``/``resource``) and
    the authorization code flow with PKCE S256 and a plain HTML login (password,
    then the TOTP code when enrolled). Refresh tokens rotate on every use and a
    reused one revokes its whole family. Signing keys rotate without downtime
    (:mod:`lastro.identity.keys`). Discovery at ``/.well-known/openid-configuration``,
    keys at ``/.well-known/jwks.json``.

Publishes
    Through its outbox, on ``lastro.identity`` (:mod:`lastro.identity.events`):
    ``lastro.identity.login_new_device`` (a sign-in from a device, named by a
    long-lived random cookie, the user had not used; the first device is not
    announced), ``lastro.identity.totp_enabled`` and ``.totp_disabled``. Every
    security event also goes to the hash-chained audit log.

Trusts
    Its own PostgreSQL schema, the KMS (Transit) for encryption, Redis for rate
    limits and lockouts (``core/ratelimit.py``; the credential routes fail closed
    without it). It trusts no caller: client and user credentials are checked on
    every request, and its own API accepts only tokens it signed for audience
    ``identity`` (verified in-process against its key ring).
"""
