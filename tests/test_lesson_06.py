"""Lesson 06's graded exercise (solutions/06_create.ipynb -> exercises/06_create.ipynb): blank scores 0, the solution
full marks, every planted mistake loses points with feedback that names it (tests/grading_harness.py), and the
written design is left to a human, by us and by nbgrader alike."""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

import grading_harness as harness
from bloomlib.course import grading

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "solutions" / "06_create.ipynb"
EXERCISE = REPO / "exercises" / "06_create.ipynb"
OBJECTIVES = {"06.1", "06.2", "06.3", "06.4", "06.5", "06.6"}
AUTO_POINTS, MANUAL_POINTS = 13, 2
MANUAL = "design"

source, exercise = harness.notebook_fixtures(SOURCE, EXERCISE)


# ------------------------------------------------------------------------------------------ structure
def test_exercise_is_released_from_the_source_without_answers_or_rubric(source, exercise):
    assert grading.normalize(grading.release_notebook(source)) == grading.normalize(exercise)
    text = "\n".join(c.source for c in exercise.cells)
    for marker in ("BEGIN HIDDEN TESTS", "BEGIN SOLUTION", "Rubric"):
        assert marker not in text
    for cell in filter(harness.is_answer, source.cells):
        body = cell.source.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0]
        for line in filter(None, (l.strip() for l in body.splitlines())):
            assert line not in text, (harness.gid(cell), line)
    for nb in (source, exercise):
        assert not any("bloomlib" in c.source for c in nb.cells if c.cell_type == "code")


def test_every_graded_cell_names_objectives_of_lesson_06(source):
    harness.assert_graded_cells_name_objectives(source, OBJECTIVES)


def test_points_table_and_headings_match_the_cells(source):
    by_id = {harness.gid(c): c for c in source.cells}
    rows = re.findall(r"^\| (\d+) \| .+? \| ([\d., ]+) \| (\d+) \|$", source.cells[0].source, re.M)
    headings = [int(m) for c in source.cells if c.cell_type == "markdown"
                for m in re.findall(r"^## \d+ · .+\((\d+) points?(?:, marked by hand)?\)$", c.source, re.M)]
    qs = harness.questions(source)
    assert len(rows) == len(qs) == len(headings)
    for (number, objectives, points), (answer, tests), heading in zip(rows, qs.items(), headings):
        graded = tests or [answer]
        assert int(points) == heading == sum(by_id[t].metadata.nbgrader["points"] for t in graded), answer
        assert {o.strip() for o in objectives.split(",")} == {o for t in graded for o in harness.objectives_of(by_id[t])}
    assert sum(int(r[2]) for r in rows) == AUTO_POINTS + MANUAL_POINTS


# ------------------------------------------------------------------------------------------ mistakes
ONLINE = """
def online_softmax_attention(q, k, v, block_size):
    scale = {scale}
    m = torch.full(q.shape[:-1] + (1,), float("-inf"), dtype=q.dtype)
    l = torch.zeros_like(m)
    o = torch.zeros(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype)
    for start in range(0, {stop}, block_size):
        kb, vb = k[..., start:start + block_size, :], v[..., start:start + block_size, :]
        s = (q @ kb.transpose(-1, -2)) * scale
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        p = torch.exp(s - m_new)
        c = torch.exp(m - m_new)
        l = {l_update}
        o = {o_update}
        m = m_new
    return o / l
"""
ONLINE_OK = dict(scale="1 / math.sqrt(q.shape[-1])", stop="k.shape[-2]", l_update="l * c + p.sum(-1, keepdim=True)",
                 o_update="o * c + p @ vb")
NO_MAX = """
def online_softmax_attention(q, k, v, block_size):
    l, o = 0, 0
    for start in range(0, k.shape[-2], block_size):
        kb, vb = k[..., start:start + block_size, :], v[..., start:start + block_size, :]
        p = torch.exp((q @ kb.transpose(-1, -2)) / math.sqrt(q.shape[-1]))
        l, o = l + p.sum(-1, keepdim=True), o + p @ vb
    return o / l
"""
ALLOC = """
class BlockAllocator:
    def __init__(self, num_blocks):
        self.free_ids, self.refs = list(range(num_blocks)), {{}}

    def allocate(self):
        if {none_free}:
            raise RuntimeError("no free block")
        block = self.free_ids.pop(0)
        self.refs[block] = 1
        return block

    def fork(self, block):
        if block not in self.refs:
            raise ValueError("not allocated")
        self.refs[block] += {fork_adds}
        return block

    def free(self, block):
        if {check_free}block not in self.refs:
            raise ValueError("not allocated")
        self.refs[block] = self.refs.get(block, 1) - {free_takes}
        if self.refs[block] <= 0:
            del self.refs[block]
            self.free_ids.append(block)

    {prop}
    def num_free(self):
        return len(self.free_ids)
"""
ALLOC_OK = dict(none_free="not self.free_ids", fork_adds="1", check_free="", free_takes="1", prop="@property")
SPEC = """
def speculative_accept(p, q, token, u):
    return {accept}


def residual_distribution(p, q):
    r = {residual}
    return {ret}
"""
SPEC_OK = dict(accept="bool(u < min(1.0, float(p[token] / q[token])))", residual="torch.clamp(p - q, min=0)",
               ret="r / r.sum()")
VARIANTS = ('variant_for = {{"autocomplete": {a}, "ticket search": {b}, "subtitles": {c}, "photo search": {d}, '
            '"defect detection": {e}}}')
VARIANTS_OK = dict(a='"a"', b='"b"', c='"c"', d='"e"', e='"d"')
BUDGET = "concurrent_requests = {n}\nkv_cache_gib = {gib}"
BUDGET_OK = dict(n="200", gib="200 * 1200 * 2 * 32 * 8 * 128 * 2 / 2**30")

_online = functools.partial(harness.variant, ONLINE, ONLINE_OK)
_alloc = functools.partial(harness.variant, ALLOC, ALLOC_OK)
_spec = functools.partial(harness.variant, SPEC, SPEC_OK)
_variants = functools.partial(harness.variant, VARIANTS, VARIANTS_OK)
_budget = functools.partial(harness.variant, BUDGET, BUDGET_OK)
_gib = functools.partial(_budget, n="200")

M = harness.Mistake
MISTAKES = [
    M("variant_for", _variants(a='"c"'), "test_variant_for", "autocomplete continues the text"),
    M("variant_for", _variants(b='"a"'), "test_variant_for", "search compares meanings"),
    M("variant_for", _variants(b='"e"'), "test_variant_for", "tickets are text only"),
    M("variant_for", _variants(c='"a"'), "test_variant_for", "speech in, text out"),
    M("variant_for", _variants(c='"b"'), "test_variant_for", "an encoder alone cannot produce"),
    M("variant_for", _variants(d='"d"'), "test_variant_for", "a ViT alone knows no words"),
    M("variant_for", _variants(d='"b"'), "test_variant_for", "a text encoder cannot read photos"),
    M("variant_for", _variants(e='"e"'), "test_variant_for", "no text is involved"),
    M("variant_for", _variants(e='"b"'), "test_variant_for", "a BERT-style encoder reads tokens of text"),
    M("variant_for", _variants(a='"b"'), "test_variant_for", "not the variant the decision tree gives for: autocomplete"),
    M("variant_for", _variants(a='"f"'), "test_variant_for", "each value must be one letter"),
    M("variant_for", 'variant_for = {"autocomplete": "a"}', "test_variant_for", "exactly these keys"),
    M("online_softmax_attention", _online(o_update="o + p @ vb"), "test_online_softmax", "rescaled by exp(m_old - m_new)"),
    M("online_softmax_attention", _online(l_update="l + p.sum(-1, keepdim=True)"), "test_online_softmax",
      "rescaled by exp(m_old - m_new)"),
    M("online_softmax_attention", _online(scale="1.0"), "test_online_softmax", "no 1/sqrt(d)"),
    M("online_softmax_attention", _online(stop="k.shape[-2] - k.shape[-2] % block_size"),
      "test_online_softmax_partial", "the last partial block was dropped"),
    M("online_softmax_attention", NO_MAX, "test_online_softmax_partial", "subtract the running maximum"),
    M("online_softmax_attention", "def online_softmax_attention(q, k, v, block_size):\n"
      "    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v",
      "test_online_softmax_blocks", "the whole (n_q, n_k)"),
    M("online_softmax_attention", "def online_softmax_attention(q, k, v, block_size):\n"
      "    return F.scaled_dot_product_attention(q, k, v)", "test_online_softmax_blocks",
      "uses torch.nn.functional.scaled_dot_product_attention, which answers may not use"),
    M("online_softmax_attention", "from fakelib import online_softmax_attention", "test_online_softmax",
      "define online_softmax_attention in this notebook"),
    M("BlockAllocator", _alloc(free_takes="self.refs.get(block, 1)"), "test_allocator_sharing",
      "freed while still referenced"),
    M("BlockAllocator", _alloc(fork_adds="0"), "test_allocator_sharing", "freed while still referenced"),
    M("BlockAllocator", _alloc(none_free="False"), "test_allocator_allocate", "must raise RuntimeError, got IndexError"),
    M("BlockAllocator", _alloc(none_free="False").replace("block = self.free_ids.pop(0)",
                                                          "block = self.free_ids.pop(0) if self.free_ids else 0"),
      "test_allocator_allocate", "handed out block 0 when none was free"),
    M("BlockAllocator", _alloc(check_free="False and "), "test_allocator_errors", "a double free was accepted"),
    M("BlockAllocator", _alloc(check_free="False and ").replace("self.refs.get(block, 1)", "self.refs[block]"),
      "test_allocator_errors", "raise ValueError, got KeyError"),
    M("BlockAllocator", _alloc(prop=""), "test_allocator_allocate", "is num_free a property?"),
    M("BlockAllocator", "from fakelib import BlockAllocator", "test_allocator_allocate",
      "define BlockAllocator in this notebook"),
    M("speculative", _spec(accept="bool(u < min(1.0, float(q[token] / p[token])))"), "test_speculative_accept",
      "the acceptance ratio is inverted"),
    M("speculative", _spec(accept="bool(u > float(p[token] / q[token]))"), "test_speculative_accept",
      "accept when u < p[x] / q[x]"),
    M("speculative", _spec(accept="bool(u < float(p[token]))"), "test_speculative_accept",
      "accept when u < p[x] / q[x]"),
    M("speculative", _spec(ret="r"), "test_residual", "not renormalised"),
    M("speculative", _spec(residual="torch.clamp(q - p, min=0)"), "test_residual", "max(0, q - p)"),
    M("speculative", _spec(residual="p.clone()"), "test_residual", "expected norm(max(0, p - q))"),
    M("speculative", _spec(ret="(r / r.sum()).float()"), "test_residual", "keep the dtype of p"),
    M("tokens_per_pass", "tokens_per_pass = (1 - 0.7 ** 3) / (1 - 0.7)", "test_tokens_per_pass", "γ + 1 in the exponent"),
    M("tokens_per_pass", "tokens_per_pass = (1 - 0.7 ** 4) / (1 - 0.7) - 1", "test_tokens_per_pass",
      "counts the accepted drafts only"),
    M("tokens_per_pass", "tokens_per_pass = 1 + 3 * 0.7", "test_tokens_per_pass", "α·γ + 1"),
    M("tokens_per_pass", "tokens_per_pass = 4", "test_tokens_per_pass", "the best case"),
    M("tokens_per_pass", "tokens_per_pass = 2.0", "test_tokens_per_pass", "with α = 0.7, γ = 3 is 2.53"),
    M("tokens_per_pass", "tokens_per_pass = 7", "test_tokens_per_pass", "at most γ + 1 = 4"),
    M("tokens_per_pass", 'tokens_per_pass = "2.53"', "test_tokens_per_pass", "must be a number"),
    M("routing_choice", 'routing_choice = "a"', "test_routing_choice", "round-robin makes every replica compute"),
    M("routing_choice", 'routing_choice = "c"', "test_routing_choice", "random routing misses"),
    M("routing_choice", 'routing_choice = "d"', "test_routing_choice", "one replica caps throughput"),
    M("budget", _budget(n="2"), "test_concurrent_requests", "inverts Little's law"),
    M("budget", _budget(n="20"), "test_concurrent_requests", "that is the arrival rate"),
    M("budget", _budget(n="10"), "test_concurrent_requests", "that is one request's time"),
    M("budget", _budget(n="150"), "test_concurrent_requests", "Little's law: requests in flight"),
    M("budget", _gib(gib="200 * 1200 * 32 * 8 * 128 * 2 / 2**30"), "test_kv_cache_gib", "without the factor 2"),
    M("budget", _gib(gib="200 * 1200 * 2 * 32 * 32 * 128 * 2 / 2**30"), "test_kv_cache_gib", "with the 32 query heads"),
    M("budget", _gib(gib="200 * 1000 * 2 * 32 * 8 * 128 * 2 / 2**30"), "test_kv_cache_gib", "only the prompt tokens"),
    M("budget", _gib(gib="200 * 1200 * 2 * 32 * 8 * 128 * 2 / 1e9"), "test_kv_cache_gib", "in GB"),
    M("budget", _gib(gib="200 * 1200 * 2 * 8 * 128 * 2 / 2**30"), "test_kv_cache_gib", "without the layers"),
    M("budget", _gib(gib="200 * 1200 * 2 * 32 * 8 * 128 * 4 / 2**30"), "test_kv_cache_gib", "4 bytes per element"),
    M("budget", _gib(gib="-1"), "test_kv_cache_gib", "a cache size is positive"),
]

A = harness.Accepted
ACCEPTED = [
    A("variant_for", _variants(a='"A"', b='" b "')),
    A("online_softmax_attention", _online().replace('float("-inf")', "-1e30")),
    A("online_softmax_attention", "def online_softmax_attention(q, k, v, block_size):\n"
      "    outs, m, l = None, None, None\n"
      "    for kb, vb in zip(k.split(block_size, dim=-2), v.split(block_size, dim=-2)):\n"
      "        s = q @ kb.transpose(-1, -2) / math.sqrt(q.shape[-1])\n"
      "        bm = s.amax(-1, keepdim=True)\n"
      "        if m is None:\n"
      "            m, l, outs = bm, torch.exp(s - bm).sum(-1, keepdim=True), torch.exp(s - bm) @ vb\n"
      "            continue\n"
      "        new = torch.maximum(m, bm)\n"
      "        l = l * torch.exp(m - new) + torch.exp(s - new).sum(-1, keepdim=True)\n"
      "        outs = outs * torch.exp(m - new) + torch.exp(s - new) @ vb\n"
      "        m = new\n"
      "    return outs / l"),
    A("BlockAllocator", _alloc().replace("self.free_ids.pop(0)", "self.free_ids.pop()")),
    A("speculative", _spec(accept="u < min(1.0, (p[token] / q[token]).item())",
                           residual="torch.where(p > q, p - q, torch.zeros_like(p))")),
    A("tokens_per_pass", "tokens_per_pass = 2.53"),
    A("budget", _budget(n="20 * 10", gib="29.3")),
]


@pytest.fixture(scope="module")
def graded(source, exercise, tmp_path_factory):
    lib = tmp_path_factory.mktemp("fakelib")
    (lib / "fakelib.py").write_text(
        "import math\nimport torch\n\n\n"
        "def online_softmax_attention(q, k, v, block_size):\n"
        "    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v\n\n\n"
        "class BlockAllocator:\n    pass\n")
    return harness.grade_variants(source, exercise, MISTAKES, ACCEPTED,
                                  extra_code=f"import sys\nsys.path.insert(0, {str(lib)!r})")


def test_solution_scores_full_marks(graded, source):
    harness.assert_full_marks(graded, source)
    assert sum(graded[t]["max_score"] for t in harness.graded_test_ids(source)) == AUTO_POINTS


def test_solution_passes_the_visible_tests_alone(graded, source):
    harness.assert_full_marks(graded, source, suffix="~visible")


def test_untouched_exercise_scores_zero(graded, source):
    named = {"test_variant_for": "variant_for", "test_tokens_per_pass": "tokens_per_pass",
             "test_routing_choice": "routing_choice", "test_concurrent_requests": "concurrent_requests",
             "test_kv_cache_gib": "kv_cache_gib", "test_allocator_allocate": "BlockAllocator",
             "test_allocator_sharing": "BlockAllocator", "test_allocator_errors": "BlockAllocator"}
    harness.assert_blank_scores_zero(graded, source, feedback={t: f"{n} is not answered yet" for t, n in named.items()})


def test_the_written_design_waits_for_a_human(graded):
    assert graded[f"{MANUAL}~blank"]["feedback"] == "not answered yet" and graded[f"{MANUAL}~blank"]["manual"]
    assert graded[MANUAL]["score"] == 0 and "graded by hand" in graded[MANUAL]["feedback"]


@pytest.mark.parametrize("k", range(len(MISTAKES)), ids=[f"{m.answer}:{m.words[:30]}" for m in MISTAKES])
def test_mistake_loses_points_with_named_feedback(k, graded):
    harness.assert_mistake_loses_points(graded, MISTAKES, k)


@pytest.mark.parametrize("k", range(len(ACCEPTED)), ids=[f"{a.answer}:{k}" for k, a in enumerate(ACCEPTED)])
def test_other_correct_answers_score_full_marks(k, graded, source):
    harness.assert_accepted(graded, source, ACCEPTED, k)


def test_feedback_never_shows_hidden_test_source(graded, source):
    harness.assert_no_hidden_source(graded, source, more_than=40)


@pytest.mark.slow
def test_standard_nbgrader_course_agrees(tmp_path, source, exercise):
    """nbgrader's generate_assignment gives our exercise; its autograde scores the automatic part as we do."""
    released = harness.nbgrader_release(tmp_path, SOURCE)
    assert grading.normalize(released) == grading.normalize(exercise)
    submission = harness.fill(released, source, {"speculative": _spec(ret="r"),
                                                  "routing_choice": 'routing_choice = "a"'})
    raw_score, max_score = harness.nbgrader_autograde(tmp_path, SOURCE, submission)
    ours = grading.grade_notebook(submission, source=SOURCE)
    assert raw_score == ours["score"] == AUTO_POINTS - 2
    assert max_score == ours["max_score"] == AUTO_POINTS + MANUAL_POINTS
