"""bloomlib.course.Explorer on the shipped course model: the distribution shown against float64 NumPy written
another way (softmax of logits / T, top-k by a sorted threshold, top-p by searchsorted on a cumulative sum), the
attention against the model's own return_attention weights, sampling against torch.multinomial on that reference
and against generate (greedy), the widget's own controls driving the same path, and bad input as messages."""
from __future__ import annotations

import html
import io
import sys

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

import bloomlib  # noqa: E402
from bloomlib import GPT, GPTConfig  # noqa: E402
from bloomlib.course import Explorer  # noqa: E402
from bloomlib.tokenizer import CharTokenizer  # noqa: E402

PROMPT = "The attention of the model"
PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def course():
    return bloomlib.load_course_model()


def _explorer(course, prompt=PROMPT, **kwargs) -> Explorer:
    return Explorer(course.model, course.tokenizer, prompt, **kwargs)


def _logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0, -1].double().numpy()


def _reference(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None):
    """(before, probs, kept) in float64: softmax(logits / T); keep the logits at or above the k-th largest; then,
    on the renormalised survivors, the shortest prefix of the sorted probabilities whose sum reaches p."""
    z = logits / temperature
    before = np.exp(z - z.max())
    before /= before.sum()
    kept = np.ones(z.shape, dtype=bool)
    if top_k is not None:
        kept &= z >= np.sort(z)[::-1][top_k - 1]
    if top_p is not None:
        r = np.where(kept, before, 0.0)
        r /= r.sum()
        order = np.argsort(-r, kind="stable")
        n = int(np.searchsorted(np.cumsum(r[order]), top_p)) + 1  # first index whose running sum reaches p, kept
        nucleus = np.zeros_like(kept)
        nucleus[order[:n]] = True
        kept &= nucleus
    probs = np.where(kept, before, 0.0)
    return before, probs / probs.sum(), kept


SETTINGS = [(1.0, None, None), (0.7, 20, None), (1.3, None, 0.8), (0.5, 50, 0.9), (2.0, 3, 0.5), (1.0, 1, None),
            (0.25, None, 0.95)]


def test_distribution_equals_an_independent_float64_computation(course):
    ex = _explorer(course, top=8)
    logits = _logits(course.model, course.tokenizer.encode(PROMPT))
    for temperature, top_k, top_p in SETTINGS:
        ex.set(temperature=temperature, top_k=top_k or 0, top_p=top_p or 1.0)
        s = ex.state()
        assert (s["temperature"], s["top_k"], s["top_p"]) == (temperature, top_k, top_p)
        before, probs, kept = _reference(logits, temperature, top_k, top_p)
        where = f"T={temperature}, top_k={top_k}, top_p={top_p}"
        np.testing.assert_array_equal(s["kept"].numpy(), kept, err_msg=where)
        np.testing.assert_allclose(s["probs"].double().numpy(), probs, rtol=1e-4, atol=1e-7, err_msg=where)
        np.testing.assert_allclose(s["before"].double().numpy(), before, rtol=1e-4, atol=1e-7, err_msg=where)
        ranked = np.argsort(-logits, kind="stable")[:8]
        assert s["shown_ids"] == ranked.tolist(), where
        assert s["shown_kept"] == kept[ranked].tolist(), where
        np.testing.assert_allclose(s["shown_probs"], probs[ranked], rtol=1e-4, atol=1e-7, err_msg=where)
        assert f"| {kept.sum()} of {len(kept)} kept |" in s["summary"], (where, s["summary"])
        assert s["shown_tokens"] == [course.tokenizer.id_to_piece(int(i)) for i in ranked]


def test_the_filters_did_filter(course):
    """The settings above are not all trivial: the reference keeps a strict subset for each filter."""
    logits = _logits(course.model, course.tokenizer.encode(PROMPT))
    counts = [int(_reference(logits, *s)[2].sum()) for s in SETTINGS]
    assert counts[0] == len(logits) and counts[1] == 20 and 1 < counts[2] < len(logits) and counts[5] == 1


def test_attention_is_the_models_own(course):
    ex = _explorer(course)
    ids = course.tokenizer.encode(PROMPT)
    with torch.no_grad():
        _, attention = course.model(torch.tensor([ids]), return_attention=True)
    n = len(ids)
    for layer, head in [(0, 0), (1, 3), (3, 2)]:
        ex.set(layer=layer, head=head)
        a = ex.state()["attention"]
        assert a.shape == (n, n)
        torch.testing.assert_close(a, attention[layer][0, head].float())
        assert torch.all(a.triu(1) == 0), "a token must not attend to a later one"
        torch.testing.assert_close(a.sum(-1), torch.ones(n, dtype=a.dtype))
    assert ex.state()["tokens"] == [course.tokenizer.id_to_piece(i) for i in ids]
    assert bytes(ex._attention_image.value).startswith(PNG) and bytes(ex._bars_image.value).startswith(PNG)
    drawn, labels = ex.heatmap()
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    assert torch.equal(drawn.isnan(), future) and labels == ex.state()["tokens"]
    torch.testing.assert_close(drawn[~future], attention[3][0, 2][~future].float())


def _grey_fraction(png) -> float:
    """The share of the image's pixels in the explorer's masked-cell grey."""
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    from bloomlib.course.explorer import MASKED

    rgb = imread(io.BytesIO(bytes(png)))[..., :3]
    return float((np.abs(rgb - np.array(to_rgb(MASKED))).max(-1) < 1.5 / 255).mean())


def test_masked_cells_are_drawn_grey(course):
    """Half of the (n, n) cells are future keys: a large grey area; with one token nothing is masked."""
    many, one = _explorer(course), _explorer(course, "The")
    assert len(one.ids) == 1 and not one.heatmap()[0].isnan().any()
    assert _grey_fraction(many._attention_image.value) > 0.1 > 0.01 > _grey_fraction(one._attention_image.value)


def test_the_heatmap_shows_the_last_tokens_of_a_long_prompt(course):
    from bloomlib.course.explorer import HEATMAP_TOKENS

    ex = _explorer(course, "one two three four five six seven eight nine ten eleven twelve thirteen fourteen")
    n, k = len(ex.ids), HEATMAP_TOKENS
    assert n > k
    drawn, labels = ex.heatmap()
    assert drawn.shape == (k, k) and labels == ex.state()["tokens"][-k:]
    torch.testing.assert_close(drawn.nan_to_num(0.0), ex.state()["attention"][-k:, -k:])


def test_sample_draws_from_the_shown_distribution_and_appends(course):
    ex = _explorer(course, seed=7)
    ex.set(temperature=1.5, top_k=40)
    ids = course.tokenizer.encode(PROMPT)
    _, probs, kept = _reference(_logits(course.model, ids), 1.5, 40, None)
    expected = torch.multinomial(torch.tensor(probs, dtype=torch.float32), 1,
                                 generator=torch.Generator().manual_seed(7)).item()
    token = ex.sample()
    assert token == expected and kept[token]
    s = ex.state()
    assert s["ids"] == ids + [token] and s["last_sampled"] == token
    assert s["prompt"] == course.tokenizer.decode(ids + [token]) == ex._prompt.value
    assert len(ex._tokens.value.split('class="bloomlib-explorer-chip"')) - 1 == len(ids) + 1


def test_sampling_is_reproducible_with_the_seed(course):
    def run(seed):
        ex = _explorer(course, seed=seed)
        ex.set(temperature=1.2, top_p=0.9)
        return [ex.sample() for _ in range(4)], ex.state()["ids"]

    tokens, ids = run(3)
    assert run(3) == (tokens, ids)
    assert ids[-4:] == tokens


def test_temperature_zero_is_greedy_like_generate(course):
    ex = _explorer(course)
    ex.set(temperature=0, top_k=5, top_p=0.3)  # greedy ignores the filters, as bloomlib.sampling does
    ids = course.tokenizer.encode(PROMPT)
    best = int(np.argmax(_logits(course.model, ids)))
    s = ex.state()
    assert s["kept"].nonzero().flatten().tolist() == [best]
    assert s["probs"][best] == 1 and s["probs"].sum() == 1 and "(greedy)" in s["summary"]
    greedy = course.model.generate(torch.tensor([ids]), 2, temperature=0)[0, len(ids):].tolist()
    assert [ex.sample(), ex.sample()] == greedy


def test_the_widgets_controls_drive_the_same_path(course, capsys):
    ex = _explorer(course, top=5)
    capsys.readouterr()
    ex._prompt.value = "Attention is"
    assert ex.state()["ids"] == course.tokenizer.encode("Attention is")
    ex._temperature.value, ex._top_k.value, ex._top_p.value = 0.5, 7, 0.6
    ex._layer.value, ex._head.value = 2, 1
    s = ex.state()
    assert (s["temperature"], s["top_k"], s["top_p"], s["layer"], s["head"]) == (0.5, 7, 0.6, 2, 1)
    ex._top_k.value, ex._top_p.value = 0, 1.0
    assert (ex.top_k, ex.top_p) == (None, None), "top-k 0 and top-p 1 are off"
    n = len(s["ids"])
    ex._sample.click()
    s = ex.state()
    assert len(s["ids"]) == n + 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9 and lines[-1] == s["summary"] == ex.summary(), "one line per update, the last current"
    assert s["summary"] in html.unescape(ex._summary.value)


def test_bad_input_gives_messages_not_exceptions(course):
    ex = _explorer(course)
    good = ex.state()
    ex.set(layer=4, head=-1, temperature=-1, top_k=2.5, top_p=1.5)
    s = ex.state()
    assert (s["layer"], s["head"], s["temperature"], s["top_k"], s["top_p"]) == (0, 0, 1.0, None, None)
    for needle in ["layer must be an integer in 0..3", "head must be an integer in 0..3", "temperature must be >= 0",
                   "top_k must be a positive integer", "top_p must be in (0, 1]"]:
        assert any(needle in m for m in s["messages"]), (needle, s["messages"])
        assert needle in ex._message.value.replace("&gt;", ">")
    assert torch.equal(s["probs"], good["probs"])
    ex.set(temperature="hot")
    assert ex.state()["messages"] == ["temperature must be a number, got 'hot': still using temperature 1.00."]
    ex.set(layer=1)
    assert ex.state()["messages"] == [] and ex._message.value == "", "a good setting clears the old messages"


@pytest.mark.parametrize("prompt", ["", "   \n "])
def test_an_empty_prompt_is_a_message(course, prompt):
    ex = _explorer(course, prompt)
    s = ex.state()
    assert s["ids"] == [] and s["attention"] is None and s["probs"] is None and s["shown_ids"] == []
    assert s["summary"] == "Explorer: no tokens (type a prompt)." and ex._sample.disabled
    assert ex.heatmap() is None and ex._attention_image.layout.display == ex._bars_image.layout.display == "none"
    assert ex.sample() is None
    assert any("prompt is empty" in m for m in ex.state()["messages"])
    ex.set("Back again")
    assert ex.state()["ids"] == course.tokenizer.encode("Back again") and not ex._sample.disabled
    assert ex._attention_image.layout.display is None


def test_a_prompt_longer_than_the_context_keeps_its_last_tokens(course):
    block = course.model.config.block_size
    prompt = "attention, " * 120
    ids = course.tokenizer.encode(prompt)
    assert len(ids) > block
    ex = _explorer(course, prompt)
    s = ex.state()
    assert s["ids"] == ids[-block:] and s["dropped"] == len(ids) - block
    assert s["attention"].shape == (block, block)
    assert any(f"context window ({block})" in m and f"last {block} tokens" in m for m in s["messages"])
    _, probs, _ = _reference(_logits(course.model, ids[-block:]), 1.0, None, None)
    np.testing.assert_allclose(s["probs"].double().numpy(), probs, rtol=1e-4, atol=1e-7)
    token = ex.sample()
    assert ex.state()["ids"] == (ids + [token])[-block:]


def test_a_tiny_random_model_with_a_sliding_window():
    tok = CharTokenizer.train("abc ")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=4, n_kv_head=2, d_model=32,
                          sliding_window=3))
    ex = Explorer(model, tok, "abcabca", top=3, seed=1)
    ex.set(layer=1, head=3)
    a = ex.state()["attention"]
    n = len(tok.encode("abcabca"))
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    outside = (j > i) | (j <= i - 3)
    assert torch.all(a[outside] == 0), "outside the window of 3, nothing is attended"
    assert torch.equal(ex.heatmap()[0].isnan(), outside), "and the heatmap greys exactly those cells"
    with torch.no_grad():
        torch.testing.assert_close(a, model(torch.tensor([tok.encode("abcabca")]), return_attention=True)[1][1][0, 3])
    assert (ex._layer.max, ex._head.max) == (1, 3) and len(ex.state()["shown_ids"]) == 3


def test_model_mode_is_restored(course):
    course.model.train()
    try:
        _explorer(course)
        assert course.model.training
    finally:
        course.model.eval()


@pytest.mark.parametrize("kwargs, needle", [
    ({"top": 0}, "top must be an integer in [1, 512]"),
    ({"top": 513}, "top must be an integer in [1, 512]"),
    ({"top": True}, "top must be an integer"),
    ({"seed": "0"}, "seed must be an integer"),
    ({"prompt": 3}, "prompt must be a str"),
])
def test_bad_construction_is_a_value_error(course, kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        Explorer(course.model, course.tokenizer, **kwargs)


def test_model_and_tokenizer_are_checked(course):
    with pytest.raises(ValueError, match="model must be a bloomlib model"):
        Explorer(torch.nn.Linear(2, 2), course.tokenizer)
    with pytest.raises(ValueError, match="tokenizer must be a bloomlib Tokenizer"):
        Explorer(course.model, "gpt2")
    small = GPT(GPTConfig(vocab_size=100, block_size=8, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(ValueError, match="tokenizer has 512 tokens but the model only 100"):
        Explorer(small, course.tokenizer)


def test_missing_ipywidgets_is_a_clear_import_error(course, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ImportError, match="widgets need ipywidgets"):
        _explorer(course)


def test_repr_is_short_and_stable(course):
    ex = _explorer(course)
    ex.set(temperature=0.8, top_k=12)
    n = len(course.tokenizer.encode(PROMPT))
    assert repr(ex) == f"Explorer(GPT, {n} tokens, layer 0 head 0, T 0.80, top-k 12, top-p off)"
    assert ex._repr_mimebundle_()["text/plain"] == repr(ex)
