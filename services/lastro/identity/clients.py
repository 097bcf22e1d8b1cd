"""Identity use cases of OAuth clients: registration and the dev stack's admin client.

A client's secret (confidential clients) is shown once and stored as an argon2id hash,
hashed in a worker thread; registration is audited (``client.created``) in the same
transaction as the row (``core.db.in_transaction``, the service's
:class:`~lastro.core.changes.ChangeRecorder`). How clients authenticate and what they
are granted is the OAuth server's (:mod:`lastro.identity.oauth`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Engine, Tx, in_transaction
from lastro.core.ids import new_id
from lastro.identity import domain, store
from lastro.identity.keys import ALGORITHMS, ID_TOKEN_DEFAULT

BOOTSTRAP_CLIENT_NAME: Final = "lastro-bootstrap-admin"
SYSTEM: Final = Caller("system:bootstrap")


@dataclass(frozen=True)
class NewClient:
    client_id: str
    client_secret: str | None


class Clients:
    """The client use cases over one schema-bound engine."""

    def __init__(self, engine: Engine, changes: ChangeRecorder) -> None:
        self._engine = engine
        self._changes = changes

    async def create_client(
        self,
        *,
        name: str,
        policy: domain.ClientPolicy,
        confidential: bool,
        caller: Caller,
        id_token_alg: str = ID_TOKEN_DEFAULT,
    ) -> NewClient:
        """Register a client; the secret (confidential clients) is returned once and
        stored as an argon2id hash. ``id_token_alg`` signs its ID tokens (its
        ``id_token_signed_response_alg``). Raises InvalidInput. Audited."""
        domain.check_client_policy(policy)
        if id_token_alg not in ALGORITHMS:
            raise domain.InvalidInput(
                "id_token_signed_response_alg", f"one of {', '.join(ALGORITHMS)}"
            )
        if not confidential and "client_credentials" in policy.grant_types:
            raise domain.InvalidInput(
                "grant_types", "client_credentials needs a confidential client"
            )
        client_id = new_id("cli")
        secret = domain.new_secret() if confidential else None
        secret_hash = await asyncio.to_thread(domain.hash_secret, secret) if secret else None
        row = store.ClientRow(
            id=client_id,
            name=name,
            secret_hash=secret_hash,
            grant_types=tuple(sorted(policy.grant_types)),
            scopes=tuple(sorted(policy.scopes)),
            audiences=tuple(sorted(policy.audiences)),
            redirect_uris=policy.redirect_uris,
            id_token_signed_response_alg=id_token_alg,
        )
        details: Mapping[str, Any] = {
            "grant_types": list(row.grant_types),
            "scopes": list(row.scopes),
            "audiences": list(row.audiences),
            "id_token_signed_response_alg": id_token_alg,
        }

        async def work(conn: Tx) -> None:
            await store.insert_client(conn, row)
            await self._changes.audit(
                conn, caller, action="client.created", target=client_id, details=details
            )

        await in_transaction(self._engine, work)
        return NewClient(client_id, secret)

    async def bootstrap_admin_client(self, secret_file: Path) -> str | None:
        """Create the dev stack's admin client unless one exists, writing
        ``client_id:client_secret`` to ``secret_file`` (mode 0600). Returns the new
        client id, or None when it already existed."""
        async with self._engine.connect() as conn:
            existing = await store.client_named(conn, BOOTSTRAP_CLIENT_NAME)
        if existing is not None and await asyncio.to_thread(secret_file.exists):
            return None
        policy = domain.ClientPolicy(
            grant_types=frozenset({"client_credentials"}),
            scopes=frozenset({domain.ADMIN_SCOPE}),
            audiences=frozenset({"identity"}),
        )
        created = await self.create_client(
            name=BOOTSTRAP_CLIENT_NAME, policy=policy, confidential=True, caller=SYSTEM
        )
        assert created.client_secret is not None
        text = f"{created.client_id}:{created.client_secret}\n"
        await asyncio.to_thread(_write_private, secret_file, text)
        return created.client_id


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)
