"""The pytest warning filters in pyproject.toml: scoped to label_studio_sdk, not a blanket ignore."""

import warnings

from pydantic.warnings import PydanticDeprecatedSince20


def _shown(module: str) -> int:
    with warnings.catch_warnings(record=True) as caught:  # keeps the filters pytest installed
        warnings.warn_explicit("class-based config", PydanticDeprecatedSince20, "x.py", 1,
                               module=module, registry={})
    return sum(issubclass(w.category, PydanticDeprecatedSince20) for w in caught)


def test_sdk_pydantic_deprecations_are_ignored():
    assert _shown("label_studio_sdk") == 0
    assert _shown("label_studio_sdk._legacy.users") == 0


def test_other_pydantic_deprecations_still_show():
    assert _shown("backend.labelstudio") == 1
    assert _shown("label_studio_sdk_fork.users") == 1
