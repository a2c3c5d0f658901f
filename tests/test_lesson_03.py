"""Lesson 03 (Apply): lesson structure and grading of its exercise (solutions/03_apply.ipynb ->
exercises/03_apply.ipynb): blank scores 0, the solution full marks, every planted mistake loses points with
feedback that names it, other correct answers full marks (tests/grading_harness.py).

nbval runs the lesson and the solution themselves (pytest's testpaths)."""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

import grading_harness as harness
from bloomlib.course import grading

REPO = Path(__file__).resolve().parent.parent
LESSON = REPO / "notebooks" / "03_apply.ipynb"
SOURCE = REPO / "solutions" / "03_apply.ipynb"
EXERCISE = REPO / "exercises" / "03_apply.ipynb"
OBJECTIVES = {"03.1", "03.2", "03.3", "03.4", "03.5", "03.6"}
TOTAL_POINTS = 21
BLOOM_VERBS = ["apply", "implement", "use", "execute", "compute", "calculate", "construct", "build", "assemble",
               "demonstrate", "solve", "carry", "train"]


source, exercise = harness.notebook_fixtures(SOURCE, EXERCISE)


def _objectives(cell) -> list[str]:
    return cell.get("metadata", {}).get("bloomlib", {}).get("objectives", [])


# ------------------------------------------------------------------------------------------- lesson
def test_lesson_follows_the_house_rules():
    harness.assert_lesson_house_rules(LESSON, BLOOM_VERBS)


# ------------------------------------------------------------------------------------------ structure
def test_check_my_notebook_cell_closes_the_exercise(source, exercise):
    """The last code cell, locked and read-only, grades the saved copy of this very exercise; it is the only code
    cell that names bloomlib."""
    harness.assert_check_cell_closes(source, exercise, EXERCISE.name)
    assert "check your work" in source.cells[0].source.lower()
    assert f"bloomlib grade exercises/{EXERCISE.name}" in source.cells[0].source


def test_every_graded_cell_names_objectives_of_lesson_03(source):
    graded = [c for c in source.cells if harness.is_test(c)]
    for cell in graded:
        assert _objectives(cell) and set(_objectives(cell)) <= OBJECTIVES, (harness.gid(cell), _objectives(cell))
    assert {o for c in graded for o in _objectives(c)} == OBJECTIVES


def test_points_table_and_headings_match_the_tests(source):
    """The intro's table and each question's heading give the points and objectives its tests carry."""
    by_id = {harness.gid(c): c for c in source.cells}
    rows = re.findall(r"^\| (\d+) \| .+? \| ([\d., ]+) \| (\d+) \|$", source.cells[0].source, re.M)
    headings = [int(m) for c in source.cells if c.cell_type == "markdown"
                for m in re.findall(r"^## \d+ · .+\((\d+) points?\)$", c.source, re.M)]
    qs = harness.questions(source)
    assert len(rows) == len(qs) == len(headings)
    for (number, objectives, points), (answer, tests), heading in zip(rows, qs.items(), headings):
        assert int(points) == heading == sum(by_id[t].metadata.nbgrader["points"] for t in tests), answer
        assert {o.strip() for o in objectives.split(",")} == {o for t in tests for o in _objectives(by_id[t])}
    assert sum(int(r[2]) for r in rows) == TOTAL_POINTS
    assert f"({TOTAL_POINTS} points in all)" in source.cells[0].source


# ------------------------------------------------------------------------------------------ mistakes
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
BLOCK = """
def block_forward(x, w, n_heads):
    B, T, D = x.shape
    H = {H}

    def ln(t, name):
        return F.layer_norm(t, (D,), w[name + ".weight"], w[name + ".bias"], eps=1e-5)

    def attend(t):
        q, k, v = F.linear(t, w["attn.qkv_proj.weight"], w["attn.qkv_proj.bias"]).split(D, dim=-1)
        q, k, v = ({split} for s in (q, k, v))
        a = {attention}
        return F.linear({merge}, w["attn.o_proj.weight"], w["attn.o_proj.bias"])

    def ffn(t):
        return F.linear({act}(F.linear(t, w["ffn.up.weight"], w["ffn.up.bias"])), w["ffn.down.weight"], w["ffn.down.bias"])

    {body}
"""
BLOCK_OK = dict(H="n_heads", split="s.view(B, T, H, D // H).transpose(1, 2)", merge="a.transpose(1, 2).reshape(B, T, D)",
                attention="F.scaled_dot_product_attention(q, k, v, is_causal=True)", act="F.gelu",
                body='x = x + attend(ln(x, "norm1"))\n    return x + ffn(ln(x, "norm2"))')
TRAIN = """
def train_tagger(model, optimizer, inputs, labels, steps, batch_size=32, generator=None):
    losses = []
    for _ in range(steps):
        rows = torch.randint(0, len(inputs), (batch_size,), generator=generator)
        logits = model(inputs[rows])
        loss = {loss}
        {first}
        {second}
        {third}
        losses.append({item})
    return losses
"""
TRAIN_OK = dict(loss="F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[rows].reshape(-1))",
                first="optimizer.zero_grad()", second="loss.backward()", third="optimizer.step()", item="loss.item()")


_sdpa = functools.partial(harness.variant, SDPA, SDPA_OK)
_sin = functools.partial(harness.variant, SINUSOID, SIN_OK)
_heads = functools.partial(harness.variant, HEADS, HEADS_OK)
_sample = functools.partial(harness.variant, SAMPLE, SAMPLE_OK)
_block = functools.partial(harness.variant, BLOCK, BLOCK_OK)
_train = functools.partial(harness.variant, TRAIN, TRAIN_OK)


M = harness.Mistake
MISTAKES = [
    M("causal_mask", CAUSAL.format(expr="i[None, :] > i[:, None]"), "test_causal_mask", "mask polarity inverted"),
    M("causal_mask", CAUSAL.format(expr="i[None, :] >= i[:, None]"), "test_causal_mask", "mask transposed"),
    M("causal_mask", CAUSAL.format(expr="i[None, :] < i[:, None]"), "test_causal_mask", "diagonal must be True"),
    M("causal_mask", "from fakelib import causal_mask", "test_causal_mask", "define causal_mask in this notebook"),
    M("causal_mask", LEAK, "test_causal_mask", "caller: "),
    M("scaled_dot_product_attention", _sdpa(scale=""), "test_attention_no_mask", "missing √d_k scaling"),
    M("scaled_dot_product_attention", _sdpa(scale="/ Q.size(-1)"), "test_attention_no_mask",
      "divided by d_k instead of sqrt(d_k)"),
    M("scaled_dot_product_attention", _sdpa(scale="/ math.sqrt(V.size(-1))"), "test_attention_no_mask",
      "scaled by the wrong size"),
    M("scaled_dot_product_attention", _sdpa(dim=-2), "test_attention_no_mask", "softmax over the wrong axis"),
    M("scaled_dot_product_attention", _sdpa(cond="mask.bool()"), "test_attention_mask", "mask polarity inverted"),
    M("scaled_dot_product_attention", _sdpa(cond="mask == 2", after=True), "test_attention_mask",
      "mask applied after the softmax"),
    M("scaled_dot_product_attention", _sdpa(fill="0.0"), "test_attention_mask", "fill the masked scores with -inf"),
    M("scaled_dot_product_attention", _sdpa(cond="~mask"), "test_attention_mask", "0/1 integer mask must work"),
    M("scaled_dot_product_attention", _sdpa(fix=""), "test_attention_fully_masked", "fully masked row gives NaN"),
    M("scaled_dot_product_attention", _sdpa(fill="-1e9", fix=""), "test_attention_fully_masked", "uniform weights"),
    M("sinusoidal_positional_encoding", _sin(f0="cos", f1="sin"), "test_sinusoidal", "sin and cos swapped"),
    M("sinusoidal_positional_encoding", _sin(even="i", odd="d_model // 2 + i"), "test_sinusoidal",
      "not stacked as [sin | cos] halves"),
    M("sinusoidal_positional_encoding", _sin(base=1000), "test_sinusoidal", "wrong frequency base"),
    M("sinusoidal_positional_encoding", _sin(expo="i / d_model"), "test_sinusoidal", "not i/d_model"),
    M("sinusoidal_positional_encoding", _sin(expo="2 * i // d_model"), "test_sinusoidal", "integer division"),
    M("sinusoidal_positional_encoding", _sin(expo="4 * i / d_model"), "test_sinusoidal", "doubled the column index"),
    M("heads", _heads(split="x.reshape(B, n_heads, T, D // n_heads)"), "test_split_heads",
      "split_heads reshapes without transposing"),
    M("heads", _heads(split="x.view(B, T, D // n_heads, n_heads).permute(0, 3, 1, 2)"), "test_split_heads",
      "contiguous slices of features"),
    M("heads", _heads(check="False and"), "test_split_heads", "must raise ValueError, got RuntimeError"),
    M("heads", _heads(merge="x.reshape(B, T, H * hd)"), "test_merge_heads",
      "merge_heads reshapes without transposing back"),
    M("heads", _heads(merge="x.transpose(1, 2).view(B, T, H * hd)"), "test_merge_heads", "view size is not compatible"),
    M("sample_next_token", _sample(pre="logits * temperature"), "test_sampling_temperature", "temperature inverted"),
    M("sample_next_token", _sample(pre="logits", after=" / temperature"), "test_sampling_temperature",
      "temperature applied after the softmax"),
    M("sample_next_token", _sample(greedy="False and"), "test_sampling_temperature", "temperature 0 must be greedy"),
    M("sample_next_token", _sample(k="top_k + 1"), "test_sampling_top_k", "must keep only the 2 largest"),
    M("sample_next_token", _sample(k="top_k - 1"), "test_sampling_top_k", "kept fewer than 2 tokens"),
    M("sample_next_token", _sample(drop="probs.cumsum(-1) > top_p"), "test_sampling_top_p",
      "top-p dropped the token that crosses p"),
    M("sample_next_token", _sample(pre="logits", post="logits / temperature"), "test_sampling_top_p",
      "apply the temperature before top-p"),
    M("sample_next_token", _sample(p_src="raw.sort(dim=-1, descending=True).values"), "test_sampling_top_p",
      "apply top-p to what top-k left"),
    M("padded_causal_attention", PADDED.format(mask="real[:, None, :] & real[:, :, None]"),
      "test_padded_real_positions", "the causal mask is missing"),
    M("padded_causal_attention", PADDED.format(mask="causal_mask(T)[None] & real[:, None, :]"),
      "test_padded_zero_outputs", "padded query positions"),
]
# (answer id, replacements in the solution's code, test that must lose points (None: all must pass), feedback words)
EDITS = [
    ("param_counts", [("attention = 4 * (d_model * d_model + d_model)", "attention = 4 * d_model * d_model"),
                      ("ffn = (d_model * d_ff + d_ff) + (d_ff * d_model + d_model)", "ffn = 2 * d_model * d_ff")],
     "test_block_params", "the biases are missing"),
    ("param_counts", [("norms = 2 * (2 * d_model)", "norms = 0")], "test_block_params", "4·d_model short"),
    ("param_counts", [("norms = 2 * (2 * d_model)", "norms = 2 * d_model")], "test_block_params",
     "a LayerNorm has a weight AND a bias"),
    ("param_counts", [("attention = 4 * (d_model * d_model + d_model)",
                       "attention = n_heads * 4 * (d_model * d_model + d_model)")], "test_block_params",
     "attention counted once per head"),
    ("param_counts", [("ffn = (d_model * d_ff + d_ff) + (d_ff * d_model + d_model)", "ffn = 8 * d_model * d_model + 5 * d_model")],
     "test_block_params", "the FFN widens to d_ff"),
    ("param_counts", [("return attention + ffn + norms", "return float(attention + ffn + norms)")], "test_block_params",
     "return a Python int"),
    ("param_counts", [("embeddings = (vocab_size + block_size) * d_model", "embeddings = (2 * vocab_size + block_size) * d_model")],
     "test_gpt_params", "tied to the token embedding"),
    ("param_counts", [("embeddings = (vocab_size + block_size) * d_model", "embeddings = vocab_size * d_model")],
     "test_gpt_params", "position embedding (block_size × d_model) is missing"),
    ("param_counts", [("block_params(d_model, n_heads, d_ff) + 2 * d_model", "block_params(d_model, n_heads, d_ff)")], "test_gpt_params", "the final LayerNorm"),
    ("param_counts", [("n_layers * block_params", "block_params")], "test_gpt_params", "counted one block"),
    ("param_counts", [("attention = 4 * (d_model * d_model + d_model)", "attention = 4 * d_model ** 2 + 4 * d_model"),
                      ("(vocab_size + block_size) * d_model", "d_model * vocab_size + d_model * block_size")], None, ""),
    ("bert_pair_inputs", [("ids = [cls_id, *ids_a", "ids = [*ids_a"), ("len(ids_a) + 2", "len(ids_a) + 1")],
     "test_bert_input_ids", "must start with [CLS]"),
    ("bert_pair_inputs", [("*ids_b, sep_id]", "*ids_b]"), ("len(ids_b) + 1", "len(ids_b)")], "test_bert_input_ids",
     "a pair has two [SEP]"),
    ("bert_pair_inputs", [("if len(ids) > max_len:", "if False:")], "test_bert_input_ids", "raise ValueError"),
    ("bert_pair_inputs", [("torch.tensor(mask)", "torch.tensor(mask, dtype=torch.bool)")], "test_bert_input_ids",
     "torch.long tensor of shape (max_len,)"),
    ("bert_pair_inputs", [("[1] * (len(ids_b) + 1)", "[1] * len(ids_b) + [0]")], "test_bert_types_and_mask",
     "the second [SEP] closes sentence B"),
    ("bert_pair_inputs", [("[0] * (len(ids_a) + 2) + [1] * (len(ids_b) + 1)", "[0] * (len(ids_a) + 1) + [1] * (len(ids_b) + 2)")],
     "test_bert_types_and_mask", "the first [SEP] closes sentence A"),
    ("bert_pair_inputs", [("+ [0] * n_pad\n    mask", "+ [1] * n_pad\n    mask")], "test_bert_types_and_mask",
     "padding has token type 0"),
    ("bert_pair_inputs", [("mask = [1] * len(ids) + [0] * n_pad", "mask = [1] * max_len")], "test_bert_types_and_mask",
     "must be 0 on the padding"),
    ("bert_pair_inputs", [("torch.tensor(ids + [pad_id] * n_pad)", "torch.tensor(ids + [pad_id] * n_pad, dtype=torch.long)"),
                          ("torch.tensor(mask)", "torch.tensor(mask).long()")], None, ""),
]
MISTAKES += [
    M("block_forward", _block(body='x = ln(x + attend(x), "norm1")\n    return ln(x + ffn(x), "norm2")'), "test_block_forward",
      "post-LN order"),
    M("block_forward", _block(attention="F.scaled_dot_product_attention(q, k, v)"), "test_block_forward",
      "the causal mask is missing"),
    M("block_forward", _block(body='x = attend(ln(x, "norm1"))\n    return ffn(ln(x, "norm2"))'), "test_block_forward",
      "the residual connections are missing"),
    M("block_forward", _block(act='(lambda u: F.gelu(u, approximate="tanh"))'), "test_block_forward",
      "GELU approximated with tanh"),
    M("block_forward", _block(act="F.relu"), "test_block_forward", "ReLU in the FFN"),
    M("block_forward", _block(body='x = x + attend(ln(x, "norm1"))\n    return x + ffn(ln(x, "norm1"))'), "test_block_forward",
      "its own LayerNorm"),
    M("block_forward", _block(H="1"), "test_block_forward", "attention computed as one head"),
    M("block_forward", _block(split="s.reshape(B, H, T, D // H)", merge="a.reshape(B, T, D)"), "test_block_forward",
      "heads split by a reshape without a transpose"),
    M("block_forward", _block(H="2"), "test_block_forward_other", "read the sizes from x and w"),
    M("train_tagger", _train(first="pass"), "test_training_accuracy", "forgot zero_grad"),
    M("train_tagger", _train(third="pass"), "test_training_accuracy", "no optimizer step"),
    M("train_tagger", _train(first="loss.backward()", second="optimizer.zero_grad()"), "test_training_accuracy",
      "zero_grad goes before backward"),
    M("train_tagger", _train(loss="F.cross_entropy(logits, labels[rows])"), "test_training_accuracy", "wrong loss shape"),
    M("train_tagger", _train(loss="F.cross_entropy(logits.reshape(-1, 2), labels[rows].reshape(-1))"),
      "test_training_other_task", "wrong loss shape"),
    M("train_tagger", _train(item="loss"), "test_training_accuracy", "Python floats"),
    M("train_tagger", _train().replace("(batch_size,)", "(64,)"), "test_training_other_task", "use batch_size"),
]
ACCEPTED = [
    harness.Accepted("block_forward", _block(
        attention="(q @ k.transpose(-2, -1) / (D // H) ** 0.5).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), "
                  "float('-inf')).softmax(-1) @ v")),
    harness.Accepted("train_tagger", _train(loss="F.cross_entropy(logits.transpose(1, 2), labels[rows])",
                                            first="model.zero_grad()")),
    harness.Accepted("train_tagger", _train(first="optimizer.zero_grad(set_to_none=False)", item="float(loss)")),
]


@pytest.fixture(scope="module")
def graded(source, exercise, tmp_path_factory):
    """One grading run in one kernel (see grading_harness): blank, visible, solution, each mistake."""
    lib = tmp_path_factory.mktemp("fakelib")
    (lib / "fakelib.py").write_text("import torch\n\n\ndef causal_mask(n):\n"
                                    "    return torch.ones(n, n, dtype=torch.bool).tril()\n")
    edited, accepted = harness.edit_variants(source, EDITS)
    mistakes, accepted = MISTAKES + edited, ACCEPTED + accepted
    # padded_causal_attention calls the learner's causal_mask and attention: make them right
    result = harness.grade_variants(source, exercise, mistakes, accepted, timeout=120,
                                    extra_code=f"import sys\nsys.path.insert(0, {str(lib)!r})",
                                    needs={"padded_causal_attention": ["causal_mask", "scaled_dot_product_attention"]})
    return result, mistakes, accepted


def test_exercise_is_graded_as_planned(graded, source):
    """Blank 0, the solution full marks, each mistake caught with its feedback, other answers accepted."""
    harness.assert_graded_as_planned(graded[0], source, graded[1], graded[2], TOTAL_POINTS)


def test_solution_passes_the_visible_tests_alone(graded, source):
    """The exercise's visible tests run without the hidden parts (no name defined only in a hidden block)."""
    harness.assert_full_marks(graded[0], source, suffix="~visible")


def test_untouched_exercise_scores_zero_with_not_written(graded, source):
    harness.assert_blank_scores_zero(graded[0], source)


N_MISTAKES = len(MISTAKES) + sum(1 for row in EDITS if row[2] is not None)


@pytest.mark.parametrize("k", range(N_MISTAKES))
def test_mistake_loses_points_with_named_feedback(k, graded):
    harness.assert_mistake_loses_points(graded[0], graded[1], k)


def test_feedback_never_shows_hidden_test_source(graded, source):
    harness.assert_no_hidden_source(graded[0], source, more_than=80)
    leak = graded[0][f"test_causal_mask~{[m.code for m in graded[1]].index(LEAK)}"]
    assert "[hidden test]" in leak["feedback"] and ".tril()), f" not in leak["feedback"]


def test_bloomlib_grade_gives_the_untouched_exercise_zero():
    harness.assert_cli_grades_blank_zero(EXERCISE, TOTAL_POINTS)


# ------------------------------------------------------------------------------- nbgrader course, e2e
@pytest.mark.slow
def test_standard_nbgrader_course_end_to_end(tmp_path, source, exercise):
    """generate_assignment gives our exercise; autograde + export score a submission as `bloomlib grade` does."""
    released = harness.nbgrader_release(tmp_path, SOURCE)
    assert grading.normalize(released) == grading.normalize(exercise)
    submission = harness.fill(released, source, {"heads": _heads(merge="x.reshape(B, T, H * hd)"),
                                                 "train_tagger": _train(item="loss")})
    raw_score, max_score = harness.nbgrader_autograde(tmp_path, SOURCE, submission)
    ours = grading.grade_notebook(submission, source=SOURCE)
    assert raw_score == ours["score"] == TOTAL_POINTS - 2
    assert max_score == ours["max_score"] == TOTAL_POINTS
