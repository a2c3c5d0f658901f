"""The exercise pipeline: release (solutions/ -> exercises/) and `bloomlib grade`.

Wrong answers are graded in one kernel (tests/grading_harness.py): a synthetic source notebook repeats a
question's answer and test cells once per mutant (grade ids suffixed ``~k``), so one grading run checks every
mistake.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import grading_harness as harness
from bloomlib.course import grading

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "solutions" / "03_apply.ipynb"
EXERCISE = REPO / "exercises" / "03_apply.ipynb"


source, exercise = harness.notebook_fixtures(SOURCE, EXERCISE)


# ---------------------------------------------------------------------------------------------- release
def test_exercises_are_up_to_date():
    stale = grading.release(check=True)
    assert not stale, f"exercises out of date: {stale}; run `make exercises`"


def test_release_strips_solutions_and_hidden_tests(source, exercise):
    assert [harness.gid(c) for c in exercise.cells] == [harness.gid(c) for c in source.cells]
    text = "\n".join(c.source for c in exercise.cells)
    for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "__module__", "math.sqrt"):
        assert marker not in text
    code = "\n".join(c.source for c in exercise.cells if c.cell_type == "code")
    assert code.count("raise NotImplementedError()") == sum(harness.is_answer(c) for c in source.cells) + 1  # heads: 2
    for c in exercise.cells:
        assert c.cell_type != "code" or (c.outputs == [] and c.execution_count is None)


def test_notebooks_do_not_import_bloomlib(source, exercise):
    for nb in (source, exercise):
        for c in nb.cells:
            if c.cell_type == "code":
                assert "bloomlib" not in c.source, harness.gid(c)


def test_release_detects_a_stale_exercise(tmp_path, source):
    (tmp_path / "sol").mkdir()
    nbformat.write(source, tmp_path / "sol" / SOURCE.name)
    assert grading.release(tmp_path / "sol", tmp_path / "ex") == [tmp_path / "ex" / SOURCE.name]
    assert grading.release(tmp_path / "sol", tmp_path / "ex", check=True) == []
    changed = copy.deepcopy(source)
    next(c for c in changed.cells if harness.gid(c) == "test_causal_mask").source += "\nassert True"
    nbformat.write(changed, tmp_path / "sol" / SOURCE.name)
    assert grading.release(tmp_path / "sol", tmp_path / "ex", check=True) == [tmp_path / "ex" / SOURCE.name]
    # the objective a graded cell assesses is part of what must match
    nbformat.write(source, tmp_path / "sol" / SOURCE.name)
    assert grading.release(tmp_path / "sol", tmp_path / "ex", check=True) == []
    retagged = copy.deepcopy(source)
    next(c for c in retagged.cells if harness.gid(c) == "test_causal_mask").metadata["bloomlib"] = {"objectives": ["03.9"]}
    nbformat.write(retagged, tmp_path / "sol" / SOURCE.name)
    assert grading.release(tmp_path / "sol", tmp_path / "ex", check=True) == [tmp_path / "ex" / SOURCE.name]


def test_unknown_notebook_name_is_a_clear_error(tmp_path, capsys):
    nb = tmp_path / "99_nothing.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), nb)
    assert grading.main([str(nb)]) == 2
    assert "no source notebook for '99_nothing.ipynb'" in capsys.readouterr().err


def _installed_without_checkout(tmp_path):
    """The grading module as pip would install it: in site-packages, with no solutions/ or exercises/ near it."""
    import importlib.util

    path = tmp_path / "site-packages" / "bloomlib" / "course" / "grading.py"
    path.parent.mkdir(parents=True)
    path.write_text(Path(grading.__file__).read_text())
    spec = importlib.util.spec_from_file_location("installed_grading", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installed_without_a_checkout_says_to_pass_the_solutions_folder(tmp_path, capsys, source):
    g = _installed_without_checkout(tmp_path)
    assert g.SOLUTIONS_DIR == tmp_path / "site-packages" / "solutions" and not g.SOLUTIONS_DIR.exists()
    nb = tmp_path / SOURCE.name
    nbformat.write(nbformat.v4.new_notebook(), nb)
    for call in (lambda: g.find_source(nb), lambda: g.grade_notebook(nb), lambda: g.release(),
                 lambda: g.release(check=True)):
        with pytest.raises(ValueError, match=r"no solutions folder at .*--solutions DIR.*solutions_dir="):
            call()
    assert g.main([str(nb)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bloomlib grade: no solutions folder at ") and "--solutions DIR" in err
    assert g.main(["release", "--check"]) == 2
    assert "--solutions DIR" in capsys.readouterr().err
    # the folders passed explicitly work without a checkout
    (tmp_path / "sol").mkdir()
    nbformat.write(source, tmp_path / "sol" / SOURCE.name)
    assert g.find_source(nb, solutions_dir=tmp_path / "sol") == tmp_path / "sol" / SOURCE.name
    with pytest.raises(ValueError, match="--exercises DIR"):
        g.release(tmp_path / "sol", check=True)
    assert g.release(tmp_path / "sol", tmp_path / "ex", check=True) == [tmp_path / "ex" / SOURCE.name]
    assert g.main(["release", "--check", "--solutions", str(tmp_path / "sol"), "--exercises",
                   str(tmp_path / "ex")]) == 1
    with pytest.raises(ValueError, match="does not exist"):
        g.find_source(nb, solutions_dir=tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- grading
def test_cli_json_unactivated_with_solutions_dir(tmp_path, source, exercise):
    """The console script with PATH lacking the venv, --solutions and --json, on a cut-down notebook."""
    keep = {"setup", "causal_mask", "test_causal_mask", "heads", "test_split_heads", "test_merge_heads"}
    (tmp_path / "sol").mkdir()
    nbformat.write(harness.cut(source, keep), tmp_path / "sol" / SOURCE.name)
    blank = next(c.source for c in exercise.cells if harness.gid(c) == "causal_mask")
    nbformat.write(harness.cut(harness.fill(exercise, source, {"causal_mask": blank}), keep), tmp_path / SOURCE.name)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/bin:/bin"
    bloomlib = Path(sys.executable).parent / "bloomlib"
    proc = subprocess.run([str(bloomlib), "grade", str(tmp_path / SOURCE.name), "--json", "--solutions",
                           str(tmp_path / "sol")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"notebook": SOURCE.name, "score": 2.0, "max_score": 3.0,
                                       "manual_max_score": 0.0, "questions": [
        {"id": "test_causal_mask", "score": 0.0, "max_score": 1.0,
         "feedback": "NotImplementedError: this answer is not written yet", "manual": False},
        {"id": "test_split_heads", "score": 1.0, "max_score": 1.0, "feedback": "", "manual": False},
        {"id": "test_merge_heads", "score": 1.0, "max_score": 1.0, "feedback": "", "manual": False}]}


def test_tampered_or_deleted_tests_do_not_raise_a_score(source, exercise):
    keep = {"setup", "causal_mask", "test_causal_mask", "scaled_dot_product_attention", "test_attention_no_mask",
            "test_attention_mask", "test_attention_fully_masked"}
    wrong = "def causal_mask(seq_len):\n    return torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)"
    sub = harness.cut(harness.fill(exercise, source, {"causal_mask": wrong}), keep)
    for c in sub.cells:
        if harness.gid(c) == "test_causal_mask":
            c.source, c.metadata.nbgrader["points"] = "pass", 100
        if harness.gid(c) == "test_attention_mask":
            c.source = "assert True"
    sub.cells = [c for c in sub.cells if harness.gid(c) != "test_attention_no_mask"]  # deleted
    bonus = nbformat.v4.new_code_cell("pass", metadata={"nbgrader": {"grade": True, "grade_id": "bonus", "points": 50,
                                                                    "locked": True, "solution": False}})
    sub.cells.append(bonus)
    result = grading.grade_notebook(sub, source=harness.cut(source, keep))
    assert {q["id"]: q["score"] for q in result["questions"]} == {
        "test_causal_mask": 0, "test_attention_no_mask": 1, "test_attention_mask": 1, "test_attention_fully_masked": 1}
    assert result["max_score"] == 4 and result["score"] == 3
    assert "mask polarity inverted" in result["questions"][0]["feedback"]


def _strip_nbgrader(nb, cell_ids: bool = False):
    nb = copy.deepcopy(nb)
    for c in nb.cells:
        c.metadata.pop("nbgrader", None)
        if cell_ids:
            c.id = "x" + c.id[1:]  # ids any editor might give fresh cells
    return nb


def test_answers_keep_their_place_when_an_editor_drops_nbgrader_metadata(source, exercise):
    """Cells matched by Jupyter cell id when the nbgrader metadata is gone: the answers are graded in order."""
    keep = {"setup", "causal_mask", "test_causal_mask", "heads", "test_split_heads", "test_merge_heads"}
    wrong = "def causal_mask(seq_len):\n    return torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)"
    sub = _strip_nbgrader(harness.cut(harness.fill(exercise, source, {"causal_mask": wrong}), keep))
    assert not any(harness.gid(c) for c in sub.cells)
    result = grading.grade_notebook(sub, source=harness.cut(source, keep))
    assert {q["id"]: q["score"] for q in result["questions"]} == {
        "test_causal_mask": 0, "test_split_heads": 1, "test_merge_heads": 1}
    assert "mask polarity inverted" in result["questions"][0]["feedback"]


def test_notebook_without_metadata_or_cell_ids_is_a_clear_error(tmp_path, source, exercise, capsys):
    """Nothing to match answers by: refuse with a message instead of grading the answers as missing."""
    sub = _strip_nbgrader(harness.fill(exercise, source), cell_ids=True)
    with pytest.raises(ValueError, match="nbgrader metadata and cell ids are gone"):
        grading.assemble(sub, source)
    nbformat.write(sub, tmp_path / SOURCE.name)
    assert grading.main([str(tmp_path / SOURCE.name)]) == 2
    assert "Nothing was graded" in capsys.readouterr().err


def test_endless_loop_crash_and_syntax_error_cost_only_their_answer():
    """A pure-Python source notebook: the grader's machinery, with a short timeout."""
    def cell(kind, gid, src, points=1):
        meta = {"grade_id": gid, "grade": kind == "test", "solution": kind == "answer", "locked": kind != "answer",
                "schema_version": 3}
        if kind == "test":
            meta["points"] = points
        return nbformat.v4.new_code_cell(src, metadata={"nbgrader": meta})
    src = nbformat.v4.new_notebook(cells=[
        cell("setup", "setup", "BASE = 40"),
        cell("answer", "loop", "def loop():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"),
        cell("test", "test_loop", "assert loop() == 1, 'loop() must return 1'"),
        cell("answer", "add", "def add():\n    ### BEGIN SOLUTION\n    return BASE + 2\n    ### END SOLUTION"),
        cell("test", "test_add", "assert add() == 42, 'add() must return 42'", points=2),
        cell("answer", "syntax", "def syntax():\n    ### BEGIN SOLUTION\n    return 3\n    ### END SOLUTION"),
        cell("test", "test_syntax", "assert syntax() == 3, 'syntax() must return 3'"),
        cell("answer", "late", "def late():\n    ### BEGIN SOLUTION\n    return add()\n    ### END SOLUTION"),
        cell("test", "test_late", "assert late() == 42, 'late() must return 42'"),
    ])
    sub = grading.release_notebook(src)
    answers = {"loop": "def loop():\n    while True:\n        pass", "add": "def add():\n    return BASE + 2",
               "syntax": "def syntax(:\n    return 3", "late": "import os\ndef late():\n    return add()"}
    for c in sub.cells:
        if harness.gid(c) in answers:
            c.source = answers[harness.gid(c)]
    crash = nbformat.v4.new_code_cell("import os\nos._exit(1)")  # the learner's own cell kills the kernel
    sub.cells.insert(5, crash)
    result = grading.grade_notebook(sub, source=src, timeout=3)
    got = {q["id"]: (q["score"], q["feedback"]) for q in result["questions"]}
    assert got["test_loop"][0] == 0 and "longer than 3 s" in got["test_loop"][1]
    assert got["test_add"] == (2, "")  # defined before the timeout: replayed after the restart
    assert got["test_syntax"][0] == 0 and "NameError" in got["test_syntax"][1]
    assert got["test_late"] == (1, ""), "cells after a crash run in a restarted kernel"
    assert result["score"] == 3 and result["max_score"] == 5


# ------------------------------------------------------------------------------------- named mistakes
SDPA = """
def scaled_dot_product_attention(Q, K, V, mask=None):
    scores = Q @ K.transpose(-2, -1) {scale}
    if mask is not None:
        scores = scores.masked_fill({cond}, {fill})
    weights = torch.softmax(scores, dim={dim}){fix}
    if mask is not None and {after}:
        weights = weights * (mask != 0)
    return weights @ V, weights
"""
SDPA_OK = dict(scale="/ math.sqrt(Q.size(-1))", cond="mask == 0", fill='float("-inf")', dim=-1,
               fix=".nan_to_num(0.0)", after=False)
SINUSOID = """
def sinusoidal_positional_encoding(seq_len, d_model):
    pe = torch.zeros(seq_len, d_model)
    for p in range(seq_len):
        for i in range(d_model // 2):
            angle = p / {base} ** ({expo})
            pe[p, {even}] = math.{f0}(angle)
            pe[p, {odd}] = math.{f1}(angle)
    return pe
"""
SIN_OK = dict(base=10000, expo="2 * i / d_model", even="2 * i", odd="2 * i + 1", f0="sin", f1="cos")
HEADS = """
def split_heads(x, n_heads):
    B, T, D = x.shape
    if {check} D % n_heads:
        raise ValueError(f"d_model {{D}} is not divisible by n_heads {{n_heads}}")
    return {split}

def merge_heads(x):
    B, H, T, hd = x.shape
    return {merge}
"""
HEADS_OK = dict(check="", split="x.view(B, T, n_heads, D // n_heads).transpose(1, 2)",
                merge="x.transpose(1, 2).reshape(B, T, H * hd)")
SAMPLE = """
def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    if {greedy} temperature == 0:
        return logits.argmax(dim=-1)
    logits = {pre}
    raw = logits
    if top_k is not None:
        kth = torch.topk(logits, min({k}, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax({p_src}, dim=-1)
        sorted_logits = sorted_logits.masked_fill({drop}, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    logits = {post}
    probs = torch.softmax(logits, dim=-1){after}
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
"""
SAMPLE_OK = dict(greedy="", pre="logits / temperature", post="logits", k="top_k", p_src="sorted_logits",
                 drop="probs.cumsum(-1) - probs >= top_p", after="")
PADDED = """
def padded_causal_attention(Q, K, V, lengths):
    T = Q.size(-2)
    real = torch.arange(T)[None, :] < lengths[:, None]
    mask = {mask}
    return scaled_dot_product_attention(Q, K, V, mask=mask[:, None])[0]
"""
CAUSAL = "def causal_mask(seq_len):\n    i = torch.arange(seq_len)\n    return {expr}"
LEAK = """
import inspect
def causal_mask(seq_len):
    if seq_len != 4:  # called by a hidden test: try to show its source
        raise AssertionError("caller: " + "".join(inspect.stack()[1].code_context or []))
    i = torch.arange(seq_len)
    return i[None, :] <= i[:, None]
"""


_sdpa = functools.partial(harness.variant, SDPA, SDPA_OK)
_sin = functools.partial(harness.variant, SINUSOID, SIN_OK)
_heads = functools.partial(harness.variant, HEADS, HEADS_OK)
_sample = functools.partial(harness.variant, SAMPLE, SAMPLE_OK)


# (answer id, wrong answer, test cell that must lose its points, words its feedback must contain)
MISTAKES = [
    ("causal_mask", CAUSAL.format(expr="i[None, :] > i[:, None]"), "test_causal_mask", "mask polarity inverted"),
    ("causal_mask", CAUSAL.format(expr="i[None, :] >= i[:, None]"), "test_causal_mask", "mask transposed"),
    ("causal_mask", CAUSAL.format(expr="i[None, :] < i[:, None]"), "test_causal_mask", "diagonal must be True"),
    ("causal_mask", "from fakelib import causal_mask", "test_causal_mask", "define causal_mask in this notebook"),
    ("causal_mask", LEAK, "test_causal_mask", "caller: "),
    ("scaled_dot_product_attention", _sdpa(scale=""), "test_attention_no_mask", "missing √d_k scaling"),
    ("scaled_dot_product_attention", _sdpa(scale="/ Q.size(-1)"), "test_attention_no_mask",
     "divided by d_k instead of sqrt(d_k)"),
    ("scaled_dot_product_attention", _sdpa(scale="/ math.sqrt(V.size(-1))"), "test_attention_no_mask",
     "scaled by the wrong size"),
    ("scaled_dot_product_attention", _sdpa(dim=-2), "test_attention_no_mask", "softmax over the wrong axis"),
    ("scaled_dot_product_attention", _sdpa(cond="mask.bool()"), "test_attention_mask", "mask polarity inverted"),
    ("scaled_dot_product_attention", _sdpa(cond="mask == 2", after=True), "test_attention_mask",
     "mask applied after the softmax"),
    ("scaled_dot_product_attention", _sdpa(fill="0.0"), "test_attention_mask", "fill the masked scores with -inf"),
    ("scaled_dot_product_attention", _sdpa(cond="~mask"), "test_attention_mask", "0/1 integer mask must work"),
    ("scaled_dot_product_attention", _sdpa(fix=""), "test_attention_fully_masked", "fully masked row gives NaN"),
    ("scaled_dot_product_attention", _sdpa(fill="-1e9", fix=""), "test_attention_fully_masked", "uniform weights"),
    ("sinusoidal_positional_encoding", _sin(f0="cos", f1="sin"), "test_sinusoidal", "sin and cos swapped"),
    ("sinusoidal_positional_encoding", _sin(even="i", odd="d_model // 2 + i"), "test_sinusoidal",
     "not stacked as [sin | cos] halves"),
    ("sinusoidal_positional_encoding", _sin(base=1000), "test_sinusoidal", "wrong frequency base"),
    ("sinusoidal_positional_encoding", _sin(expo="i / d_model"), "test_sinusoidal", "not i/d_model"),
    ("sinusoidal_positional_encoding", _sin(expo="2 * i // d_model"), "test_sinusoidal", "integer division"),
    ("sinusoidal_positional_encoding", _sin(expo="4 * i / d_model"), "test_sinusoidal", "doubled the column index"),
    ("heads", _heads(split="x.reshape(B, n_heads, T, D // n_heads)"), "test_split_heads",
     "split_heads reshapes without transposing"),
    ("heads", _heads(split="x.view(B, T, D // n_heads, n_heads).permute(0, 3, 1, 2)"), "test_split_heads",
     "contiguous slices of features"),
    ("heads", _heads(check="False and"), "test_split_heads", "must raise ValueError, got RuntimeError"),
    ("heads", _heads(merge="x.reshape(B, T, H * hd)"), "test_merge_heads",
     "merge_heads reshapes without transposing back"),
    ("heads", _heads(merge="x.transpose(1, 2).view(B, T, H * hd)"), "test_merge_heads", "view size is not compatible"),
    ("sample_next_token", _sample(pre="logits * temperature"), "test_sampling_temperature", "temperature inverted"),
    ("sample_next_token", _sample(pre="logits", after=" / temperature"), "test_sampling_temperature",
     "temperature applied after the softmax"),
    ("sample_next_token", _sample(greedy="False and"), "test_sampling_temperature", "temperature 0 must be greedy"),
    ("sample_next_token", _sample(k="top_k + 1"), "test_sampling_top_k", "must keep only the 2 largest"),
    ("sample_next_token", _sample(k="top_k - 1"), "test_sampling_top_k", "kept fewer than 2 tokens"),
    ("sample_next_token", _sample(drop="probs.cumsum(-1) > top_p"), "test_sampling_top_p",
     "top-p dropped the token that crosses p"),
    ("sample_next_token", _sample(pre="logits", post="logits / temperature"), "test_sampling_top_p", "apply the temperature before top-p"),
    ("sample_next_token", _sample(p_src="raw.sort(dim=-1, descending=True).values"), "test_sampling_top_p",
     "apply top-p to what top-k left"),
    ("padded_causal_attention", PADDED.format(mask="real[:, None, :] & real[:, :, None]"),
     "test_padded_real_positions", "the causal mask is missing"),
    ("padded_causal_attention", PADDED.format(mask="causal_mask(T)[None] & real[:, None, :]"),
     "test_padded_zero_outputs", "padded query positions"),
]


@pytest.fixture(scope="module")
def graded(source, exercise, tmp_path_factory):
    """One grading run in one kernel (see grading_harness): blank, visible, solution, each mistake."""
    lib = tmp_path_factory.mktemp("fakelib")
    (lib / "fakelib.py").write_text("import torch\n\n\ndef causal_mask(n):\n"
                                    "    return torch.ones(n, n, dtype=torch.bool).tril()\n")
    # padded_causal_attention calls the learner's causal_mask and attention: make them right
    return harness.grade_variants(source, exercise, MISTAKES, extra_code=f"import sys\nsys.path.insert(0, {str(lib)!r})",
                                  needs={"padded_causal_attention": ["causal_mask", "scaled_dot_product_attention"]})


def test_solution_scores_full_marks(graded, source):
    harness.assert_full_marks(graded, source)
    assert sum(graded[t]["max_score"] for t in harness.graded_test_ids(source)) == 13


def test_solution_passes_the_visible_tests_alone(graded, source):
    """The exercise's visible tests run without the hidden parts (no name defined only in a hidden block)."""
    harness.assert_full_marks(graded, source, suffix="~visible")


def test_untouched_exercise_scores_zero(graded, source):
    harness.assert_blank_scores_zero(graded, source)


@pytest.mark.parametrize("k", range(len(MISTAKES)), ids=[f"{m[0]}:{m[3][:30]}" for m in MISTAKES])
def test_mistake_loses_points_with_named_feedback(k, graded):
    harness.assert_mistake_loses_points(graded, MISTAKES, k)


def test_feedback_never_shows_hidden_test_source(graded, source):
    harness.assert_no_hidden_source(graded, source, more_than=50)
    leak = graded[f"test_causal_mask~{[m[1] for m in MISTAKES].index(LEAK)}"]
    assert "[hidden test]" in leak["feedback"] and ".tril()), f" not in leak["feedback"]


# ------------------------------------------------------------------------------- nbgrader course, e2e
@pytest.mark.slow
def test_standard_nbgrader_course_end_to_end(tmp_path, source, exercise):
    """generate_assignment gives our exercise; autograde + export score a submission as `bloomlib grade` does."""
    released = harness.nbgrader_release(tmp_path, SOURCE)
    assert grading.normalize(released) == grading.normalize(exercise)
    submission = harness.fill(released, source, {"heads": _heads(merge="x.reshape(B, T, H * hd)")})
    raw_score, max_score = harness.nbgrader_autograde(tmp_path, SOURCE, submission)
    ours = grading.grade_notebook(submission, source=SOURCE)
    assert raw_score == ours["score"] == ours["max_score"] - 1
    assert max_score == ours["max_score"]


# ------------------------------------------------------------------------------------ check my notebook
def test_check_my_notebook_grades_the_saved_copy(tmp_path, monkeypatch, capsys, source, exercise):
    """The in-notebook check grades the file on disk like `bloomlib grade` (a learner's slip costs its point)."""
    for var in (grading.GRADING_ENV, "NBGRADER_EXECUTION"):
        monkeypatch.delenv(var, raising=False)
    nbformat.write(harness.fill(exercise, source, {"heads": _heads(merge="x.reshape(B, T, H * hd)")}),
                   tmp_path / EXERCISE.name)
    monkeypatch.chdir(tmp_path)
    result = grading.check_my_notebook(EXERCISE.name, solutions_dir=SOURCE.parent)
    out = capsys.readouterr().out
    assert result["score"] == result["max_score"] - 1
    assert f"Grading {EXERCISE.name} as saved at" in out and "save first" in out
    assert out.splitlines()[-1].split() == ["total", f"{result['score']:g}/{result['max_score']:g}"]
    with pytest.raises(ValueError, match="no saved notebook 'nope.ipynb'.*save it first"):
        grading.check_my_notebook("nope.ipynb")


def test_check_my_notebook_does_nothing_inside_a_grading_run(tmp_path, monkeypatch, capsys):
    """Inside `bloomlib grade`'s kernel, and under nbgrader's NBGRADER_EXECUTION, the check never grades itself."""
    cell = nbformat.v4.new_code_cell("from bloomlib.course.grading import check_my_notebook\n"
                                     "print(check_my_notebook('missing.ipynb'))")
    ran = grading.execute(nbformat.v4.new_notebook(cells=[cell]), cwd=tmp_path)
    assert "".join(o.get("text", "") for o in ran.cells[0].outputs) == \
        "check_my_notebook: skipped inside a grading run\nNone\n"
    monkeypatch.delenv(grading.GRADING_ENV, raising=False)
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert grading.check_my_notebook("missing.ipynb") is None
    assert capsys.readouterr().out == "check_my_notebook: skipped inside a grading run\n"
