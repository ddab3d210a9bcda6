"""Every public name has a docstring (the API reference is generated from them; `make docs` builds it strictly)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil

import causalprune

OPTIONAL = {"causalprune.integrations.lightning": "lightning", "causalprune.integrations.transformers": "transformers"}


def _modules():
    for info in pkgutil.walk_packages(causalprune.__path__, "causalprune."):
        if info.name.endswith("__main__"):  # importing it runs the command line
            continue
        extra = OPTIONAL.get(info.name)
        if extra is not None and importlib.util.find_spec(extra) is None:
            continue
        yield importlib.import_module(info.name)


def test_every_public_name_and_method_has_a_docstring():
    missing = []
    for module in [causalprune, *_modules()]:
        if not (module.__doc__ or "").strip():
            missing.append(module.__name__)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not obj.__module__.startswith("causalprune"):
                continue
            if not (obj.__doc__ or "").strip():
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                        continue
                    if not (member.__doc__ or "").strip():
                        missing.append(f"{obj.__module__}.{obj.__qualname__}.{attr}")
    assert not missing, f"public names without a docstring: {sorted(set(missing))}"


def _nav_pages(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in _nav_pages(v)]
    return [p for v in nav for p in _nav_pages(v)] if isinstance(nav, list) else []


def test_the_docs_sites_links_open_pages_under_file_urls(monkeypatch):
    """A link to a folder (``cli/``) opens a directory listing under ``file://``: every page is ``page.html``."""
    import pytest

    pytest.importorskip("mkdocs")
    from pathlib import Path

    from mkdocs.config import load_config
    from mkdocs.structure.files import File

    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")
    cfg = load_config(str(Path(__file__).parents[1] / "mkdocs.yml"))
    pages = _nav_pages(cfg["nav"])
    assert "cli.md" in pages and "index.md" in pages
    urls = {p: File(p, cfg["docs_dir"], cfg["site_dir"], cfg["use_directory_urls"]).url for p in pages}
    assert urls["cli.md"] == "cli.html" and urls["index.md"] == "index.html"
    assert all(u.endswith(".html") for u in urls.values()), urls
