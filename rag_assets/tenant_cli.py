"""`rag tenant create|list|show|set-limits|delete` and `rag tenant key create|list|revoke`: tenants in the
serving database, the same operations as the admin routes under /v1/admin/tenants. `delete` purges every
trace of the tenant (rag_core.tenant_data) and asks for --yes."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rag_core.errors import Refusal
from rag_core.querylog import ServingDatabase
from rag_core.settings import Settings
from rag_core.tenants import Tenant, UnknownTenant, validate_tenant

if TYPE_CHECKING:
    from rag_core.tenant_data import TenantPlaces

DEFAULT = "default"  # what --rate-limit / --max-documents take to return to the deployment's default
LIMITS = ("rate_limit_per_minute", "max_documents")


def _limit(text: str) -> int | None:
    """A limit argument: a whole number ≥ 0, or `default` (None)."""
    if text == DEFAULT:
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or `{DEFAULT}`") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: use 0 or more, or `{DEFAULT}`")
    return value


def _name(text: str) -> str:
    try:
        return validate_tenant(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_parser(commands: argparse._SubParsersAction) -> None:
    tenant = commands.add_parser("tenant", help="tenants: create, list, show, set limits, delete; their API keys")
    actions = tenant.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="record a tenant, with its limits")
    create.add_argument("name", type=_name)
    _limit_arguments(create)
    actions.add_parser("list", help="every tenant and its limits")
    actions.add_parser("show", help="a tenant's limits, files, documents, chunks and keys").add_argument(
        "name", type=_name
    )
    limits = actions.add_parser("set-limits", help="change a tenant's limits (`default`: the deployment's)")
    limits.add_argument("name", type=_name)
    _limit_arguments(limits)
    delete = actions.add_parser("delete", help="delete a tenant and purge every trace of it (needs --yes)")
    delete.add_argument("name", type=_name)
    delete.add_argument("--yes", action="store_true", help="confirm: its documents, vectors and logs are deleted")
    key = actions.add_parser("key", help="a tenant's API keys: create, list, revoke")
    key_actions = key.add_subparsers(dest="key_action", required=True)
    key_create = key_actions.add_parser("create", help="a new key; its secret is printed once")
    key_create.add_argument("name", type=_name)
    key_create.add_argument("--label", default="", help="what the key is for")
    key_actions.add_parser("list", help="the tenant's keys (never their secrets)").add_argument("name", type=_name)
    key_revoke = key_actions.add_parser("revoke", help="revoke one of the tenant's keys")
    key_revoke.add_argument("name", type=_name)
    key_revoke.add_argument("key_id", help="the id `rag tenant key list` shows")


def _limit_arguments(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a limit left out is absent from the arguments, so `default` (None) and "not given" differ.
    parser.add_argument(
        "--rate-limit",
        dest="rate_limit_per_minute",
        type=_limit,
        default=argparse.SUPPRESS,
        metavar="N|default",
        help="requests per minute per API key (0: none; default: RAG_RATE_LIMIT_PER_MINUTE)",
    )
    parser.add_argument(
        "--max-documents",
        type=_limit,
        default=argparse.SUPPRESS,
        metavar="N|default",
        help="files the tenant may hold in its folder (default: no quota)",
    )


def _given_limits(args: argparse.Namespace) -> dict[str, int | None]:
    return {field: getattr(args, field) for field in LIMITS if hasattr(args, field)}


@contextmanager
def serving_database(settings: Settings) -> Iterator[ServingDatabase]:
    database = ServingDatabase(settings.resolved_serving_db_url)
    try:
        yield database
    finally:
        database.close()


def places(settings: Settings, database: ServingDatabase) -> TenantPlaces:
    """What a purge from the shell reaches: the same stores the API uses, opened from the settings."""
    # Imported here, as in rag_assets.cli: `rag status` and the other light commands never load Milvus.
    from rag_core.cache import make_cache
    from rag_core.catalog import Catalog
    from rag_core.ratelimit import RateLimiter
    from rag_core.search.engines import IndexConnection
    from rag_core.tenant_data import TenantPlaces

    return TenantPlaces(
        documents_dir=settings.documents_dir.resolve(),
        staging_dir=settings.staging_dir,
        default_tenant=settings.default_tenant,
        database=database,
        catalog=Catalog(settings.resolved_catalog_url),
        open_store=IndexConnection.from_settings(settings).store,
        cache=make_cache(settings.redis_url),
        limiter=RateLimiter(settings.rate_limit_per_minute, settings.redis_url),
    )


def describe(tenant: Tenant) -> str:
    rate = "default" if tenant.rate_limit_per_minute is None else f"{tenant.rate_limit_per_minute}/min"
    quota = "none" if tenant.max_documents is None else str(tenant.max_documents)
    created = f"{tenant.created_at:%Y-%m-%d %H:%M}Z"
    return f"{tenant.name:<24} rate limit {rate:<10} max documents {quota:<8} created {created}"


def _known(database: ServingDatabase, name: str) -> Tenant:
    tenant = database.tenant(name)
    if tenant is None:
        raise UnknownTenant(f"no tenant {name} — `rag tenant list` shows the tenants")
    return tenant


def run(args: argparse.Namespace, settings: Settings) -> int:
    with serving_database(settings) as database:
        if args.action == "key":
            return _run_key(args, database)
        if args.action == "create":
            created = database.create_tenant(args.name, **_given_limits(args))
            if created is None:
                raise Refusal(f"tenant {args.name} exists already — `rag tenant set-limits {args.name}` changes it")
            print(describe(created))
        elif args.action == "list":
            for tenant in database.list_tenants():
                print(describe(tenant))
        elif args.action == "show":
            _show(settings, database, _known(database, args.name))
        elif args.action == "set-limits":
            changed = _given_limits(args)
            if not changed:
                raise Refusal("name a limit to change: --rate-limit N|default and/or --max-documents N|default")
            print(describe(database.set_tenant_limits(args.name, **changed)))
        elif args.action == "delete":
            _delete(settings, database, args.name, args.yes)
    return 0


def _show(settings: Settings, database: ServingDatabase, tenant: Tenant) -> None:
    from rag_core.catalog import Catalog
    from rag_core.search.engines import IndexConnection
    from rag_core.tenant_data import served_chunk_count, tenant_usage

    with IndexConnection.from_settings(settings).store() as store:
        usage = tenant_usage(
            tenant.name,
            settings.documents_dir.resolve(),
            settings.default_tenant,
            Catalog(settings.resolved_catalog_url),
            lambda search_filter: served_chunk_count(store, search_filter),
        )
    keys = database.list_keys(tenant.name)
    print(describe(tenant))
    print(f"  files {usage.files}, documents {usage.documents}, chunks in the served build {usage.chunks}")
    print(f"  API keys {len(keys)} ({sum(not key.revoked for key in keys)} active)")


def _delete(settings: Settings, database: ServingDatabase, name: str, confirmed: bool) -> None:
    from rag_core.tenant_data import check_deletable, purge_tenant

    check_deletable(name, settings.default_tenant, database)
    if not confirmed:
        raise Refusal(
            f"this deletes tenant {name} and purges its files, catalog rows, vectors in every build, cached "
            "results, query log, feedback, conversations and keys — run it again with --yes to confirm"
        )
    report = purge_tenant(name, places(settings, database))
    print(f"deleted tenant {name}:")
    for place, count in report.counts().items():
        print(f"  {place:<22} {count}")


def _run_key(args: argparse.Namespace, database: ServingDatabase) -> int:
    _known(database, args.name)
    if args.key_action == "create":
        print(database.create_key(args.name, args.label))
        print(f"(tenant {args.name}; store the key now — only its hash is kept)")
    elif args.key_action == "list":
        for key in database.list_keys(args.name):
            state = "revoked" if key.revoked else "active"
            print(f"{key.key_id}  name={key.name or '-'}  {state}  created {key.created_at:%Y-%m-%d %H:%M}Z")
    elif args.key_action == "revoke":
        if not any(key.key_id == args.key_id for key in database.list_keys(args.name)):
            raise Refusal(f"tenant {args.name} has no API key {args.key_id} — `rag tenant key list {args.name}`")
        database.revoke_key(args.key_id)
        print(f"revoked {args.key_id}")
    return 0
