"""The zoo of small course models: the shipped lesson-04 checkpoints, their command, and the task batches they train on."""
import dataclasses
import json
import math
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bloomlib.checkpoint import load_checkpoint, load_course_model
from bloomlib.config import GPTConfig
from bloomlib.model import GPT
from bloomlib.training import zoo
from bloomlib.training.data import IGNORE, TaskSource, make_task
from bloomlib.training.train import TrainConfig, evaluate, lm_loss, train

LESSON04 = zoo.FAMILIES["lesson04"]
NAMES = [f"lesson04/{spec.name}" for spec in LESSON04]


@pytest.fixture(scope="module")
def corpus():
    return zoo.corpus_splits()


def test_lesson04_is_shipped_and_small():
    assert sorted(n for n in zoo.shipped_models() if n.startswith("lesson04/")) == sorted(NAMES)
    files = [f for f in (zoo.ASSETS / "lesson04").rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    assert size <= 6_000_000, f"bloomlib/assets/lesson04 is {size / 1e6:.2f} MB; lesson 04 ships at most 6 MB"
    assert {f.parent.relative_to(zoo.ASSETS).as_posix() for f in files} == set(NAMES)  # nothing but the table


@pytest.mark.parametrize("name", NAMES)
def test_shipped_checkpoint_is_what_the_table_says(name, corpus):
    spec = zoo.zoo_model(name)
    ckpt = zoo.load_zoo_model(name)
    assert ckpt.model.config == spec.config
    meta = ckpt.meta
    args = shlex.split(meta["command"])
    assert args[:4] == ["python", "-m", "bloomlib.training.zoo", "lesson04"]
    assert "--only" not in args or spec.name in args[args.index("--only") + 1:]
    assert meta["train"] == json.loads(json.dumps(dataclasses.asdict(spec.train)))
    assert meta["init"] == spec.init and meta["threads"] >= 1
    if spec.task is None:
        tok, _, val = corpus
        text = "The return statement leaves the current function call."
        assert ckpt.tokenizer.encode(text) == load_course_model().tokenizer.encode(text)
        data = val
    else:
        assert ckpt.tokenizer is None and meta["data"]["options"] == spec.task.options
        data = spec.task
    # the shipped weights are the ones whose validation loss the meta records (same windows, same code)
    again = evaluate(ckpt.model, data, spec.train.batch_size, spec.train.seq_len or spec.config.block_size,
                     spec.train.eval_batches)
    assert again == pytest.approx(meta["val_loss"], rel=1e-4)


def test_position_models_beat_the_unigram_loss(corpus):
    """Each language model predicts held-out text far better than token frequencies alone (float64 counts)."""
    _, train_ids, val_ids = corpus
    counts = Counter(train_ids.tolist())
    total = sum(counts.values())
    unigram = -sum(math.log(counts.get(t, 0.5) / total) for t in val_ids.tolist()) / len(val_ids)
    L = zoo.POSITION_TRAIN_LEN
    n = (len(val_ids) - 1) // L
    x, y = val_ids[: n * L].view(n, L), val_ids[1: n * L + 1].view(n, L)
    for spec in LESSON04:
        if spec.task is None:
            with torch.no_grad():
                loss = lm_loss(zoo.load_zoo_model(f"lesson04/{spec.name}").model(x), y).item()
            assert loss < unigram - 1.0, (spec.name, loss, unigram)


def _recall_by_distance(model, n_pairs: int, n: int = 2000) -> torch.Tensor:
    """(n_pairs,) accuracy of recalling the queried value; entry d - 1: the queried pair is d pairs back."""
    spec = zoo.zoo_model("lesson04/kv_recall")
    batch = make_task("kv_recall", n, n_pairs=n_pairs, generator=torch.Generator().manual_seed(7), **spec.task.options)
    with torch.no_grad():
        right = model(batch.inputs)[:, -1].argmax(-1) == batch.targets[:, -1]
    queried = (batch.inputs[:, : 2 * n_pairs: 2] == batch.inputs[:, -1:]).int().argmax(1)  # which pair holds the key
    distance = n_pairs - queried
    return torch.stack([right[distance == d].float().mean() for d in range(1, n_pairs + 1)])


def test_kv_recall_model_recalls_and_a_sliding_window_is_blind_past_its_reach():
    ckpt = zoo.load_zoo_model("lesson04/kv_recall")
    chance = 1 / zoo.KV_VALUES
    assert _recall_by_distance(ckpt.model, zoo.KV_TRAIN_PAIRS[1]).mean() > 0.8
    for w in (8, 16):  # same weights; the last layer only sees w tokens, so a value 2d >= w tokens back is lost
        windowed = GPT(dataclasses.replace(ckpt.model.config, sliding_window=w)).eval()
        windowed.load_state_dict(ckpt.model.state_dict())
        acc = _recall_by_distance(windowed, 16)
        d = torch.arange(1, 17)
        assert acc[2 * d < w].min() > 0.8 and acc[2 * d >= w].max() < chance + 0.1, (w, acc)


def test_load_zoo_model_names_what_exists(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="available:.*lesson04/kv_recall"):
        zoo.load_zoo_model("nope")
    monkeypatch.setattr(zoo, "ASSETS", tmp_path)  # in the table but not built
    with pytest.raises(ValueError, match=r"not shipped; build it with `python -m bloomlib.training.zoo lesson04"):
        zoo.load_zoo_model("lesson04/kv_recall")
    with pytest.raises(ValueError, match="the table has"):
        zoo.zoo_model("lesson04/nope")


def test_init_model_is_seeded_and_leaves_the_global_rng_alone():
    spec = zoo.zoo_model("lesson04/positions/rope-seed0")
    state = torch.get_rng_state()
    a, b = zoo.init_model(spec), zoo.init_model(spec)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    other = zoo.init_model(zoo.zoo_model("lesson04/positions/rope-seed1"))
    assert not torch.equal(a.transformer.tok_emb.weight, other.transformer.tok_emb.weight)
    # "torch" init: nn.Embedding's own N(0, 1), not GPT's N(0, 0.02)
    assert a.transformer.tok_emb.weight.std().item() == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="init"):
        zoo.init_model(dataclasses.replace(spec, init="xavier"))


def test_cli_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit):
        zoo.main(["lesson04", "--out", "unused", "--only", "positions/nope"])
    assert "positions/alibi-seed0" in capsys.readouterr().err


def rebuild_with_recorded_command(name: str, out: Path) -> tuple[dict, dict]:
    """(shipped, rebuilt) weights of zoo model `name` ("family/model"): the command its meta records, run again
    into `out` for this model alone (any --only of the recorded command dropped) with the recorded thread count."""
    meta = zoo.load_zoo_model(name).meta
    family, _, short = name.partition("/")
    args = shlex.split(meta["command"])
    assert args[:4] == ["python", "-m", "bloomlib.training.zoo", family]
    args = args[3:]
    while "--only" in args:
        del args[args.index("--only"):args.index("--only") + 2]
    args[args.index("--out") + 1] = str(out)
    args += ["--only", short, "--threads", str(meta["threads"]), "--no-progress"]
    run = subprocess.run([sys.executable, "-m", "bloomlib.training.zoo", *args], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    shipped = load_file(zoo.ASSETS / name / "model.safetensors")
    rebuilt = load_file(Path(out) / short / "model.safetensors")
    assert shipped.keys() == rebuilt.keys()
    return shipped, rebuilt


@pytest.mark.slow
def test_documented_command_rebuilds_the_same_weights(tmp_path):
    """Re-run the recorded command for the fastest shipped model, with its thread count: the same weights.
    (On the same machine and thread count the CPU kernels are deterministic: the rebuild was bit-equal here.)"""
    name = min(NAMES, key=lambda n: zoo.load_zoo_model(n).meta["train_seconds"])
    shipped, rebuilt = rebuild_with_recorded_command(name, tmp_path)
    for key in shipped:
        assert torch.allclose(shipped[key], rebuilt[key], rtol=0, atol=1e-6), key


def _tiny_snapshot(stop_at: int | None, name: str = "run", seed: int = 0) -> zoo.ZooModel:
    config = GPTConfig(vocab_size=7, block_size=16, n_layer=1, n_head=2, d_model=16)
    cfg = TrainConfig(steps=30, batch_size=8, warmup_steps=5, eval_interval=10, eval_batches=1, seed=seed)
    return zoo.ZooModel(f"{name}/s{stop_at}", config, cfg, TaskSource("copy", dict(seq_len=4, n_symbols=6)),
                        stop_at=stop_at)


def test_snapshots_of_a_run_train_once_and_equal_the_run_cut_short(tmp_path, monkeypatch):
    """main builds the snapshots of one run (--only a folder selects them) in one training; a snapshot built on its
    own (its run stopped there) has the same weights, and its history is the start of the run's."""
    other = _tiny_snapshot(20, "other", seed=1)  # another run
    monkeypatch.setitem(zoo.FAMILIES, "tiny", (_tiny_snapshot(10), _tiny_snapshot(30), other))
    built, real_build = [], zoo.build
    monkeypatch.setattr(zoo, "build", lambda spec, *a, **kw: built.append(spec.name) or real_build(spec, *a, **kw))
    zoo.main(["tiny", "--out", str(tmp_path / "run"), "--only", "run", "--no-progress"])
    zoo.main(["tiny", "--out", str(tmp_path / "alone"), "--only", "run/s10", "--no-progress"])
    assert built == ["run/s30", "run/s10"] and not (tmp_path / "run" / "other").exists()
    early, alone, last = (load_checkpoint(tmp_path / f) for f in ("run/run/s10", "alone/run/s10", "run/run/s30"))
    for key, value in early.model.state_dict().items():
        assert torch.equal(value, alone.model.state_dict()[key]), key
    assert not torch.equal(early.model.lm_head.weight, last.model.lm_head.weight)
    assert last.meta["history"]["step"] == [10, 20, 30] and early.meta["history"]["step"] == [10]
    assert early.meta["history"]["val_loss"] == last.meta["history"]["val_loss"][:1] == [early.meta["val_loss"]]
    assert early.meta["stop_at"] == 10
    for spec, snapshot in ((_tiny_snapshot(30), other), (_tiny_snapshot(10), _tiny_snapshot(20))):  # later one
        with pytest.raises(ValueError, match="not a snapshot"):
            zoo.build(spec, tmp_path / "x", "cmd", snapshots=[(snapshot, tmp_path / "y")])
    with pytest.raises(ValueError, match="stop_at must be a multiple"):
        _tiny_snapshot(15)


# --- TaskSource: synthetic task batches for the training loop ---------------------------------------------------


def test_task_source_batches_follow_the_task():
    state = torch.get_rng_state()
    source = TaskSource("kv_recall", dict(n_keys=8, n_values=5), "n_pairs", (2, 5))
    assert torch.equal(torch.get_rng_state(), state)  # checking its options draws from a generator of its own
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        x, y = source(6, gen)
        n_pairs = (x.shape[1] - 2) // 2
        seen.add(n_pairs)
        assert x.shape == y.shape == (6, 2 * n_pairs + 2)
        assert (y[:, :-1] == IGNORE).all()
        for row, target in zip(x.tolist(), y[:, -1].tolist()):
            table = dict(zip(row[0:2 * n_pairs:2], row[1:2 * n_pairs:2]))
            assert row[-2] == 8 + 5 and table[row[-1]] == target  # QUERY, then a key whose value is the target
    assert seen == {2, 3, 4, 5}
    a = source(4, torch.Generator().manual_seed(3))
    b = source(4, torch.Generator().manual_seed(3))
    assert all(torch.equal(s, t) for s, t in zip(a, b))


def test_task_source_bad_input():
    with pytest.raises(ValueError, match="vary and vary_range"):
        TaskSource("kv_recall", vary="n_pairs")
    with pytest.raises(ValueError, match="vary_range"):
        TaskSource("kv_recall", {}, "n_pairs", (0, 3))
    with pytest.raises(ValueError, match="n_pairs"):
        TaskSource("kv_recall", dict(n_keys=4), "n_pairs", (1, 5))  # 5 pairs need 5 keys
    with pytest.raises(ValueError, match="unknown task"):
        TaskSource("parity")


def test_train_learns_a_task_from_a_source():
    torch.manual_seed(0)
    source = TaskSource("copy", dict(seq_len=4, n_symbols=6))
    model = GPT(GPTConfig.preset("tiny", vocab_size=7, block_size=16))
    before = evaluate(model, source, 16, 0, 2)
    hist = train(model, source, source, TrainConfig(steps=150, batch_size=32, lr=1e-2, warmup_steps=20,
                                                    eval_interval=150, eval_batches=2), progress=False, log=None)
    assert before > 1.5 and hist["val_loss"][-1] < 0.05  # from about ln 7 to nearly exact
    batch = make_task("copy", 200, seq_len=4, n_symbols=6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert batch.accuracy(model(batch.inputs)) > 0.95
