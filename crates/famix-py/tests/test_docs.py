"""The guide's Python API page (docs/src/python-api.md) is generated from this package's
signatures and docstrings by tools/python_api_doc.py: it must be current and name
every public name."""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tools"))

import python_api_doc  # noqa: E402

PAGE = ROOT / "docs" / "src" / "python-api.md"


def test_the_api_page_is_what_the_package_generates():
    assert PAGE.read_text(encoding="utf-8") == python_api_doc.render(), \
        "docs/src/python-api.md differs from the package's docstrings: run `make python-api`"


def test_every_public_name_is_on_the_api_page():
    page = PAGE.read_text(encoding="utf-8")
    names = python_api_doc.public_names()
    assert "famix.Segmenter.predict" in names and "famix.clip.tokenize" in names
    missing = [n for n in names if f"`{n}`" not in page]
    assert not missing, f"public names missing from {PAGE}: {missing}"
