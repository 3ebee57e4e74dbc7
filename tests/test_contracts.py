"""Every registered component passes the contract-test kit (``slmzoo.testing``): kind, meta build, batch
invariance, bad input refused, standalone save/load round trip, strict loading."""

from __future__ import annotations

import pytest

from slmzoo.testing import CHECKS, check_component, component_cases


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize(("kind", "name"), component_cases())
def test_component_contract(kind, name, check, tmp_path, one_thread):
    check_component(kind, name, check, tmp_path)
