"""`rag-serve` — run the API, and manage API keys (stored hashed; the key is printed once)."""

from __future__ import annotations

import argparse
import os
import sys

from rag_core.settings import settings_or_exit
from rag_core.tenants import TENANT_PATTERN, InvalidTenant, validate_tenant


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rag-serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the API with uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (default: up to 2, one per core; each loads the in-memory index)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="proxies whose X-Forwarded-For is trusted as the client address (failed-key throttling keys on it); "
        "default: $FORWARDED_ALLOW_IPS or 127.0.0.1 — set it to the ingress' address behind a load balancer",
    )
    create = commands.add_parser("create-key", help="create an API key for a tenant")
    create.add_argument("--tenant", required=True, help=f"the tenant the key belongs to ({TENANT_PATTERN})")
    create.add_argument("--name", default="")
    revoke = commands.add_parser("revoke-key", help="revoke an API key: the whole key, or its id (the part after rag_)")
    revoke.add_argument("key", help="rag_<id>_<secret>, or the <id> that list-keys shows")
    listing = commands.add_parser("list-keys", help="the API keys (never their secrets): id, tenant, name, created")
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    args = parser.parse_args(argv)
    if args.command == "create-key":
        try:
            validate_tenant(args.tenant, "--tenant")
        except InvalidTenant as error:
            create.error(str(error))  # exit status 2, before any database is opened

    settings = settings_or_exit()
    if args.command == "serve":
        import uvicorn

        # No uvicorn access log: the app logs every request itself, with its request id and timings.
        uvicorn.run(
            "rag_serving.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            access_log=False,
            proxy_headers=True,
            forwarded_allow_ips=args.forwarded_allow_ips,
        )
        return 0
    from rag_core.querylog import ServingDatabase, key_id_of

    database = ServingDatabase(settings.resolved_serving_db_url)
    if args.command == "create-key":
        print(database.create_key(args.tenant, args.name))
        print(f"(tenant {args.tenant}; store the key now — only its hash is kept)", file=sys.stderr)
        return 0
    if args.command == "list-keys":
        for key in database.list_keys(args.tenant):
            state = "revoked" if key.revoked else "active"
            created = f"{key.created_at:%Y-%m-%d %H:%M}Z"
            print(f"{key.key_id}  tenant={key.tenant}  name={key.name or '-'}  {state}  created {created}")
        return 0
    key_id = key_id_of(args.key) if args.key.startswith("rag_") else args.key
    if database.revoke_key(key_id):
        print(f"revoked {key_id}")
        return 0
    print(f"no key {key_id} — `rag-serve list-keys` shows the keys", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
