"""Security primitives: TLS contexts, token validation, the Transit (KMS) client."""
