"""A live transformer explorer (ipywidgets, offline, on the learner's own model): type a prompt and see its tokens,
the attention of any layer and head, and the next-token distribution under temperature, top-k and top-p; a button
samples the next token and appends it. In the spirit of the Transformer Explainer (Cho et al. 2024), which runs
GPT-2 in the browser; this one runs the course's model inside the lesson.

    ck = bloomlib.load_course_model()
    ex = Explorer(ck.model, ck.tokenizer, "The attention of")
    ex                                      # the widget
    ex.set(layer=2, head=1, temperature=0.7, top_k=20, top_p=0.9)   # what the sliders do
    ex.sample()                             # what "Sample next token" does: returns the new token's id
    ex.state()                              # tokens, ids, the attention shown, the distribution, the settings

One rule: the distribution is bloomlib.sampling's (`filter_logits`, temperature 0 greedy as in `draw_next_token`),
the attention is the model's own forward with return_attention, and a sample is `sample_next_token` with a seeded
generator. Every update prints one deterministic summary line (also shown in the widget), so nbval and a static
render see text. Bad input from the widget or from `set` (an empty prompt, a layer out of range...) becomes a
message in the widget and never an exception; a prompt longer than the context window keeps its last block_size
tokens and says so.
"""
from __future__ import annotations

import html
import io
import math
import warnings

import torch

from bloomlib.course.quiz import _Displayable, _widgets
from bloomlib.masks import visible
from bloomlib.sampling import check_sampling_args, filter_logits, sample_next_token

DEFAULT_PROMPT = "The attention of"
HEATMAP_TOKENS = 20  # the heatmap shows at most the last this-many tokens (queries and keys); state() has them all
SUMMARY_TOKENS = 3  # most likely next tokens named in the summary line
KEPT, BEFORE, MASKED = "#1f77b4", "#d3d3d3", "#9e9e9e"  # bar kept / bar before the filters / masked attention cell


def next_token_distribution(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                            top_p: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (V,) -> (before, probs, kept), each (V,): softmax(logits / T) before the filters, the distribution a
    token is drawn from (temperature, then top-k, then top-p: `bloomlib.sampling.filter_logits`), and the tokens the
    filters keep. Temperature 0 is greedy, as in `draw_next_token`: all the mass on the argmax, nothing else kept."""
    logits = logits.float()
    if temperature == 0:
        one_hot = torch.zeros_like(logits)
        one_hot[logits.argmax()] = 1.0
        return one_hot, one_hot.clone(), one_hot.bool()
    filtered = filter_logits(logits, temperature, top_k, top_p)
    return (torch.softmax(filter_logits(logits, temperature), -1), torch.softmax(filtered, -1),
            torch.isfinite(filtered))


def _sampling_value(name: str, value) -> float | int | None:
    """A setting as bloomlib.sampling takes it: the sliders' top_k 0 and top_p 1.0 are None (off; 1.0 also spares
    top-p the rounding of a cumulative sum near 1). ValueError for what is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if name == "top_k":
        return None if value == 0 else value  # a float top_k is refused by check_sampling_args
    return None if name == "top_p" and value == 1.0 else float(value)


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():  # a token whose glyph the font lacks draws as a box, not a warning per update
        warnings.simplefilter("ignore", UserWarning)
        fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return buf.getvalue()


class Explorer(_Displayable):
    """A live view of `model` (a causal bloomlib model with `config`: GPT) on a prompt encoded by `tokenizer`.
    `top`: how many of the most likely next tokens the bar chart shows. `seed`: the generator of "Sample next
    token" (the same seed and the same clicks give the same tokens)."""

    def __init__(self, model: torch.nn.Module, tokenizer, prompt: str = DEFAULT_PROMPT, *, top: int = 10,
                 seed: int = 0) -> None:
        config = getattr(model, "config", None)
        if not isinstance(model, torch.nn.Module) or not all(hasattr(config, a) for a in ("block_size", "n_layer",
                                                                                       "n_head", "vocab_size")):
            raise ValueError(f"model must be a bloomlib model with a config (GPT), got {type(model).__name__}")
        if not getattr(config, "causal", True):
            raise ValueError("model must be causal (a next-token model such as GPT), got a bidirectional config")
        if not all(callable(getattr(tokenizer, a, None)) for a in ("encode", "decode", "id_to_piece")):
            raise ValueError(f"tokenizer must be a bloomlib Tokenizer (encode, decode, id_to_piece), got "
                             f"{type(tokenizer).__name__}")
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}: "
                             "not the model's tokenizer")
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= config.vocab_size:
            raise ValueError(f"top must be an integer in [1, {config.vocab_size}] (bars shown), got {top!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
        self.model, self.tokenizer, self.top, self.seed = model, tokenizer, top, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.layer, self.head = 0, 0
        self.temperature, self.top_k, self.top_p = 1.0, None, None
        self.prompt, self.all_ids = "", []
        self.messages: list[str] = []
        self.last_sampled: int | None = None
        self._attention: list[torch.Tensor] = []  # per layer (H, T, T), of the window
        self._logits: torch.Tensor | None = None  # (V,) after the window's last token
        self._syncing = False
        self._build_widget()
        self._set_prompt(prompt)
        self._update()

    # ----------------------------------------------------------------------------------------------- widgets
    def _build_widget(self) -> None:
        w, c = _widgets(), self.model.config
        kw = dict(continuous_update=False, style={"description_width": "8em"})
        self._prompt = w.Text(description="Prompt", layout=w.Layout(width="98%"), **kw)
        self._layer = w.IntSlider(description="Layer", min=0, max=c.n_layer - 1, **kw)
        self._head = w.IntSlider(description="Head", min=0, max=c.n_head - 1, **kw)
        self._temperature = w.FloatSlider(description="Temperature", value=1.0, min=0.0, max=2.0, step=0.05,
                                          readout_format=".2f", **kw)
        self._top_k = w.IntSlider(description="top-k (0 = off)", value=0, min=0, max=c.vocab_size, **kw)
        self._top_p = w.FloatSlider(description="top-p (1 = off)", value=1.0, min=0.05, max=1.0, step=0.05,
                                    readout_format=".2f", **kw)
        self._sample = w.Button(description="Sample next token", button_style="primary")
        self._tokens, self._message, self._summary = w.HTML(), w.HTML(), w.HTML()
        self._attention_image, self._bars_image = w.Image(format="png"), w.Image(format="png")
        for widget, name in [(self._prompt, "prompt"), (self._layer, "layer"), (self._head, "head"),
                             (self._temperature, "temperature"), (self._top_k, "top-k"), (self._top_p, "top-p"),
                             (self._sample, "sample"), (self._tokens, "tokens"), (self._message, "message"),
                             (self._summary, "summary"), (self._attention_image, "attention"),
                             (self._bars_image, "distribution")]:
            widget.add_class(f"bloomlib-explorer-{name}")  # stable hooks for styling and the browser test
        self._prompt.observe(lambda ch: self._from_widget(prompt=ch["new"]), names="value")
        for name in ("layer", "head", "temperature", "top_k", "top_p"):
            getattr(self, f"_{name}").observe(lambda ch, name=name: self._from_widget(**{name: ch["new"]}),
                                              names="value")
        self._sample.on_click(lambda _: self.sample())
        caption = w.HTML("<small>Rows: queries, columns: the keys they attend to. Grey cells are masked: a token "
                         "never sees the tokens after it.</small>")
        self.widget = w.VBox([
            self._prompt, self._tokens, self._message,
            w.HBox([w.VBox([self._layer, self._head, self._attention_image, caption]),
                    w.VBox([self._temperature, self._top_k, self._top_p, self._sample, self._bars_image])]),
            self._summary])
        self.widget.add_class("bloomlib-explorer")

    def _from_widget(self, **change) -> None:
        if not self._syncing:  # a value written by the explorer itself is not a new request
            self.set(**change)

    def _sync_widgets(self) -> None:
        self._syncing = True
        try:
            self._prompt.value = self.prompt
            self._layer.value, self._head.value = self.layer, self.head
            self._temperature.value = self.temperature
            self._top_k.value = self.top_k or 0
            self._top_p.value = 1.0 if self.top_p is None else self.top_p
        finally:
            self._syncing = False

    # -------------------------------------------------------------------------------------------- settings
    def set(self, prompt: str | None = None, *, layer: int | None = None, head: int | None = None,
            temperature: float | None = None, top_k: int | None = None, top_p: float | None = None) -> None:
        """Change what is shown, as the prompt box and the sliders do (an argument left None stays as it is; top_k 0
        and top_p 1.0 turn that filter off), and print the summary line. A bad value is not applied: the widget says
        why, and so do the lines printed after the summary."""
        self.messages = []
        if prompt is not None:
            self._set_prompt(prompt)
        c = self.model.config
        for name, value, n, what in [("layer", layer, c.n_layer, "layers"), ("head", head, c.n_head, "heads")]:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
                self.messages.append(f"{name} must be an integer in 0..{n - 1} (the model has {n} {what}), got "
                                     f"{value!r}: still showing {name} {getattr(self, name)}.")
            else:
                setattr(self, name, value)
        self._set_sampling(temperature, top_k, top_p)
        new_prompt = prompt is not None
        self._update(forward=new_prompt, attention=new_prompt or layer is not None or head is not None,
                            bars=new_prompt or any(v is not None for v in (temperature, top_k, top_p)))

    def _set_sampling(self, temperature, top_k, top_p) -> None:
        """Apply each given value that bloomlib.sampling's own check accepts; a message for each it refuses."""
        for name, value in [("temperature", temperature), ("top_k", top_k), ("top_p", top_p)]:
            if value is None:
                continue
            try:
                value = _sampling_value(name, value)
                check_sampling_args(**{name: value})
            except ValueError as e:
                self.messages.append(f"{e}: still using {self._setting_text(name)}.")
                continue
            setattr(self, name, value)

    def _setting_text(self, name: str) -> str:
        value = getattr(self, name)
        label = name.replace("_", "-")
        return f"{label} off" if value is None else f"{label} {value:.2f}" if isinstance(value, float) else \
            f"{label} {value}"

    def _set_prompt(self, prompt) -> None:
        if not isinstance(prompt, str):
            self.messages.append(f"prompt must be text, got {type(prompt).__name__}: still showing the last prompt.")
            return
        self.prompt = prompt
        self.all_ids = self.tokenizer.encode(prompt) if prompt.strip() else []
        self.last_sampled = None

    # ------------------------------------------------------------------------------------------- computing
    @property
    def ids(self) -> list[int]:
        """The token ids the model sees: the prompt's last block_size tokens."""
        return self.all_ids[-self.model.config.block_size:]

    def _forward(self) -> None:
        """Run the model once on the window: attention of every layer and the next-token logits."""
        self._attention, self._logits = [], None
        ids = self.ids
        if not ids:
            return
        param = next(self.model.parameters(), None)
        idx = torch.tensor([ids], dtype=torch.long, device=None if param is None else param.device)
        was_training = self.model.training
        self.model.eval()  # dropout off while looking; the model's own mode comes back after
        try:
            with torch.inference_mode():
                logits, attention = self.model(idx, return_attention=True)
        except ValueError as e:  # e.g. a token id the model does not know
            self.messages.append(f"the model could not read this prompt: {e}")
            return
        finally:
            self.model.train(was_training)
        self._attention = [a[0].float().cpu() for a in attention]
        self._logits = logits[0, -1].float().cpu()

    def _distribution(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        if self._logits is None:
            return None
        return next_token_distribution(self._logits, self.temperature, self.top_k, self.top_p)

    def sample(self) -> int | None:
        """Draw the next token from the distribution shown (bloomlib.sampling.sample_next_token with this
        explorer's seeded generator), append it to the prompt and update everything; returns its id (None, with
        a message, when there is no prompt). The prompt box then shows the decoded ids: the ids stay as drawn."""
        self.messages = []
        if self._logits is None:  # the update says again why: an empty prompt, or one the model could not read
            self._update()
            return None
        token = int(sample_next_token(self._logits[None], self.temperature, self.top_k, self.top_p,
                                      generator=self.generator)[0])
        self.all_ids = self.all_ids + [token]
        self.prompt = self.tokenizer.decode(self.all_ids)
        self.last_sampled = token
        self._update()
        return token

    # ------------------------------------------------------------------------------------------------ state
    def state(self) -> dict:
        """What the explorer shows, as plain values: prompt, ids / tokens (the window the model sees), dropped
        (tokens cut from the front), the settings (layer, head, temperature, top_k, top_p: None = off),
        attention (T, T) of the chosen layer and head (None without a prompt), before / probs / kept (V,) (see
        `next_token_distribution`), shown_ids / shown_tokens / shown_probs / shown_before / shown_kept (the `top`
        most likely tokens, as in the bar chart), last_sampled, messages and summary (the line printed)."""
        dist = self._distribution()
        before, probs, kept = (None, None, None) if dist is None else (t.clone() for t in dist)
        shown = [] if dist is None else self._shown_ids()
        ids = self.ids
        return {
            "prompt": self.prompt, "ids": list(ids), "tokens": [self.tokenizer.id_to_piece(i) for i in ids],
            "dropped": len(self.all_ids) - len(ids),
            "layer": self.layer, "head": self.head, "temperature": self.temperature, "top_k": self.top_k,
            "top_p": self.top_p,
            "attention": self._attention[self.layer][self.head].clone() if self._attention else None,
            "before": before, "probs": probs, "kept": kept,
            "shown_ids": shown, "shown_tokens": [self.tokenizer.id_to_piece(i) for i in shown],
            "shown_probs": [float(probs[i]) for i in shown], "shown_before": [float(before[i]) for i in shown],
            "shown_kept": [bool(kept[i]) for i in shown],
            "last_sampled": self.last_sampled, "messages": list(self.messages), "summary": self.summary(),
        }

    def _shown_ids(self) -> list[int]:
        """The `top` most likely next tokens (by logit: the same order at every temperature), ties by id."""
        return torch.sort(self._logits, descending=True, stable=True).indices[:self.top].tolist()

    def _piece(self, i: int) -> str:
        return self.tokenizer.id_to_piece(i) if i < self.tokenizer.vocab_size else f"<id {i}>"

    def summary(self) -> str:
        """One line: tokens, layer and head, the sampling settings, how many tokens the filters keep, and the
        most likely next tokens with the probability they are drawn with."""
        n, dist = len(self.ids), self._distribution()
        if dist is None:
            return "Explorer: no tokens (type a prompt)."
        _, probs, kept = dist
        settings = (f"T {self.temperature:.2f}" + (" (greedy)" if self.temperature == 0 else "")
                    + f", {self._setting_text('top_k')}, {self._setting_text('top_p')}")
        nxt = ", ".join(f"'{self._piece(i)}' {float(probs[i]):.3f}"
                        for i in self._shown_ids()[:SUMMARY_TOKENS] if kept[i])
        return (f"Explorer: {n} token{'s' * (n != 1)} | layer {self.layer} head {self.head} | {settings} | "
                f"{int(kept.sum())} of {kept.numel()} kept | next: {nxt}")

    def __repr__(self) -> str:
        return (f"Explorer({type(self.model).__name__}, {len(self.ids)} tokens, layer {self.layer} head {self.head}, "
                f"T {self.temperature:.2f}, {self._setting_text('top_k')}, {self._setting_text('top_p')})")

    # ------------------------------------------------------------------------------------------- rendering
    def _update(self, forward: bool = True, attention: bool = True, bars: bool = True) -> str:
        """Recompute (the model's forward only when the prompt changed), redraw (the heatmap and the bars only
        when asked: when their inputs changed), print and return the summary."""
        if forward:
            self._forward()
        ids, dropped = self.ids, len(self.all_ids) - len(self.ids)
        if not self.prompt.strip():
            self.messages.append("The prompt is empty: type some text.")
        if dropped:
            self.messages.append(f"The prompt is {len(self.all_ids)} tokens, longer than the model's context window "
                                 f"({self.model.config.block_size}): showing its last {len(ids)} tokens.")
        self._sync_widgets()
        self._tokens.value = self._chips_html(ids)
        self._message.value = "".join(f'<div style="color:#b00020">{html.escape(m)}</div>' for m in self.messages)
        self._sample.disabled = self._logits is None
        for image, redraw, draw in [(self._attention_image, attention, self._attention_png),
                                    (self._bars_image, bars, self._bars_png)]:
            if redraw:
                image.value = draw()
                image.layout.display = None if image.value else "none"  # no broken-image icon without a prompt
        line = self.summary()
        self._summary.value = f"<code>{html.escape(line)}</code>"  # last: once it shows, the rest was sent
        print(line)
        for m in self.messages:
            print(f"  {m}")
        return line

    def _chips_html(self, ids: list[int]) -> str:
        style = ("display:inline-block;margin:2px;padding:1px 5px;border:1px solid #999;border-radius:4px;"
                 "font-family:monospace;white-space:pre")
        sampled = len(ids) - 1 if self.last_sampled is not None else -1  # the token just drawn, highlighted
        chips = "".join(
            f'<span class="bloomlib-explorer-chip" style="{style}{";background:#ffe08a" if i == sampled else ""}" '
            f'title="token id {t}">{html.escape(self._piece(t))}<sub style="color:#666">{t}</sub></span>'
            for i, t in enumerate(ids))
        return f"<div>{len(ids)} token{'s' * (len(ids) != 1)}: {chips}</div>"

    def heatmap(self) -> tuple[torch.Tensor, list[str]] | None:
        """What the heatmap draws: the chosen head's weights over the last HEATMAP_TOKENS tokens (k, k), NaN where
        the model's visibility rule masks the key (drawn grey), and the k token labels; None without a prompt."""
        if not self._attention:
            return None
        c, weights = self.model.config, self._attention[self.layer][self.head]
        n = weights.shape[0]
        pos = torch.arange(n)
        masked = ~visible(pos, pos, causal=c.causal, window=c.sliding_window)  # the model's own visibility rule
        shown = slice(max(0, n - HEATMAP_TOKENS), n)
        return weights.masked_fill(masked, math.nan)[shown, shown], [self._piece(i) for i in self.ids[shown]]

    def _attention_png(self) -> bytes:
        from matplotlib.figure import Figure

        from bloomlib.course.viz import plot_attention

        drawn = self.heatmap()
        if drawn is None:
            return b""
        w, labels = drawn
        k, n = len(labels), len(self.ids)
        fig = Figure(figsize=(2.4 + 0.26 * k, 1.8 + 0.24 * k))
        ax = fig.add_subplot()
        ax.set_facecolor(MASKED)  # NaN cells are transparent in viridis: the face shows through, grey
        title = f"layer {self.layer}, head {self.head}" + (f" (last {k} of {n} tokens)" if k < n else "")
        plot_attention(w, labels, title, ax=ax)
        for t in list(ax.texts):
            if t.get_text() == "nan":
                t.remove()
        for t in ax.get_xticklabels() + ax.get_yticklabels():
            t.set_parse_math(False)  # a token such as "$" is text, not mathtext
        return _figure_png(fig)

    def _bars_png(self) -> bytes:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        dist = self._distribution()
        if dist is None:
            return b""
        before, probs, kept = dist
        shown = self._shown_ids()
        y = list(range(len(shown)))[::-1]  # the most likely at the top
        fig = Figure(figsize=(5.2, 1.3 + 0.3 * len(shown)))
        ax = fig.add_subplot()
        ax.barh(y, [float(before[i]) for i in shown], color=BEFORE, height=0.8)
        ax.barh(y, [float(probs[i]) if kept[i] else 0.0 for i in shown], color=KEPT, height=0.5)
        top = max(float(before[shown].max()), float(probs[shown].max()), 1e-9)
        for yi, i in zip(y, shown):
            text = f"{float(probs[i]):.3f}" if kept[i] else "filtered out"
            ax.text(max(float(before[i]), float(probs[i])) + 0.01 * top, yi, text, va="center", fontsize=8,
                    color="black" if kept[i] else "#777777")
        ax.set_yticks(y, [f"{self._piece(i)}  ({i})" for i in shown], parse_math=False, fontfamily="monospace")
        for label, i in zip(ax.get_yticklabels(), shown):
            label.set_color("black" if kept[i] else "#888888")
        ax.set_xlim(0, top * 1.3)
        ax.set_xlabel("probability of the next token")
        ax.set_title("greedy: temperature 0 takes the most likely token" if self.temperature == 0 else
                     f"next token: {int(kept.sum())} of {kept.numel()} kept")
        ax.legend(handles=[Patch(color=BEFORE, label="after temperature"),
                           Patch(color=KEPT, label="drawn from (after top-k, top-p)")], fontsize=7,
                  loc="lower right")
        return _figure_png(fig)
