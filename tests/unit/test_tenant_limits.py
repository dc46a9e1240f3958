"""Tenant limits: the document quota and its message, what the quota counts, a per-subject rate limit, the
tenant prefix of cache keys (a purge deletes by it) and the CLI's limit arguments."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from rag_assets.tenant_cli import add_parser
from rag_core.cache import LRUCache, cache_key, tenant_prefix
from rag_core.ratelimit import RateLimiter
from rag_core.tenant_data import stored_documents
from rag_core.tenants import Tenant, TenantQuotaExceeded, check_document_quota, validate_limit


def tenant(max_documents: int | None) -> Tenant:
    return Tenant("acme", datetime.now(UTC), None, max_documents)


def test_limits_are_unset_or_not_negative():
    assert validate_limit(None, "max_documents") is None and validate_limit(0, "max_documents") == 0
    with pytest.raises(ValueError, match="rate_limit_per_minute must be 0 or more"):
        validate_limit(-1, "rate_limit_per_minute")


def test_the_quota_refuses_only_past_max_documents_and_names_the_fix():
    check_document_quota(tenant(None), 10_000, 1)  # no quota
    check_document_quota(tenant(3), 2, 1)  # exactly full
    check_document_quota(tenant(3), 3, 0)  # a new version of a stored file takes no room
    with pytest.raises(TenantQuotaExceeded) as refused:
        check_document_quota(tenant(3), 2, 2)
    message = str(refused.value)
    assert "holds 2 of its 3 documents (max_documents)" in message
    assert "rag tenant set-limits acme --max-documents N" in message and "PATCH /v1/admin/tenants/acme" in message


def test_the_quota_counts_the_tenants_supported_visible_files_only(tmp_path):
    for relative in (
        "guide.md",
        "notes/release.txt",
        ".hidden.md",
        ".draft.md.1a2b3c4d.uploading",
        "picture.png",
        "tenant=acme/plan.md",
        "tenant=acme/deep/roadmap.pdf",
        "tenant=acme/.cache/skip.md",
        "tenant=globex/plan.md",
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("x")

    def names(who: str) -> list[str]:
        return sorted(path.relative_to(tmp_path).as_posix() for path in stored_documents(tmp_path, who, "default"))

    assert names("default") == ["guide.md", "notes/release.txt"]
    assert names("acme") == ["tenant=acme/deep/roadmap.pdf", "tenant=acme/plan.md"]
    assert names("initech") == []  # no folder yet


def test_a_subject_can_carry_its_own_limit_in_the_same_window():
    now = [1_000.0]
    limiter = RateLimiter(per_minute=5, clock=lambda: now[0])
    own = [limiter.hit("key:limited", 2).allowed for _ in range(3)]
    assert own == [True, True, False]
    assert all(limiter.hit("key:default").allowed for _ in range(5)) and not limiter.hit("key:default").allowed
    refused = limiter.hit("key:limited", 2)
    assert refused.retry_after_s == 60 and refused.remaining == 0
    assert limiter.hit("key:unlimited", 0).allowed  # 0: no limit, as RAG_RATE_LIMIT_PER_MINUTE=0
    now[0] += 60.01
    assert limiter.hit("key:limited", 2).allowed
    assert limiter.forget(["key:limited", "key:never-seen"]) == 1
    assert [limiter.hit("key:limited", 2).allowed for _ in range(3)] == [True, True, False]


def test_cache_keys_carry_the_tenant_so_a_prefix_deletes_exactly_its_entries():
    acme, sibling = cache_key("retrieved", "v1", "q", tenant="acme"), cache_key("retrieved", "v1", "q", tenant="acme-b")
    assert acme.startswith(tenant_prefix("acme")) and acme != sibling
    assert not sibling.startswith(tenant_prefix("acme"))  # a name that extends another is not its prefix
    cache = LRUCache()
    for key in (acme, sibling, cache_key("qvec", "m", "q", tenant="acme"), cache_key("other", "v1")):
        cache.set(key, 1, 60)
    assert cache.delete_prefix(tenant_prefix("acme")) == 2
    assert cache.get(acme) is None and cache.get(sibling) == 1 and cache.get(cache_key("other", "v1")) == 1


def test_the_cli_tells_a_limit_left_out_from_one_returned_to_the_default():
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    cleared = parser.parse_args(["tenant", "set-limits", "acme", "--rate-limit", "default", "--max-documents", "9"])
    assert cleared.rate_limit_per_minute is None and cleared.max_documents == 9
    left_out = parser.parse_args(["tenant", "set-limits", "acme", "--max-documents", "0"])
    assert not hasattr(left_out, "rate_limit_per_minute") and left_out.max_documents == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["tenant", "set-limits", "acme", "--max-documents", "-3"])
    with pytest.raises(SystemExit):
        parser.parse_args(["tenant", "delete", "Not A Name"])
