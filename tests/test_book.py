"""`alignbook book` on two tiny notebooks: one thread per kernel, no TCP or warnings in outputs, progress bars
in their final state, hidden and gpu cells handled, chapter titles, write-back kept by nbdev's cleaner."""

import configparser, importlib.util, json
from pathlib import Path

import nbformat
import pytest

from alignbook.book import build_book, write_back

ROOT = Path(__file__).resolve().parents[1]
HAVE_SPHINX = all(importlib.util.find_spec(m) for m in ("sphinx", "myst_nb", "sphinx_book_theme"))


def _nb(title, *cells):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {title}\n\n> one line")])
    for src in cells:
        nb.cells.append(nbformat.v4.new_code_cell(src))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    d = tmp_path_factory.mktemp("book")
    nbs = d / "nbs"
    nbs.mkdir()
    params = nbformat.v4.new_code_cell('PRESET = "gpu"')
    params.metadata["tags"] = ["parameters"]
    a = _nb(
        "Alpha chapter",
        "#| hide\nimport warnings, torch\nfrom tqdm.auto import tqdm",
        "print('threads', torch.get_num_threads())\nwarnings.warn('a library warning')",
        "for _ in tqdm(range(300), mininterval=0):\n    pass",
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]);",
        "#| gpu\nraise RuntimeError('gpu only')",
    )
    a.cells.insert(1, params)
    nbformat.write(a, nbs / "01_alpha.ipynb")
    nbformat.write(
        _nb("Beta chapter with $x^2$", "print(PRESET if 'PRESET' in dir() else 'none')"),
        nbs / "22_beta.ipynb",
    )
    res = build_book(nbs=nbs, out=d / "_book", jobs=2, site=HAVE_SPHINX, readme=None)
    return d, res


def test_execution_is_quiet(book):
    d, res = book
    assert [r["ok"] for r in res] == [True, True], res
    assert json.loads((d / "_book" / "build.json").read_text())["threads"] >= 1
    ex = nbformat.read(d / "_book" / "executed" / "01_alpha.ipynb", as_version=4)
    injected = [c for c in ex.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "PRESET = 'toy'" in injected[0].source
    text = json.dumps([c.get("outputs", []) for c in ex.cells])
    assert "threads 1" in text, "two jobs on this machine: at most cores/2 threads per kernel"
    assert "a library warning" not in text and "Warning" not in text
    assert "running over TCP" not in text
    gpu = ex.cells[-1]
    assert gpu.outputs == [] and "gpu only" in gpu.source and gpu.metadata.get("skip_execution")
    assert any(
        o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
        for c in ex.cells
        if "plt.plot" in c.source
        for o in c.outputs
    )


@pytest.mark.skipif(not HAVE_SPHINX, reason="the book tools are not installed: pip install -e '.[book]'")
def test_site(book):
    d, _ = book
    site = d / "_book"
    alpha = (site / "01_alpha.html").read_text()
    assert "<title>Alpha chapter" in alpha
    assert "import warnings, torch" not in alpha, "#| hide cells are not rendered"
    assert "#| gpu" not in alpha and "not executed" in alpha, "the skipped gpu cell is marked"
    assert alpha.count("100%") == 1 and "300/300" in alpha, "the progress bar shows its final state once"
    assert "UserWarning" not in alpha
    assert (site / "22_beta.html").exists() and "Beta chapter" in (site / "index.html").read_text()
    assert list((site / "_static" / "mathjax").glob("tex-svg.js")), "MathJax is served locally"
    assert "cdn.jsdelivr" not in (site / "22_beta.html").read_text()


def test_write_back_survives_nbdev_clean(book, tmp_path):
    from nbdev.clean import clean_nb

    d, _ = book
    src = tmp_path / "01_alpha.ipynb"
    src.write_text((d / "nbs" / "01_alpha.ipynb").read_text())
    write_back(d / "_book" / "executed" / "01_alpha.ipynb", src)
    nb = nbformat.read(src, as_version=4)
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    keys = set(cfg["DEFAULT"]["allowed_metadata_keys"].split())
    assert cfg["DEFAULT"]["clear_all"] == "False"
    clean_nb(nb, allowed_metadata_keys=keys, allowed_cell_metadata_keys={"tags"})
    assert nb.metadata["alignbook"]["preset"] == "toy" and nb.metadata["alignbook"]["version"]
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outs) and any(
        "300/300" in o.get("text", "") for o in outs
    )
    assert not any(c.metadata.get("skip_execution") for c in nb.cells)
