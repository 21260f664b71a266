#!/usr/bin/env python3
"""Writes the guide's Python API page from the installed `famix` package's own
signatures and docstrings, so the page cannot drift from the package.

    python/.venv/bin/python tools/python_api_doc.py docs/src/python-api.md   # make python-api
    python/.venv/bin/python tools/python_api_doc.py --check docs/src/python-api.md

Every public name (each name in ``famix.__all__`` and ``famix.clip.__all__``, and
the public methods and properties of the classes among them) gets a heading with its
signature and its docstring. `--check` exits 1 when the file differs from what would be
written (the pytest suite runs the same comparison).
"""

import argparse
import inspect
import re
import sys
import textwrap

import famix
import famix.clip

HEADER = """# Python API

Generated from the `famix` package's signatures and docstrings
(`make python-api`; a test fails when this page differs from the installed package).
Install with `make python`; see [famix from Python](tutorials/python.md) for a tour.
"""


SECTIONS = ("Args", "Arguments", "Returns", "Raises", "Yields", "Example", "Examples", "Note", "Notes")


def _markdown(doc):
    """A Google-style docstring as Markdown: reST roles and double backticks become
    code spans; `Args:`-style sections become a bold title and a list."""
    doc = re.sub(r":(?:class|meth|func|attr|mod|exc):`~?([^`]+)`", r"`\1`", doc)
    doc = doc.replace("``", "`")
    out, section = [], False
    for line in doc.split("\n"):
        title = line.strip().rstrip(":")
        if line.strip().endswith(":") and title in SECTIONS and not line.startswith(" "):
            out += ["", f"**{title}**", ""]
            section = True
        elif section and line.startswith("    ") and not line.startswith("        "):
            item = line.strip()
            name, sep, rest = item.partition(": ")
            out.append(f"- `{name}`: {rest}" if sep and " " not in name.strip(",") else f"- {item}")
        elif section and line.startswith("        "):
            out[-1] += " " + line.strip()
        else:
            section = section and bool(line.strip())
            out.append(line)
    return "\n".join(out)


def _doc(obj):
    d = inspect.getdoc(obj)
    return _markdown(textwrap.dedent(d).strip()) if d else "(no docstring)"


def _annotation(a):
    return a if isinstance(a, str) else inspect.formatannotation(a)


def _signature(name, obj):
    """`name(arg: type = default, ...) -> type`, with the annotations as written."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    parts, star = [], False
    for p in sig.parameters.values():
        if p.kind == p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.kind == p.VAR_POSITIONAL:
            star = True
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation).strip(chr(39))}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        parts.append(text)
    ret = ""
    if sig.return_annotation is not sig.empty:
        ret = f" -> {_annotation(sig.return_annotation).strip(chr(39)).strip(chr(34)).strip(chr(39))}"
    return f"{name}({', '.join(parts)}){ret}"


def _members(cls):
    """Public methods and properties defined by the class itself, in source order."""
    out = []
    for n, v in cls.__dict__.items():
        if n.startswith("_") and n not in ("__len__",):
            continue
        if isinstance(v, property):
            out.append((n, "property", v))
        elif isinstance(v, (staticmethod, classmethod)):
            out.append((n, "static", v.__func__))
        elif inspect.isfunction(v):
            out.append((n, "method", v))
    return out


def _class(qual, cls):
    lines = [f"### `{qual}`", "", "```python", f"class {qual}", "```", "", _doc(cls), ""]
    if issubclass(cls, BaseException):
        base = next((b.__name__ for b in cls.__mro__[1:] if b.__module__.startswith("famix")), cls.__mro__[1].__name__)
        lines[-2:-1] = [_doc(cls), "", f"Subclass of `{base}`."]
        return lines
    for n, kind, v in _members(cls):
        lines += [f"#### `{qual}.{n}`", ""]
        if kind == "property":
            lines += ["```python", f"{qual}.{n}  # property", "```"]
        else:
            lines += ["```python", _signature(f"{qual}.{n}", v), "```"]
        lines += ["", _doc(v), ""]
    return lines


def _entry(qual, obj):
    if inspect.isclass(obj):
        return _class(qual, obj)
    if inspect.ismodule(obj):
        return []
    if callable(obj):
        return [f"### `{qual}`", "", "```python", _signature(qual, obj), "```", "", _doc(obj), ""]
    return [f"### `{qual}`", "", "```python", f"{qual} = {obj!r}", "```", ""]


def render():
    lines = [HEADER, "## `famix`", "", _doc(famix), ""]
    for name in famix.__all__:
        lines += _entry(f"famix.{name}", getattr(famix, name))
    lines += ["## `famix.clip`", "", _doc(famix.clip), ""]
    for name in famix.clip.__all__:
        lines += _entry(f"famix.clip.{name}", getattr(famix.clip, name))
    text = "\n".join(lines)
    # One blank line between blocks, none at the end of lines, one newline at the end.
    text = "\n".join(l.rstrip() for l in text.split("\n"))
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"


def public_names():
    """Every name the page must show: module-level names and class members."""
    names = []
    for mod, prefix in ((famix, "famix."), (famix.clip, "famix.clip.")):
        for n in mod.__all__:
            obj = getattr(mod, n)
            if inspect.ismodule(obj):
                continue
            names.append(prefix + n)
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                names += [f"{prefix}{n}.{m}" for m, _, _ in _members(obj)]
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    a = ap.parse_args()
    text = render()
    if a.check:
        with open(a.out, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{a.out} is stale: run `make python-api`", file=sys.stderr)
                return 1
        return 0
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
