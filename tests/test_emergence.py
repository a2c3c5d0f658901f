"""bloomlib.analysis.emergence against references written here (attention weights summed query by query in Python,
fractions for uniform heads, sums checked with Python ints after decoding with plain forwards, F.cross_entropy), and
the shipped lesson-05 models: induction heads, the loss curve's phase change, the addition snapshots, a rebuild."""
from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from bloomlib import GPT, GPTConfig
from bloomlib.analysis.emergence import (addition_accuracy, in_context_score, per_position_loss, phase_change,
                                         prefix_matching_score, previous_token_score)
from bloomlib.serving import LLM, EngineConfig, SamplingParams
from bloomlib.training import zoo
from bloomlib.training.data import ADDITION_CHARS, make_task
from bloomlib.training.train import evaluate
from test_zoo import rebuild_with_recorded_command

EMERGENCE = [f"lesson05/{s.name}" for s in zoo.FAMILIES["lesson05"] if s.name.startswith(("induction/", "addition/"))]
ADDITION = [n for n in EMERGENCE if "/addition/" in n]
ARENA_BLOCK = 50  # ARENA's induction test: 50 random tokens, repeated twice


def causal_softmax(shape: tuple[int, ...], T: int, seed: int) -> torch.Tensor:
    """Random attention weights (..., T, T) under a causal mask, float64."""
    scores = 3 * torch.randn(*shape, T, T, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)


def mean_over(w: torch.Tensor, pairs: list[tuple[int, int]]) -> float:
    """Mean of w[query, key] over (query, key) pairs, one Python float at a time."""
    return sum(float(w[i, j]) for i, j in pairs) / len(pairs)


# --- attention scores ---------------------------------------------------------------------------------------------


def test_an_exact_induction_head_scores_one_and_a_uniform_head_its_mean_share():
    L, T = 6, 15  # two and a half copies of the block
    uniform = torch.ones(T, T, dtype=torch.float64).tril()
    uniform /= uniform.sum(-1, keepdim=True)
    induction, previous = uniform.clone(), uniform.clone()
    for i in range(L, T):
        induction[i] = 0
        induction[i, i - L + 1] = 1
    for i in range(1, T):
        previous[i] = 0
        previous[i, i - 1] = 1
    assert float(prefix_matching_score(induction, L)) == 1.0
    assert float(previous_token_score(previous)) == 1.0
    # a query i sees i + 1 keys: a uniform head gives each 1 / (i + 1)
    assert float(prefix_matching_score(uniform, L)) == pytest.approx(
        float(sum(Fraction(1, i + 1) for i in range(L, T)) / (T - L)), rel=1e-12)
    assert float(previous_token_score(uniform)) == pytest.approx(
        float(sum(Fraction(1, i + 1) for i in range(1, T)) / (T - 1)), rel=1e-12)
    assert float(prefix_matching_score(previous, L)) == 0.0  # a previous-token head is no induction head


@pytest.mark.parametrize("block_len", [1, 4, 9])
def test_scores_of_random_heads_equal_a_query_by_query_sum(block_len):
    T = 20
    w = causal_softmax((2, 3), T, seed=block_len)
    pm, pt = prefix_matching_score(w, block_len), previous_token_score(w)
    assert pm.shape == pt.shape == (2, 3)
    for b in range(2):
        for h in range(3):
            after_copy = [(i, i - block_len + 1) for i in range(block_len, T)]
            assert float(pm[b, h]) == pytest.approx(mean_over(w[b, h], after_copy), rel=1e-12)
            assert float(pt[b, h]) == pytest.approx(mean_over(w[b, h], [(i, i - 1) for i in range(1, T)]), rel=1e-12)


def test_scores_bad_input():
    w = causal_softmax((), 8, seed=0)
    for bad in (w[:, :5], w.long(), w[0], [[1.0]]):
        with pytest.raises(ValueError, match="weights"):
            prefix_matching_score(bad, 3)
    with pytest.raises(ValueError, match="T >= 9"):
        prefix_matching_score(w, 8)  # no query in a repeat
    with pytest.raises(ValueError, match="block_len"):
        prefix_matching_score(w, 0)
    with pytest.raises(ValueError, match="weights"):
        previous_token_score(w[:1, :1])


# --- losses --------------------------------------------------------------------------------------------------------


def test_per_position_loss_is_the_batch_mean_cross_entropy_at_each_position():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, block_size=32, n_layer=1, n_head=2, d_model=16, ffn="none")).double()
    batch = make_task("repeated_tokens", 10, block_len=8, n_symbols=16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(batch.inputs)
    ref = F.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none").mean(0)  # (T,)
    torch.testing.assert_close(per_position_loss(model, batch, batch_size=3), ref.float())
    with pytest.raises(ValueError, match="next input token"):
        per_position_loss(model, make_task("copy", 4, seq_len=3, n_symbols=15))  # the prompt's targets are IGNORE
    with pytest.raises(ValueError, match="TaskBatch"):
        per_position_loss(model, batch.inputs)


def test_in_context_score():
    losses = torch.tensor([4.0, 3.5, 3.0, 1.25, 0.5])
    assert in_context_score(losses, 1, 4) == 0.5 - 3.5
    assert in_context_score(losses.double(), 0, 3) == 1.25 - 4.0
    for early, late in ((3, 3), (4, 2), (-1, 2), (0, 5)):
        with pytest.raises(ValueError, match="early|late"):
            in_context_score(losses, early, late)
    with pytest.raises(ValueError, match="losses"):
        in_context_score(losses[None], 0, 1)


def test_phase_change_finds_a_plateau_then_a_fall():
    steps = list(range(25, 1001, 25))
    curve = [4.0 if s <= 500 else max(2.0, 4.0 - 0.02 * (s - 500)) for s in steps]  # 4 nats, falls 2 by step 600
    found = phase_change(steps, curve, 150)
    assert found["drop"] == pytest.approx(2.0) and found["plateau"] == 0.0
    assert found["start"] <= 500 and found["end"] >= 600 and found["end"] - found["start"] <= 150
    small = phase_change(steps, curve, 50)  # 50 steps of the fall: 1 nat
    assert small["drop"] == pytest.approx(1.0) and 500 <= small["start"] and small["end"] <= 600
    # on a noisy curve: the largest drop over every pair of steps at most `window` apart (numpy-free brute force)
    g = torch.Generator().manual_seed(0)
    noisy = [v + 0.05 * float(torch.randn(1, generator=g)) for v in curve]
    best = max(noisy[a] - noisy[b] for a in range(len(steps)) for b in range(len(steps))
               if 0 < steps[b] - steps[a] <= 150)
    assert phase_change(steps, noisy, 150)["drop"] == pytest.approx(best, rel=1e-12)
    with pytest.raises(ValueError, match="steps"):
        phase_change([0, 0], [1.0, 1.0], 10)
    with pytest.raises(ValueError, match="window"):
        phase_change(steps, curve, 10)


# --- addition -------------------------------------------------------------------------------------------------------


def brute_force_addition(model: GPT, n_digits: int, n: int, seed: int, reverse: bool) -> tuple[float, list[float]]:
    """(exact match, per-position accuracy): each prompt's two numbers read back as Python ints, the answer decoded
    one token at a time with a full forward pass (no cache), compared with the digits of str(a + b)."""
    prompts = make_task("addition", n, n_digits=n_digits, reverse_answer=reverse,
                        generator=torch.Generator().manual_seed(seed)).prompts
    seq = prompts.clone()
    with torch.no_grad():
        for _ in range(n_digits + 1):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    exact, right = 0, [0] * (n_digits + 1)
    for row in seq.tolist():
        text = "".join(ADDITION_CHARS[t] for t in row)
        a, b = text[:2 * n_digits + 1].split("+")
        want = str(int(a) + int(b)).zfill(n_digits + 1)
        want = want[::-1] if reverse else want
        got = text[2 * n_digits + 2:]
        exact += got == want
        for k in range(n_digits + 1):
            right[k] += got[k] == want[k]
    return exact / n, [r / n for r in right]


@pytest.mark.parametrize("name,reverse", [("lesson05/addition/step1400", True), ("random", False)])
def test_addition_accuracy_equals_a_brute_force_check_with_python_ints(name, reverse):
    if name == "random":  # an untrained model, on sums written most significant digit first
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=12, block_size=11, n_layer=1, n_head=2, d_model=16)).eval()
        n_digits = 3
    else:
        model, n_digits = zoo.load_zoo_model(name).model, zoo.ADDITION_DIGITS
    got = addition_accuracy(model, n_digits, n_samples=300, seed=4, reverse_answer=reverse)
    exact, per_position = brute_force_addition(model, n_digits, 300, 4, reverse)
    assert got["exact_match"] == pytest.approx(exact, abs=1e-12)
    assert got["per_position"] == pytest.approx(per_position, abs=1e-12)
    assert got["per_digit"] == pytest.approx(sum(per_position) / len(per_position), abs=1e-12)
    if name != "random":
        assert 0.2 < exact < 0.9  # step 1400 is midway: the check saw right and wrong answers


def test_addition_accuracy_bad_input():
    model = GPT(GPTConfig(vocab_size=12, block_size=11, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(ValueError, match="block_size >= 14"):
        addition_accuracy(model, 4)
    with pytest.raises(ValueError, match="n_samples"):
        addition_accuracy(model, 3, n_samples=0)
    with pytest.raises(ValueError, match="reverse_answer"):
        addition_accuracy(model, 3, reverse_answer=1)


# --- the shipped models ---------------------------------------------------------------------------------------------


def test_emergence_models_are_shipped_small_and_what_the_table_says():
    assert set(EMERGENCE) <= set(zoo.shipped_models()) and len(ADDITION) >= 6
    files = [f for part in ("induction", "addition") for f in (zoo.ASSETS / "lesson05" / part).rglob("*")
             if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    assert size <= 2_000_000, f"the induction and addition models take {size / 1e6:.2f} MB; at most 2 MB"
    assert {f.parent.relative_to(zoo.ASSETS).as_posix() for f in files} == set(EMERGENCE)
    for name in EMERGENCE:
        spec, ckpt = zoo.zoo_model(name), zoo.load_zoo_model(name)
        meta = ckpt.meta
        assert ckpt.model.config == spec.config and meta["data"]["options"] == spec.task.options
        assert meta["train"] == json.loads(json.dumps(dataclasses.asdict(spec.train)))
        assert meta.get("stop_at") == spec.stop_at
        history, stop = meta["history"], spec.stop_at or spec.train.steps
        assert history["step"] == list(range(spec.train.eval_interval, stop + 1, spec.train.eval_interval))
        again = evaluate(ckpt.model, spec.task, spec.train.batch_size, 0, spec.train.eval_batches)
        assert again == pytest.approx(history["val_loss"][-1], rel=1e-4) and meta["val_loss"] == history["val_loss"][-1]


@pytest.fixture(scope="module")
def induction():
    """{name: (model, per-layer attention weights, per-position loss)} on ARENA's 50 tokens repeated twice."""
    batch = make_task("repeated_tokens", 100, block_len=ARENA_BLOCK, n_symbols=zoo.INDUCTION_SYMBOLS,
                      generator=torch.Generator().manual_seed(0))
    out = {}
    for n in ("attn2", "attn1"):
        model = zoo.load_zoo_model(f"lesson05/induction/{n}").model
        with torch.no_grad():
            _, weights = model(batch.inputs, return_attention=True)
        out[n] = model, weights, per_position_loss(model, batch)
    return out


def test_two_layers_form_induction_heads_and_one_layer_does_not(induction):
    _, (first, second), _ = induction["attn2"]
    assert prefix_matching_score(second, ARENA_BLOCK).mean(0).max() > 0.4  # a layer-2 induction head
    assert previous_token_score(first).mean(0).max() > 0.4  # and its layer-1 previous-token partner
    _, (only,), _ = induction["attn1"]
    assert prefix_matching_score(only, ARENA_BLOCK).mean(0).max() < 0.4


def test_in_context_learning_only_with_induction_heads(induction):
    """Olsson et al.'s score between a token of the first copy (10) and one of the repeat (80): the repeat is
    predicted from its earlier copy by the 2-layer model only (the 1-layer one gains only from seen tokens)."""
    two, one = (in_context_score(induction[n][2], 10, 80) for n in ("attn2", "attn1"))
    first_copy = induction["attn2"][2][:ARENA_BLOCK - 1].mean().item()
    assert first_copy > math.log(zoo.INDUCTION_SYMBOLS) - 0.1  # random tokens: nothing to learn before the repeat
    assert two < -2.0 and one > -1.0


def test_the_loss_curve_shows_the_phase_change_of_induction_heads():
    """Criterion: within 150 steps the 2-layer model's validation loss falls by more than 0.8 nats, after a plateau
    (less than 0.2 nats of change in the 150 steps before); the 1-layer model never falls 0.3 nats in 150 steps."""
    two, one = (zoo.load_zoo_model(f"lesson05/induction/{n}").meta["history"] for n in ("attn2", "attn1"))
    change = phase_change(two["step"], two["val_loss"], 150)
    assert change["drop"] > 0.8 and change["plateau"] < 0.2 and change["start"] >= 150, change
    assert phase_change(one["step"], one["val_loss"], 150)["drop"] < 0.3


def test_the_engine_serves_an_attention_only_model_as_generate_does():
    model = zoo.load_zoo_model("lesson05/induction/attn2").model.double()
    block = make_task("repeated_tokens", 2, block_len=12, generator=torch.Generator().manual_seed(3)).inputs[:, :12]
    prompts = [block[0].tolist() + block[0, :3].tolist(), block[1].tolist()]
    outs = LLM(model, config=EngineConfig(kv_block_size=4)).generate(prompts, SamplingParams(temperature=0,
                                                                                              max_tokens=10))
    ref = [model.generate(torch.tensor([p]), 10, temperature=0)[0, len(p):].tolist() for p in prompts]
    assert [o.token_ids for o in outs] == ref
    assert ref[0][:9] == block[0, 3:12].tolist()  # and it copies the block on from its earlier copy


def test_addition_snapshots_per_digit_rises_while_exact_match_jumps():
    """Schaeffer et al.: per-digit accuracy leaves chance early and climbs, exact match stays near 0 until the
    digits are nearly all right. Exact match is compared with the product of the per-position accuracies (what it
    would be if the digits were right independently): within 0.06, i.e. 3 sampling standard errors of each
    (at most 0.011 for 2000 sums) plus the positive dependence of the digits (a sum the model gets wrong often has
    several wrong digits); and within the bounds that hold whatever the dependence (Frechet)."""
    points = [addition_accuracy(zoo.load_zoo_model(n).model, zoo.ADDITION_DIGITS, n_samples=2000, seed=1,
                                reverse_answer=True) for n in ADDITION]
    digit, exact = [p["per_digit"] for p in points], [p["exact_match"] for p in points]
    assert digit[0] < 0.3 and exact[0] < 0.01 and digit[-1] > 0.9 and exact[-1] > 0.9
    assert all(b > a - 0.02 for a, b in zip(digit, digit[1:])), digit
    assert any(d > 0.5 and e < 0.05 for d, e in zip(digit, exact)), (digit, exact)  # half the digits, no sums
    jumps = [(e2 - e1, d2 - d1) for (d1, e1), (d2, e2) in zip(zip(digit, exact), zip(digit[1:], exact[1:]))]
    assert max(jumps)[0] > 0.3 and max(jumps)[0] > 2 * max(jumps)[1], jumps
    for p in points:
        per = p["per_position"]
        assert 1 - sum(1 - q for q in per) - 1e-12 <= p["exact_match"] <= min(per) + 1e-12
        assert abs(p["exact_match"] - math.prod(per)) < 0.06, p


def test_documented_command_rebuilds_the_cheapest_model_bit_equal(tmp_path):
    """The recorded command, narrowed to the cheapest model (a snapshot: its run stopped early) with its thread
    count, gives the same bits (the shipped one was saved during the full run)."""
    name = min(EMERGENCE, key=lambda n: zoo.load_zoo_model(n).meta["train_seconds"])
    shipped, rebuilt = rebuild_with_recorded_command(name, tmp_path)
    for key in shipped:
        assert torch.equal(shipped[key], rebuilt[key]), key
