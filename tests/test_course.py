"""Course assignments: specs match the chapters, student and source notebooks, grading right, untouched and
wrong answers, a hostile submission, the CLI, and nbgrader's own commands on the course directory."""

import copy, hashlib, io, contextlib, json, shutil, subprocess
from pathlib import Path

import nbformat
import pytest

from alignbook.course.assign import assign, get_spec, make_assignment, specs
from alignbook.course.grade import grade, grade_notebook

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"

# a plausible wrong answer per chapter: (text in the solution, replacement, the question it must break)
WRONG = {
    "sft": ("token_logps.detach().exp()", "token_logps.exp()", "sft_loss_dft"),  # missing stop-gradient
    "dpo": ("torch.relu(1 - logits)", "torch.relu(1 + logits)", "dpo_variants"),  # sign slip in hinge
    "pg": ("g.std(1, unbiased=True)", "g.std(1, unbiased=False)", "grpo_advantages"),  # wrong normalisation
    "flow": ("return noise - x0", "return x0 - noise", "flow_target"),  # sign slip
    "diffusion_dpo": ("(ref_err_w - ref_err_l).detach()", "(ref_err_w - ref_err_l)", "diffusion_dpo_logits"),
    "mapo": ("err_w - beta * F.logsigmoid(", "err_w + beta * F.logsigmoid(", "mapo_loss"),  # sign slip
    "simpo": ("- gamma  # β·Δavg − γ", "+ gamma  # β·Δavg − γ", "simpo_loss"),  # margin added, not subtracted
}


def _solution(source_nb):
    "The nbgrader source notebook as a submission: the solution, hidden-test markers stripped."
    nb = copy.deepcopy(source_nb)
    for c in nb.cells:
        c.source = c.source.replace("### BEGIN HIDDEN TESTS\n", "").replace("### END HIDDEN TESTS", "")
    return nb


def _tree_hash(*dirs):
    h = hashlib.sha256()
    for d in dirs:
        for p in sorted(Path(d).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts:
                h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


def test_specs_match_chapters():
    sp = specs()
    assert len(sp) >= 6, "the course ships at least six graded chapters"
    assert {"sft", "dpo", "pg", "flow"} <= set(sp) and {"diffusion_dpo", "mapo"} & set(sp)
    assert set(WRONG) == set(sp), "every assignment has a wrong-answer test"
    for s in sp.values():
        nb = nbformat.read(NBS / f"{s.chapter}.ipynb", as_version=4)
        stu, src = make_assignment(s, nb, "student"), make_assignment(s, nb, "source")
        tests = [c for c in src.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert [c.metadata.nbgrader.points for c in tests] == [q.points for q in s.questions]
        assert all("### BEGIN HIDDEN TESTS" in c.source for c in tests)
        sols = [c for c in src.cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert sum(c.source.count("### BEGIN SOLUTION") for c in sols) == len(s.stubs)
        joined = "\n".join(c.source for c in stu.cells)
        assert joined.count("raise NotImplementedError()") == len(s.stubs)
        assert "SOLUTION" not in joined and "HIDDEN TESTS" not in joined
        for c in stu.cells + src.cells:  # no nbdev directive: an assignment never exports library code
            assert not c.source.lstrip().startswith("#|"), c.source[:60]
            assert "#| slow" not in c.source and "#| gpu" not in c.source
        assert stu.metadata["alignbook"]["assignment"] == s.name
        assert get_spec(s.chapter) is not None and s.max_score == sum(q.points for q in s.questions)


def test_assign_leaves_library_and_chapters_unchanged(tmp_path):
    before = _tree_hash(ROOT / "alignbook", NBS)
    out = assign(sorted(specs()), tmp_path)
    assert _tree_hash(ROOT / "alignbook", NBS) == before
    for ch, w in out.items():
        assert Path(w["student"]).exists() and Path(w["source"]).exists() and Path(w["hidden"]).exists()
    assert (tmp_path / "course" / "nbgrader_config.py").exists()
    for p in (
        p for p in NBS.glob("*.ipynb") if not p.name.startswith("93")
    ):  # chapters carry no grading markers, so the exported library cannot either
        text = p.read_text()
        assert "### BEGIN SOLUTION" not in text and "### BEGIN HIDDEN TESTS" not in text, p.name
    for p in (ROOT / "alignbook").rglob("*.py"):
        if "course" not in p.parts:
            assert "### BEGIN SOLUTION" not in p.read_text(), p


def test_bad_chapter_is_a_clear_error():
    with pytest.raises(ValueError, match="chapters with assignments"):
        get_spec("99_nothing")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    "Every assignment graded three ways (solution, untouched student notebook, a wrong answer), 2 at once."
    d = tmp_path_factory.mktemp("course")
    out = assign(sorted(specs()), d)
    paths, keys = [], []
    for name, s in specs().items():
        w = out[s.chapter]
        sol = _solution(nbformat.read(w["source"], as_version=4))
        for kind in ("solution", "wrong"):
            nb = copy.deepcopy(sol)
            if kind == "wrong":
                old, new, _ = WRONG[name]
                hits = sum(old in c.source for c in nb.cells)
                assert hits == 1, f"{name}: the wrong-answer edit {old!r} matches {hits} cells; update WRONG"
                for c in nb.cells:
                    c.source = c.source.replace(old, new)
            p = d / kind / name / f"{s.chapter}.ipynb"
            p.parent.mkdir(parents=True)
            nbformat.write(nb, p)
            paths.append(p)
            keys.append((name, kind))
        paths.append(Path(w["student"]))
        keys.append((name, "student"))
    res = grade(paths, jobs=2, cell_timeout=120)
    return dict(zip(keys, res["submissions"]))


@pytest.mark.parametrize("name", sorted(WRONG))
def test_grading(graded, name):
    sol, stu, wrong = (graded[(name, k)] for k in ("solution", "student", "wrong"))
    why = {q: r["message"] for q, r in sol["questions"].items() if r["points"] < r["max_points"]}
    assert sol["score"] == sol["max_score"] > 0, f"the solution loses points: {why}"
    assert stu["score"] == 0 and all(r["points"] == 0 for r in stu["questions"].values())
    broken = WRONG[name][2]
    for q, r in wrong["questions"].items():
        if q == broken:
            assert r["points"] == 0, f"{name}: the wrong answer should lose {q}"
        else:
            assert r["points"] == r["max_points"], f"{name}: the wrong answer should keep {q}: {r['message']}"


HOSTILE = """import os, pathlib
for p in pathlib.Path(".").iterdir():  # delete every file in the submission's folder
    if p.is_file():
        p.unlink()"""


def test_hostile_submission(tmp_path):
    "Hangs, kernel deaths and deleted files cost the questions they touch, never the grader or the files."
    out = assign(["simpo"], tmp_path / "a")
    nb = _solution(nbformat.read(out["24_simpo"]["source"], as_version=4))
    sol = next(c for c in nb.cells if "def simpo_loss" in c.source)
    sol.source = sol.source.replace(
        "    logits = beta *",
        "    if beta == 10.0:\n        import os\n\n        os._exit(1)\n    logits = beta *",
    )
    i = nb.cells.index(sol)
    nb.cells[i + 1 : i + 1] = [
        nbformat.v4.new_code_cell("while True:\n    pass"),
        nbformat.v4.new_code_cell("import os\nos._exit(3)"),
        nbformat.v4.new_code_cell(HOSTILE),
    ]
    folder = tmp_path / "sub"
    folder.mkdir()
    nbformat.write(nb, folder / "24_simpo.ipynb")
    (folder / "data.txt").write_text("keep me")
    r = grade_notebook(folder / "24_simpo.ipynb", cell_timeout=20)
    assert (folder / "data.txt").read_text() == "keep me" and (folder / "24_simpo.ipynb").exists()
    q = r["questions"]
    assert q["simpo_loss"]["points"] == 0 and q["simpo_loss"]["status"] == "dead", q
    assert q["simpo_bad_input"]["points"] == 1, q
    assert r["score"] == 1 and r["max_score"] == 4
    assert any("timeout" in n for n in r["notes"]) and any("dead" in n for n in r["notes"])


def test_cli_assign_and_grade(tmp_path):
    from alignbook.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["assign", "24", "--out", str(tmp_path)]) == 0
    w = json.loads(buf.getvalue())["24_simpo"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["grade", w["student"], "--json"]) == 0
    res = json.loads(buf.getvalue())
    assert res["score"] == 0 and res["max_score"] == 4
    assert set(res["submissions"][0]["questions"]) == {"simpo_loss", "simpo_bad_input"}


@pytest.mark.skipif(
    shutil.which("nbgrader") is None, reason="nbgrader is not installed (pip install -e '.[course]')"
)
def test_nbgrader_generate_and_autograde(tmp_path):
    "nbgrader's own commands on the course directory: release stubs, autograde a right and an untouched copy."
    out = assign(["simpo"], tmp_path)
    course = tmp_path / "course"

    def nbg(*args):
        r = subprocess.run(["nbgrader", *args], cwd=course, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    nbg("generate_assignment", "24_simpo", "--force")
    release = course / "release" / "24_simpo" / "24_simpo.ipynb"
    text = release.read_text()
    assert "NotImplementedError" in text and "HIDDEN TESTS" not in text and "logsigmoid(logits)" not in text
    for student, src in (("alice", release), ("bob", Path(out["24_simpo"]["source"]))):
        dst = course / "submitted" / student / "24_simpo"
        dst.mkdir(parents=True)
        shutil.copy(src, dst / "24_simpo.ipynb")
    nbg("autograde", "24_simpo", "--create", "--force")
    nbg("export")
    rows = {r.split(",")[3]: r.split(",") for r in (course / "grades.csv").read_text().splitlines()[1:]}
    assert float(rows["alice"][7]) == 0 and float(rows["bob"][7]) == 4.0, rows
