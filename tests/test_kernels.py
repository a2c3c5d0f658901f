"""bloomlib.kernels.flash_attention against float64 attention written here, torch's SDPA, and autograd.

Tolerance rule (FlashAttention's own): error vs float64 <= 2 x the error of plain attention computed in
the same precision, plus a small floor. Triton kernels run through the interpreter on CPU (importing
bloomlib.kernels without a GPU chooses it); with a GPU they run natively, in the `gpu` tests.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import bloomlib.kernels as K
from bloomlib.kernels import flash_attention, tiled

FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = HAS_TRITON and K.triton_kernels.INTERPRET  # this process's Triton kernels take CPU tensors
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs a CUDA GPU and triton")
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="the Triton kernels run natively in this process "
                                       "(a CUDA GPU is present, or triton is missing): no Triton on CPU tensors")


# ---------------------------------------------------------------- references (plain math, written here)
def visible(n_q: int, n_k: int, causal: bool, window: int | None, device="cpu") -> torch.Tensor:
    """(n_q, n_k) bool: query i at position i + n_k - n_q sees key j (CONTRIBUTING.md conventions)."""
    pos = torch.arange(n_q, device=device)[:, None] + (n_k - n_q)
    j = torch.arange(n_k, device=device)[None, :]
    ok = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    if causal or window is not None:
        ok &= j <= pos
    if window is not None:
        ok &= j > pos - window
    return ok


def plain_attention(q, k, v, causal=False, window=None, scale=None):
    """softmax(q kᵀ scale) v in the inputs' own dtype, materialising every score. Returns (O, L)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    ok = visible(q.shape[2], k.shape[2], causal, window, q.device)
    p = torch.softmax(s.masked_fill(~ok, torch.finfo(s.dtype).min), -1) * ok  # empty rows -> 0, not NaN
    return p @ v, torch.logsumexp(s.masked_fill(~ok, float("-inf")), -1)


def ours(backend, q, k, v, causal, window, block_m=None, block_n=None):
    """(O, L) from the chosen backend's forward (L is not returned by flash_attention)."""
    if backend == "torch":
        return tiled.flash_forward(q, k, v, causal, None, window, block_m or 64, block_n or 64)
    from bloomlib.kernels import triton_kernels

    if triton_kernels.INTERPRET and q.dtype == torch.bfloat16:  # as flash_attention does: interpreter dots are
        q, k, v = q.float(), k.float(), v.float()                 # wrong in bf16
    return triton_kernels.forward(q, k, v, causal, None, window, block_m, block_n)


def check(backend, B, H, Hkv, n_q, n_k, d, causal, window, dtype, device="cpu", grads=True, seed=0, block=None):
    gen = torch.Generator(device).manual_seed(seed)
    q, k, v = (torch.randn(B, h, n, d, generator=gen, device=device).to(dtype)
               for h, n in ((H, n_q), (Hkv, n_k), (Hkv, n_k)))
    do = torch.randn(B, H, n_q, d, generator=gen, device=device).to(dtype)
    q64, k64, v64, do64 = (t.double().requires_grad_() for t in (q, k, v, do))
    ref_o, ref_L = plain_attention(q64, k64, v64, causal, window)
    pq, pk, pv = (t.clone().requires_grad_() for t in (q, k, v))
    low_o, low_L = plain_attention(pq, pk, pv, causal, window)
    fq, fk, fv = (t.clone().requires_grad_() for t in (q, k, v))
    out = flash_attention(fq, fk, fv, causal=causal, window=window, backend=backend, block_m=block, block_n=block)
    o, L = ours(backend, q, k, v, causal, window, block, block)

    def err(a, b):
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0

    def assert_rule(name, mine, plain, ref, factor=2.0):
        e, e_plain = err(mine, ref), err(plain, ref)
        assert e <= factor * e_plain + FLOOR[dtype], f"{name}: error {e:.3g} vs plain {dtype} attention {e_plain:.3g}"

    assert out.dtype == dtype and out.shape == (B, H, n_q, d)
    assert torch.equal(out, o.to(dtype)), "flash_attention and the backend's forward disagree"
    assert_rule("O", o, low_o, ref_o)
    finite = torch.isfinite(ref_L)
    assert torch.equal(torch.isfinite(L), finite) and (L[~finite] == float("-inf")).all()
    assert_rule("L", L[finite], low_L[finite], ref_L[finite])
    if grads:
        ref_g = torch.autograd.grad(ref_o, (q64, k64, v64), do64)
        low_g = torch.autograd.grad(low_o, (pq, pk, pv), do)
        my_g = torch.autograd.grad(out, (fq, fk, fv), do)
        for name, mine, plain, ref in zip(("dq", "dk", "dv"), my_g, low_g, ref_g):
            assert torch.isfinite(mine).all() and mine.dtype == dtype
            assert_rule(name, mine, plain, ref)


# ---------------------------------------------------------------- correctness vs float64
BACKENDS = ["torch", "triton"] if INTERPRETED else ["torch"]  # what CPU tensors can use in this process
FAST_CASES = [  # B, H, Hkv, n_q, n_k, d, causal, window, dtype
    (1, 2, 2, 17, 17, 16, False, None, torch.float32),
    (2, 4, 2, 100, 100, 32, True, None, torch.float32),     # GQA, ragged last tile
    (1, 2, 2, 17, 129, 64, True, None, torch.float16),      # decoding-style n_q < n_k
    (1, 4, 1, 129, 64, 16, True, None, torch.float32),      # MQA, n_q > n_k: first rows see nothing
    (1, 2, 1, 100, 129, 32, False, 16, torch.float16),      # sliding window (implies causal bound)
    (1, 2, 2, 1, 64, 32, True, None, torch.float32),        # one query
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", FAST_CASES, ids=lambda c: "-".join(map(str, c)).replace("torch.", ""))
def test_matches_float64(backend, case):
    check(backend, *case)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_float64_small_tiles(backend):
    """Tiles of 16 put many tile edges, skipped tiles and window bounds inside one call."""
    check(backend, 1, 4, 2, 90, 122, 16, True, 18, torch.float32, block=16)  # w=18: a window edge on a tile edge
    check(backend, 1, 2, 1, 79, 64, 16, True, None, torch.float32, block=16)  # n_k - n_q = 1 (mod 16): diagonal


NS, DS = (1, 17, 64, 100, 129), (16, 32, 64)
SLOW_SQUARE = list(itertools.product(BACKENDS, NS, DS, (False, True), (torch.float32, torch.float16)))
SLOW_RAGGED = [  # (n_q, n_k), heads, window
    (nq_nk, hk, w) for nq_nk in ((1, 17), (17, 1), (64, 129), (129, 64), (100, 17), (17, 100), (60, 92))
    for hk in ((4, 4), (4, 2), (4, 1)) for w in (None, 1, 18, 50)
]


@pytest.mark.slow
@pytest.mark.parametrize("backend,n,d,causal,dtype", SLOW_SQUARE)
def test_grid_square(backend, n, d, causal, dtype):
    check(backend, 1, 2, 2, n, n, d, causal, None, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nq_nk,heads,window", SLOW_RAGGED)
def test_grid_ragged_gqa_window(backend, nq_nk, heads, window):
    for causal in (False, True) if window is None else (True,):
        check(backend, 1, heads[0], heads[1], nq_nk[0], nq_nk[1], 16, causal, window, torch.float32, block=16)


@needs_interpreter
def test_bf16_on_cpu_interpreter_is_computed_in_fp32():
    """The interpreter's bf16 tl.dot is wrong, so the CPU Triton path upcasts; the answer must still be right."""
    check("triton", 1, 2, 2, 33, 33, 16, True, None, torch.bfloat16)


# ---------------------------------------------------------------- vs torch's SDPA
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_q,n_k,H,Hkv,causal", [(64, 100, 4, 4, False), (100, 100, 4, 2, True),
                                                  (17, 17, 4, 1, False)])
def test_matches_torch_sdpa(backend, n_q, n_k, H, Hkv, causal):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, H, n_q, 32, generator=gen, requires_grad=True)
    k, v = (torch.randn(2, Hkv, n_k, 32, generator=gen, requires_grad=True) for _ in range(2))
    mine = flash_attention(q, k, v, causal=causal, backend=backend)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=Hkv != H)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    g_mine = torch.autograd.grad(mine.square().sum(), (q, k, v))
    g_theirs = torch.autograd.grad(theirs.square().sum(), (q, k, v))
    for a, b in zip(g_mine, g_theirs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_softmax_scale_is_used():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 20, 16, generator=gen) for _ in range(3))
    for backend in BACKENDS:
        mine = flash_attention(q, k, v, softmax_scale=0.3, backend=backend)
        torch.testing.assert_close(mine, F.scaled_dot_product_attention(q, k, v, scale=0.3), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- tiles, masks, gradcheck, memory
def test_output_does_not_depend_on_tile_sizes():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 70, 16, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, 1, 90, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    for causal, window in ((False, None), (True, None), (True, 20)):
        ref, _ = plain_attention(q, k, v, causal, window)
        for bm, bn in ((1, 128), (16, 32), (32, 16), (7, 13), (128, 128)):
            o, _ = tiled.flash_forward(q, k, v, causal, None, window, bm, bn)
            torch.testing.assert_close(o, ref, atol=1e-12, rtol=0)
        if not INTERPRETED:
            continue
        q32, k32, v32 = q.float(), k.float(), v.float()
        outs = [flash_attention(q32, k32, v32, causal=causal, window=window, backend="triton", block_m=bm, block_n=bn)
                for bm, bn in ((16, 16), (16, 64), (64, 32))]
        for o in outs:
            torch.testing.assert_close(o.double(), ref, atol=2e-6, rtol=0)


def test_fully_masked_rows_give_zero_output_and_gradients():
    """n_q > n_k with causal: the first n_q - n_k queries sit before every key."""
    for backend in BACKENDS:
        q = torch.randn(1, 2, 40, 16, requires_grad=True)
        k, v = (torch.randn(1, 2, 24, 16, requires_grad=True) for _ in range(2))
        out = flash_attention(q, k, v, causal=True, backend=backend)
        (out * torch.randn_like(out)).sum().backward()
        assert (out[:, :, :16] == 0).all() and (out[:, :, 16:] != 0).any()
        assert (q.grad[:, :, :16] == 0).all()
        assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_window_skips_tiles_outside_it():
    """Keys in a tile that no query's window reaches are never read: NaN there must not leak out."""
    q = torch.randn(1, 2, 40, 16, requires_grad=True)  # n_q < n_k: query i sits at position i + 24
    k, v = (torch.randn(1, 2, 64, 16) for _ in range(2))
    k[:, :, :16], v[:, :, :16] = float("nan"), float("nan")  # every window starts after key 24 - 8 = 16
    k.requires_grad_(), v.requires_grad_()
    for backend in BACKENDS:
        out = flash_attention(q, k, v, window=8, backend=backend, block_m=16, block_n=16)
        ref, _ = plain_attention(q.detach(), k.detach()[:, :, 16:], v.detach()[:, :, 16:], window=8)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in (dq, dk, dv))
        assert (dk[:, :, :16] == 0).all() and (dv[:, :, :16] == 0).all()


def test_gradcheck_tiled_float64():
    gen = torch.Generator().manual_seed(4)
    for causal, window, (n_q, n_k), heads in ((False, None, (5, 7), (2, 2)), (True, None, (9, 6), (4, 2)),
                                              (True, 3, (8, 8), (2, 1))):
        q = torch.randn(1, heads[0], n_q, 4, generator=gen, dtype=torch.float64, requires_grad=True)
        k, v = (torch.randn(1, heads[1], n_k, 4, generator=gen, dtype=torch.float64, requires_grad=True)
                for _ in range(2))
        fn = lambda q, k, v: flash_attention(q, k, v, causal=causal, window=window, backend="torch",  # noqa: E731
                                             block_m=3, block_n=2)
        assert torch.autograd.gradcheck(fn, (q, k, v))


class ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor any aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def largest(shapes) -> int:
    return max(torch.Size(s).numel() for s in shapes)


def test_tiled_never_creates_an_n_q_by_n_k_tensor():
    B, H, n_q, n_k, d = 1, 2, 160, 128, 16
    q = torch.randn(B, H, n_q, d, requires_grad=True)
    k, v = (torch.randn(B, H, n_k, d, requires_grad=True) for _ in range(2))
    with ShapeRecorder() as plain:
        plain_attention(q, k, v, causal=True)[0].sum().backward()
    assert largest(plain.shapes) >= n_q * n_k  # the recorder does see the score matrix of plain attention
    for causal in (False, True):
        with ShapeRecorder() as rec:
            out = flash_attention(q, k, v, causal=causal, backend="torch", block_m=32, block_n=32)
            n_fwd = len(rec.shapes)
            out.sum().backward()
        assert len(rec.shapes) > n_fwd  # backward ops were recorded too
        assert largest(rec.shapes) <= B * H * max(n_q, n_k) * d  # O(n·d): inputs, outputs, grads
        assert not any(s[-2:] in ((n_q, n_k), (n_k, n_q)) for s in rec.shapes if len(s) >= 2)


# ---------------------------------------------------------------- backends, triton availability, errors
def run_python(code: str, **env: str) -> str:
    """Runs code in a fresh Python, TRITON_INTERPRET unset unless env sets it; returns its last line of output."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.strip().splitlines()[-1]


IMPORT_TIME_CHOICE = """
    import json, os, warnings, torch
    import torch.nn.functional as F
    {before}
    from bloomlib.kernels import flash_attention, triton_kernels

    calls = []
    real = triton_kernels.forward
    triton_kernels.forward = lambda *a: calls.append(1) or real(*a)
    q, k, v = (torch.randn(1, 2, 40, 16, requires_grad=True) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = flash_attention(q, k, v, causal=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    auto = "triton" if calls else "torch"
    try:
        out = flash_attention(q, k, v, causal=True, backend="triton")
        error = None
    except RuntimeError as e:
        error = str(e)
    else:
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        for mine, theirs in zip(torch.autograd.grad(out.square().sum(), (q, k, v)), ref_grads):
            torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
    print(json.dumps(dict(env=os.environ.get("TRITON_INTERPRET"), interpret=triton_kernels.INTERPRET, auto=auto,
                          warnings=[str(x.message) for x in w], error=error, triton_calls=len(calls))))
"""


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="about machines without a CUDA GPU")
@pytest.mark.parametrize("case", ["bloomlib chooses", "user chooses", "native before", "too late"])
def test_interpreted_or_native_is_decided_at_import(case):
    """Interpreted or native is fixed when triton is first imported (triton.language builds its own @jit helpers
    then): bloomlib sets TRITON_INTERPRET=1 when nothing imported triton yet, and otherwise says what to do."""
    before = {"native before": "import triton  # natively, as torch.compile would",
              "too late": "import triton\n    os.environ['TRITON_INTERPRET'] = '1'"}.get(case, "")
    env = {"TRITON_INTERPRET": "1"} if case == "user chooses" else {}
    r = json.loads(run_python(IMPORT_TIME_CHOICE.format(before=before), **env))
    if case in ("bloomlib chooses", "user chooses"):
        assert r["env"] == "1" and r["interpret"] and r["error"] is None and r["warnings"] == []
        # backend=None: the (slow) interpreter only when the user asked for it; then backend="triton" runs it
        assert (r["auto"], r["triton_calls"]) == (("torch", 1) if case == "bloomlib chooses" else ("triton", 2))
        return
    assert not r["interpret"] and r["auto"] == "torch" and r["triton_calls"] == 0
    assert "set TRITON_INTERPRET=1 before importing triton" in r["error"]
    if case == "native before":  # bloomlib did not set it, and backend=None quietly uses the tiled version
        assert r["env"] is None and r["warnings"] == []
    else:  # asked for the interpreter too late: told so, and the tiled version is used
        assert len(r["warnings"]) == 1 and "before importing triton" in r["warnings"][0]


def test_without_triton_import_works_and_falls_back():
    code = """
        import sys, warnings, torch
        sys.modules["triton"] = None  # makes `import triton` raise ImportError, as on macOS / Windows
        import bloomlib.kernels as K
        assert K.triton_status().startswith("not installed"), K.triton_status()
        q = torch.randn(1, 2, 8, 16)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            out = K.flash_attention(q, q, q, backend="triton")
        assert any("Triton is not installed" in str(x.message) for x in w), [str(x.message) for x in w]
        torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, q, q))
        print("ok")
    """
    assert run_python(code) == "ok"


def test_triton_status_here():
    status = K.triton_status()
    if not HAS_TRITON:
        assert status.startswith("not installed")
    elif INTERPRETED:
        assert "interpreted (TRITON_INTERPRET=1" in status
    else:
        assert ("native (CUDA)" in status) if torch.cuda.is_available() else ("no CUDA GPU" in status)


@needs_triton
def test_cpu_tests_cover_the_triton_kernels_without_a_gpu():
    """Without a GPU the interpreter must have been chosen, or every CPU test of the Triton kernels drops out."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the kernels run natively, in the gpu tests")
    assert INTERPRETED and "triton" in BACKENDS


@pytest.mark.parametrize("args,kwargs,match", [
    ((torch.randn(2, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)), {}, "q must be a 4-D"),
    ((torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 32), torch.randn(1, 2, 8, 32)), {}, "head_dim"),
    ((torch.randn(1, 4, 8, 16), torch.randn(1, 3, 8, 16), torch.randn(1, 3, 8, 16)), {}, "kv_heads=3 must divide"),
    ((torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 9, 16)), {}, "same shape"),
    ((torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16).half(), torch.randn(1, 2, 8, 16)), {}, "share a dtype"),
    ((torch.randn(1, 2, 8, 16),) * 3, {"window": 0}, "window"),
    ((torch.randn(1, 2, 8, 16),) * 3, {"backend": "cuda"}, "backend"),
    ((torch.randn(1, 2, 8, 24),) * 3, {"backend": "triton"}, "power of two in 16..128"),
    ((torch.randn(1, 2, 8, 256),) * 3, {"backend": "triton"}, "power of two in 16..128"),
    ((torch.randn(1, 2, 8, 16).double(),) * 3, {"backend": "triton"}, "dtype must be one of"),
    pytest.param((torch.randn(1, 2, 8, 16),) * 3, {"backend": "triton", "block_m": 8}, "block sizes", marks=needs_interpreter),
    ((torch.randn(1, 2, 8, 16),) * 3, {"backend": "torch", "block_m": 0}, "block sizes"),
])
def test_bad_input_raises_value_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        flash_attention(*args, **kwargs)


def test_unsupported_head_dim_falls_back_to_tiled_when_backend_is_auto():
    q = torch.randn(1, 2, 8, 24)
    torch.testing.assert_close(flash_attention(q, q, q), F.scaled_dot_product_attention(q, q, q))


def test_bench_flash_cpu_reports_memory(capsys):
    from bloomlib.kernels import bench

    assert bench.main(["--cpu", "--n", "64", "128", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    mem = {(r["impl"], r["n"]): r["largest_bytes"] for r in result["memory"]}
    assert mem[("plain", 128)] >= 4 * 128 * 128 * 4  # B1 H4 n x n fp32 scores
    assert mem[("flash", 128)] < mem[("plain", 128)] and mem[("flash", 128)] <= 4 * 128 * 64 * 4
    assert {t["backend"] for t in result["timing"]} == {"torch", "triton"}
    assert all("seconds" in t for t in result["timing"]) == INTERPRETED


AHEAD_OF_TIME = """
    import torch, triton  # triton first, TRITON_INTERPRET unset: native, even without a GPU
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from bloomlib.kernels import triton_kernels as T

    assert not T.INTERPRET
    q = torch.empty(1, 4, 100, 128)
    n = 0
    for kernel, backward in ((T._attn_fwd, False), (T._attn_bwd_dkdv, True), (T._attn_bwd_dq, True)):
        for dtype, window in ((torch.bfloat16, 64), (torch.float32, None)):
            cfg = T._config(q.to(dtype), q[:, :2].to(dtype), True, window, None, None, backward)
            consts = {a: cfg[a] for a in ("CAUSAL", "WINDOW", "PREC", "BLOCK_M", "BLOCK_N", "D")}
            ty = "bf16" if dtype == torch.bfloat16 else "fp32"
            sig = {a: "constexpr" if a in consts else "fp32" if a == "scale" else "*fp32" if a in ("L", "Dr")
                   else f"*{ty}" if a in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV") else "i32"
                   for a in kernel.arg_names}
            compiled = triton.compile(ASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32),
                                      options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))
            assert compiled.asm["cubin"] and compiled.metadata.shared <= 100 * 1024, compiled.metadata.shared
            n += 1
    print(n)
"""


@pytest.mark.slow
@needs_triton
def test_native_kernels_compile_for_a_gpu_target(tmp_path):
    """The interpreter never runs Triton's compiler: compile the native kernels ahead of time for sm_90 (no GPU
    needed: the triton wheel ships ptxas), so that a GPU-only front-end error shows up here too. In a fresh
    process (this one may be interpreting) with an empty Triton cache, so that it compiles for real every time."""
    assert run_python(AHEAD_OF_TIME, TRITON_CACHE_DIR=str(tmp_path)) == "6"
    assert any(tmp_path.iterdir())  # the compiler wrote its results: nothing came from a cache


# ---------------------------------------------------------------- GPU (native Triton)
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [16, 128])
def test_gpu_native(dtype, causal, d):
    check("triton", 2, 8, 2, 1000, 1000, d, causal, None, dtype, device="cuda")
    check("triton", 1, 4, 4, 77, 1000, d, causal, 256, dtype, device="cuda")
    check("triton", 1, 4, 1, 300, 129, d, causal, None, dtype, device="cuda")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("n", [4096, 16384])
def test_gpu_large_n_bf16(n):
    check("triton", 1, 2, 2, n, n, 128, True, None, torch.bfloat16, device="cuda", grads=n <= 4096)
