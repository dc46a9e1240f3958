"""Tenant names: one pattern, checked where a name enters — here the settings and the documents folder
layout (`tenant=<name>/`); key creation and uploads are tested over the CLI and HTTP
(tests/integration/test_serving_hardening.py)."""

import pytest

from rag_core.documents import discover_sources, parse_source
from rag_core.settings import Settings
from rag_core.tenants import TENANT_PATTERN, InvalidTenant, validate_tenant


@pytest.mark.parametrize("name", ["acme", "default", "a", "tenant-1_b", "0" * 64])
def test_valid_tenant_names(name):
    assert validate_tenant(name) == name


@pytest.mark.parametrize(
    "name", ["", "x/../../../escaped", "..", "Acme", "acme corp", "-acme", "_acme", "acme\n", "a" * 65, 'a"b', "é"]
)
def test_invalid_tenant_names_are_refused_naming_the_pattern(name):
    with pytest.raises(InvalidTenant, match=r"the pattern \^\[a-z0-9\]"):
        validate_tenant(name)


def test_a_file_under_an_invalid_tenant_folder_is_quarantined_not_indexed_for_anyone(tmp_path):
    for folder in ("tenant=acme", "tenant=..", "tenant=Acme Corp"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "plan.md").write_text("# Plan\n\nProject Falcon ships in March.")
    units = {unit.relative_path: unit for unit in discover_sources(tmp_path, "default", 10)}
    assert units["tenant=acme/plan.md"].tenant == "acme"
    assert parse_source(units["tenant=acme/plan.md"]).documents[0].tenant == "acme"
    for relative in ("tenant=../plan.md", "tenant=Acme Corp/plan.md"):
        assert units[relative].tenant == ""
        parsed = parse_source(units[relative])
        assert parsed.documents == []
        [quarantined] = parsed.quarantined
        assert TENANT_PATTERN in quarantined.reason and "rename the folder" in quarantined.reason


def test_the_default_tenant_setting_is_checked(tmp_path):
    with pytest.raises(ValueError, match="RAG_DEFAULT_TENANT 'Main Tenant' is not a valid tenant name"):
        Settings(data_dir=tmp_path, default_tenant="Main Tenant")
