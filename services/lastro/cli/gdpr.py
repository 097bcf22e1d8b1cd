"""`lastro gdpr`: data-subject requests through the account service's admin API.

* ``lastro gdpr export <customer-id> [--out FILE]``: the signed bundle of everything
  every service holds (docs/privacy.md), written to FILE or printed;
* ``lastro gdpr erase <customer-id> --reason TEXT``: erase everywhere, print the
  certificate (exit 0 complete, 3 partial: run ``retry``);
* ``lastro gdpr certificate <id>`` and ``lastro gdpr retry <id>``;
* ``lastro gdpr verify FILE``: check a bundle's manifest and its HMAC with the KMS.

The command authenticates as a client with scope ``privacy:admin`` for audience
``accounts``: ``LASTRO_GDPR_CLIENT_ID``/``_SECRET``, or on the local stack a client
registered once through the bootstrap admin client (its actor is in every audit
record the request writes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_PARTIAL = 3


def register(sub: Any) -> None:
    gdpr = sub.add_parser("gdpr", help="data-subject requests: export, erase, certificates")
    actions = gdpr.add_subparsers(dest="gdpr_action", required=True)
    export = actions.add_parser("export", help="export everything held about a customer")
    export.add_argument("customer_id")
    export.add_argument("--out", type=Path, help="write the bundle here (default: stdout)")
    export.set_defaults(func=run)
    erase = actions.add_parser("erase", help="erase a customer's personal data everywhere")
    erase.add_argument("customer_id")
    erase.add_argument("--reason", required=True, help="why (kept in the certificate and audit)")
    erase.set_defaults(func=run)
    certificate = actions.add_parser("certificate", help="show an erasure certificate")
    certificate.add_argument("certificate_id")
    certificate.set_defaults(func=run)
    retry = actions.add_parser("retry", help="retry an erasure's unconfirmed services")
    retry.add_argument("certificate_id")
    retry.set_defaults(func=run)
    verify = actions.add_parser("verify", help="verify an export bundle (manifest and KMS HMAC)")
    verify.add_argument("bundle", type=Path)
    verify.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lastro.core.config import load_settings

    settings = load_settings()
    if args.gdpr_action == "verify":
        return asyncio.run(_verify(settings, args.bundle))
    return asyncio.run(_request(settings, args))


async def _credentials(settings: Any) -> tuple[str, str]:
    from lastro.core.registry import PRIVACY_SCOPE
    from lastro.core.security.service_tokens import dev_service_credentials

    client_id = os.environ.get("LASTRO_GDPR_CLIENT_ID", "")
    secret = os.environ.get("LASTRO_GDPR_CLIENT_SECRET", "")
    if client_id and secret:
        return client_id, secret
    return await dev_service_credentials(
        settings,
        "gdpr-cli",
        scopes=[PRIVACY_SCOPE],
        audiences=["accounts"],
        secret_file=settings.dev_dir / "secrets" / "gdpr_cli_client",
    )


def _route(base: str, args: argparse.Namespace) -> tuple[str, str, dict[str, str] | None]:
    action = args.gdpr_action
    if action == "export":
        return "POST", f"{base}/exports", {"customer_id": args.customer_id}
    if action == "erase":
        return "POST", f"{base}/erasures", {"customer_id": args.customer_id, "reason": args.reason}
    if action == "certificate":
        return "GET", f"{base}/erasures/{args.certificate_id}", None
    return "POST", f"{base}/erasures/{args.certificate_id}/retry", None


async def _request(settings: Any, args: argparse.Namespace) -> int:
    import aiohttp

    from lastro.core.registry import PRIVACY_SCOPE
    from lastro.core.security.service_tokens import ServiceTokenClient
    from lastro.core.security.tls import client_context

    client_id, secret = await _credentials(settings)
    base = f"{settings.service_url('accounts')}/v1/privacy"
    action = args.gdpr_action
    method, url, body = {
        "export": ("POST", f"{base}/exports", {"customer_id": getattr(args, "customer_id", "")}),
        "erase": (
            "POST",
            f"{base}/erasures",
            {
                "customer_id": getattr(args, "customer_id", ""),
                "reason": getattr(args, "reason", ""),
            },
        ),
        "certificate": ("GET", f"{base}/erasures/{getattr(args, 'certificate_id', '')}", None),
        "retry": ("POST", f"{base}/erasures/{getattr(args, 'certificate_id', '')}/retry", None),
    }[action]
    async with ServiceTokenClient.from_settings(
        settings, client_id, secret, scope=PRIVACY_SCOPE
    ) as tokens:
        headers = await tokens.headers("accounts")
        connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
        timeout = aiohttp.ClientTimeout(total=120)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
            http.request(method, url, json=body, headers=headers) as response,
        ):
            answer = json.loads(await response.read())
            status = response.status
    text = json.dumps(answer, indent=2, sort_keys=True, ensure_ascii=False)
    if status >= 400:
        print(f"lastro gdpr {action}: {answer.get('detail', status)}", file=sys.stderr)
        return 1
    if action == "export" and args.out is not None:
        await asyncio.to_thread(args.out.write_text, text + "\n")
        totals = {name: e["total"] for name, e in answer["manifest"]["services"].items()}
        print(f"bundle {answer['manifest']['request_id']} written to {args.out}: {totals}")
        return 0
    print(text)
    if action in ("erase", "retry") and answer.get("status") != "complete":
        return EXIT_PARTIAL
    return 0


async def _verify(settings: Any, path: Path) -> int:
    """0 when the manifest matches the sections and the KMS confirms the HMAC."""
    from lastro.accounts.domain.subject_requests import manifest_errors, signed_content
    from lastro.core.security.transit import TransitClient

    bundle = json.loads(await asyncio.to_thread(path.read_text))
    errors = manifest_errors(bundle)
    signature = bundle.get("signature") or {}
    valid = False
    if signature.get("key") != settings.privacy_key_name:
        errors.append(f"not signed with the platform's key {settings.privacy_key_name!r}")
    else:
        transit = TransitClient.from_settings(settings)
        try:
            valid = await transit.verify_hmac(
                settings.privacy_key_name, signed_content(bundle), str(signature.get("hmac", ""))
            )
        finally:
            await transit.close()
    if not valid:
        errors.append("the KMS does not confirm the bundle's HMAC")
    for error in errors:
        print(f"invalid: {error}", file=sys.stderr)
    if not errors:
        print(f"valid: bundle {bundle['manifest']['request_id']} (manifest and KMS HMAC)")
    return 1 if errors else 0
