"""bloomlib.analysis.kv_profile: KV bytes per token, prefix sharing, memory pressure, metrics of a live server.

References: the KV formula from the config with torch's element sizes, the hit count a shared prompt must give
(worked out from the block layout), the tokens the model is actually fed and the blocks actually evicted
(counted by wrapping the runner and the block manager), and GPT.generate's greedy tokens (float64 models)."""
import pytest
import torch

from bloomlib import GPT, GPTConfig
from bloomlib.analysis.kv_profile import (kv_size_check, memory_pressure_sweep, metrics_while_serving,
                                          prefix_sharing_sweep)
from bloomlib.serving.block_manager import BlockManager
from bloomlib.serving.model_runner import ModelRunner


def tiny_gpt(dtype=torch.float64, n_kv_head=2, pos="rope") -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, block_size=64, n_layer=2, n_head=4, n_kv_head=n_kv_head, d_model=32,
                    pos_encoding=pos)
    return GPT(cfg).to(dtype).eval()


@pytest.mark.parametrize("dtype,n_kv_head", [(torch.float32, 4), (torch.float64, 2), (torch.bfloat16, 1)])
def test_kv_size_formula_matches_the_engine_pages(dtype, n_kv_head):
    model = tiny_gpt(dtype, n_kv_head)
    got = kv_size_check(model, kv_block_size=4, num_kv_blocks=5)
    cfg = model.config
    want = 2 * cfg.n_layer * n_kv_head * (cfg.d_model // cfg.n_head) * torch.empty(0, dtype=dtype).element_size()
    assert got["formula_bytes_per_token"] == want and got["engine_bytes_per_token"] == want and got["matches"]
    assert got["slots"] == 20 and got["pool_bytes"] == 20 * want and got["context_bytes"] == 64 * want
    with pytest.raises(ValueError, match="kv_block_size"):
        kv_size_check(model, kv_block_size=0)


def test_prefix_hit_rate_rises_with_share_and_saves_the_shared_prefill(monkeypatch):
    fed = []
    forward = ModelRunner.forward
    monkeypatch.setattr(ModelRunner, "forward", lambda self, tokens, *a, **k: fed.append(sum(map(len, tokens)))
                        or forward(self, tokens, *a, **k))
    n, system, user, new, bs = 12, 16, 6, 3, 4
    rows = prefix_sharing_sweep(tiny_gpt(), (0.0, 0.25, 0.5, 1.0), n_requests=n, system_len=system, user_len=user,
                                max_tokens=new, kv_block_size=bs)
    assert [r["share"] for r in rows] == [0.0, 0.25, 0.5, 1.0]
    assert rows[0]["hits"] == 0 and rows[0]["hit_rate"] == 0.0
    assert [r["hit_rate"] for r in rows] == sorted(r["hit_rate"] for r in rows) and rows[-1]["hit_rate"] > 0.5
    lookups = n * ((system + user - 1) // bs)  # full blocks before the one holding each prompt's last token
    for r, k in zip(rows, (0, 3, 6, 12)):
        assert r["shared_requests"] == k and r["lookups"] == lookups
        # one request at a time: every sharer after the first finds the whole system prompt's blocks cached
        assert r["hits"] == max(k - 1, 0) * (system // bs) and r["hit_rate"] == r["hits"] / lookups
        assert r["prefill_tokens_requested"] == n * (system + user)
        this_share, fed = fed[:r["steps"]], fed[r["steps"]:]  # one forward pass per step
        # what the model was actually fed, less the decode steps' one token per request and new token after the first
        assert sum(this_share) - n * (new - 1) == r["prefill_tokens_computed"]
    assert fed == []
    with pytest.raises(ValueError, match="shares must hold"):
        prefix_sharing_sweep(tiny_gpt(), (0.5, 1.5))
    with pytest.raises(ValueError, match="context window"):
        prefix_sharing_sweep(tiny_gpt(), system_len=60)


def test_preemption_only_under_pressure_and_greedy_tokens_unchanged(monkeypatch):
    evictions = []
    take = BlockManager._take_block

    def counting(self):
        evictions.append(not self.free)  # no empty block left: this take evicts a cached one
        return take(self)

    monkeypatch.setattr(BlockManager, "_take_block", counting)
    model = tiny_gpt(pos="learned")
    n, prompt_len, new, bs = 6, 10, 12, 4
    one = -(-(prompt_len + new) // bs)
    pools = (n * one, 2 * one, one)
    rows = memory_pressure_sweep(model, pools, n_requests=n, prompt_len=prompt_len, max_tokens=new,
                                 kv_block_size=bs, max_num_seqs=n)
    assert [r["num_blocks"] for r in rows] == list(pools)
    big, *pressed = rows
    assert big["preemptions"] == 0 and big["evicted_blocks"] == 0
    assert all(r["preemptions"] > 0 for r in pressed)
    assert all(r["finished"] == n and r["all_same"] and r["generated_tokens"] == n * new for r in rows)
    # evictions as the block manager made them: the reference run first, then one run per pool
    assert sum(evictions) == sum(r["evicted_blocks"] for r in rows) and sum(evictions) > 0
    with pytest.raises(ValueError, match="num_blocks"):
        memory_pressure_sweep(model, (one - 1,), n_requests=n, prompt_len=prompt_len, max_tokens=new,
                              kv_block_size=bs)


@pytest.mark.slow
def test_metrics_series_while_a_live_server_serves(tmp_path):
    pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from bloomlib.checkpoint import save_checkpoint
    from bloomlib.serving.launch import ServerProcess
    from bloomlib.tokenizer import ByteBPETokenizer

    tok = ByteBPETokenizer.train("The quick brown fox jumps over the lazy dog; the cat sat on the mat. " * 4, 270)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m", GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2,
                                                  d_model=32)), tok)
    prompts = [f"the cat {i}" for i in range(8)]
    with ServerProcess(tmp_path / "m", kv_block_size=4, max_num_seqs=8, threads=1) as server:
        series = metrics_while_serving(server, prompts, concurrency=3, poll_s=0.02, max_tokens=6, ignore_eos=True)
        with pytest.raises(ValueError, match="poll_s"):
            metrics_while_serving(server, prompts, poll_s=0)
    assert len(series) >= 2 and [s["t"] for s in series] == sorted(s["t"] for s in series)
    assert set(series[0]) == {"t", "done", "running", "waiting", "kv_blocks_used", "kv_utilization",
                              "prefix_cache_hit_rate", "generated_tokens"}
    tokens = [s["generated_tokens"] for s in series]
    assert tokens == sorted(tokens) and tokens[-1] == 8 * 6
    assert all(s["running"] + s["waiting"] <= 3 for s in series)  # never more in flight than the client threads
    last = series[-1]
    assert last["done"] == 8 and last["running"] == 0 and last["kv_blocks_used"] == 0
