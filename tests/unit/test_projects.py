"""Per-project Redis state: which version names are ours, and the importing mark."""

from __future__ import annotations

from backend import projects


def test_only_our_version_names_for_the_project_are_ours():
    assert projects.owns_version(12, "p12-v0003-a1b2c3")
    assert projects.owns_version(12, "p12-v12345-a1b2c3")
    assert projects.owns_version(12, projects.cold_start_version(12))
    for other in ("p1-v0003-a1b2c3", "p12-v0003-A1B2C3", "p12-v03-a1b2c3", "p12-v0003-a1b2c3x",
                  "v-new", "", None, "my-model-v2"):
        assert not projects.owns_version(12, other), other


def test_the_importing_mark_is_cleared_only_while_it_names_the_version(r):
    projects.set_importing_version(r, 1, "p1-v0002-aaaaaa")
    assert not projects.clear_importing_version_if(r, 1, "p1-v0001-bbbbbb")
    assert projects.importing_version(r, 1) == "p1-v0002-aaaaaa"
    assert projects.clear_importing_version_if(r, 1, "p1-v0002-aaaaaa")
    assert projects.importing_version(r, 1) is None
