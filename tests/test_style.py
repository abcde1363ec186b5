"Exported code reads like its anchors: short lines, one statement a line, one-line docstrings."

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "alignbook"
MODULES = sorted(p for p in PKG.rglob("*.py") if p.name != "_modidx.py")
MAX = 110


def _generated_lines(text: str) -> set[int]:
    "Line numbers nbdev writes itself: the module docstring (the notebook's summary) and the `__all__` block."
    lines = text.splitlines()
    skip = {1}
    for i, line in enumerate(lines, 1):
        if line.startswith("__all__ = ["):
            j = i
            while not lines[j - 1].rstrip().endswith("]"):
                skip.add(j)
                j += 1
            skip.add(j)
    return skip


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_lines_at_most_110(path):
    text = path.read_text(encoding="utf-8")
    skip = _generated_lines(text)
    long = [i for i, line in enumerate(text.splitlines(), 1) if len(line) > MAX and i not in skip]
    assert not long, f"{path.name}: lines over {MAX} characters at {long[:10]}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_one_statement_a_line_and_one_line_docstrings(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    joined = sorted({n.lineno for n in ast.walk(tree) if isinstance(n, ast.stmt)} & _semicolon_lines(path))
    assert not joined, f"{path.name}: statements joined with ';' at lines {joined[:10]}"
    multi = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and "\n" in doc.strip():
                multi.append(node.name)
    assert not multi, f"{path.name}: multi-line docstrings in {multi[:10]} (the notebook's prose explains)"


def _semicolon_lines(path) -> set[int]:
    import tokenize

    found = set()
    with open(path, "rb") as f:
        for tok in tokenize.tokenize(f.readline):
            if tok.type == tokenize.OP and tok.string == ";":
                found.add(tok.start[0])
    return found


def test_no_module_refers_to_shared_folder():
    root = PKG.parent
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in {".py", ".ipynb", ".md", ".ini", ".toml"}]
    files = [p for p in files if ".venv" not in p.parts and "_book" not in p.parts and ".git" not in p.parts]
    folder = "../" + "shared"  # spelled in two pieces so this file does not match itself
    bad = [str(p.relative_to(root)) for p in files if folder in p.read_text(errors="ignore")]
    assert not bad, f"files pointing at the development folder outside the repo, which a user's clone does not have: {bad}"
