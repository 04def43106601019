"""The suite's own rules: data from the shared volume is required in CI."""

import pytest

from tests.conftest import from_shared


def test_missing_shared_data_fails_in_ci_and_skips_elsewhere(tmp_path, monkeypatch):
    missing = tmp_path / "shared" / "videos" / "README.md"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must have it"):
        from_shared(missing)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="without the shared volume"):
        from_shared(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        from_shared(missing)
    assert from_shared(tmp_path) == tmp_path
