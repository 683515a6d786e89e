from __future__ import annotations

import pytest

from streamseg.model.registry import VARIANTS, UnknownVariantError, get_variant


def test_every_config_exists() -> None:
    for variant in VARIANTS.values():
        assert variant.config_path().is_file(), variant.name


def test_official_urls() -> None:
    for name in ("tiny", "small", "base_plus", "large"):
        url = get_variant(name).checkpoint_url
        assert url is not None and url.startswith("https://dl.fbaipublicfiles.com/")
        assert url.endswith(f"sam2.1_hiera_{name}.pt")
    assert get_variant("test").checkpoint_url is None


def test_unknown_variant_lists_choices() -> None:
    with pytest.raises(UnknownVariantError, match="tiny, small, base_plus, large, test"):
        get_variant("huge")
