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


def test_the_readme_and_guide_examples_run_in_the_package_environment(tmp_path, monkeypatch):
    # Each page's first Python block, with its checkpoint and image paths pointed at the
    # fixtures, runs in this environment (the one `make python` creates) and writes its
    # overlay.
    import re
    from conftest import fixture
    monkeypatch.chdir(tmp_path)
    for page in [ROOT / "README.md", ROOT / "docs" / "src" / "tutorials" / "python.md"]:
        code = re.search(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S).group(1)
        code = re.sub(r'"runs/[^"]+\.safetensors"', repr(str(fixture("seg_a_ref.pth"))), code)
        code = code.replace('"street.png"', repr(str(fixture("img_a.png"))))
        exec(compile(code, str(page), "exec"), {})
        assert (tmp_path / "overlay.png").stat().st_size > 1000, page
        (tmp_path / "overlay.png").unlink()
