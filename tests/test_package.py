"The wheel installs the library with runtime dependencies only, and every module imports without dev tools."

import subprocess, sys, zipfile, textwrap
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEV_ONLY = (
    "nbdev",
    "fastcore",
    "execnb",
    "jupyterlab",
    "notebook",
    "ipywidgets",
    "IPython",
    "ipykernel",
    "trl",
    "pytest",
    "jupytext",
    "nbformat",
    "nbconvert",
    "nbclient",
)  # (not hypothesis: torch._dynamo probes for it)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("alignbook-*.whl"))


def test_wheel_requires_runtime_only(wheel):
    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))
    reqs = [
        line.split(":", 1)[1].strip()
        for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    runtime = [r for r in reqs if "extra ==" not in r]
    assert any(r.startswith("torch") for r in runtime) and any(r.startswith("transformers") for r in runtime)
    bad = [
        r
        for r in runtime
        if r.split(">")[0].split("=")[0].split("<")[0].strip().lower() in {d.lower() for d in DEV_ONLY}
    ]
    assert not bad, f"dev-only packages among runtime requirements: {bad}"


def test_wheel_ships_toy_base_and_cli(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert (
        "alignbook/assets/toy-base/model.safetensors" in names
        and "alignbook/assets/toy-base/tokenizer.json" in names
    )
    ep = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "alignbook = alignbook.cli:main" in ep


def test_every_module_imports_without_dev_tools(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = textwrap.dedent(f"""
        import sys, importlib, importlib.abc, pkgutil
        BLOCK = {DEV_ONLY!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in BLOCK:
                    raise ModuleNotFoundError(f'dev-only package {{name}} imported at import time', name=name)
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(tmp_path / "site")!r})
        import alignbook
        assert alignbook.__file__.startswith({str(tmp_path / "site")!r}), alignbook.__file__
        mods = [m.name for m in pkgutil.walk_packages(alignbook.__path__, 'alignbook.') if not m.name.endswith('__main__')]
        for m in mods: importlib.import_module(m)
        from alignbook.config import load_plugins
        print(len(mods), sorted(load_plugins()))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sft" in r.stdout
