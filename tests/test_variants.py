"""bloomlib.variants against references it did not write: F.unfold / nn.Conv2d (ViT patches),
transformers.audio_utils and a float64 numpy DFT (mel spectrogram), Hugging Face `tokenizers` (BERT inputs)."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bloomlib.tokenizer import CharTokenizer
from bloomlib.variants import AudioFrontend, PatchEmbedding, bert_inputs, mel_filterbank, mel_spectrogram, patchify


@pytest.mark.parametrize("shape,p", [((2, 3, 8, 12), 4), ((1, 1, 6, 6), 3), ((3, 2, 4, 4), 1), ((1, 3, 5, 5), 5)])
def test_patchify_matches_unfold(shape, p):
    x = torch.randn(shape)
    ref = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (B, L, C*p*p), channel-major like patchify
    assert torch.equal(patchify(x, p), ref)


def test_patch_embedding_is_a_strided_conv():
    torch.manual_seed(0)
    emb = PatchEmbedding(image_size=16, patch_size=4, in_channels=3, d_model=8)
    conv = nn.Conv2d(3, 8, kernel_size=4, stride=4)
    with torch.no_grad():
        conv.weight.copy_(emb.proj.weight.view(8, 3, 4, 4))
        conv.bias.copy_(emb.proj.bias)
    x = torch.randn(2, 3, 16, 16)
    out = emb(x)
    assert out.shape == (2, 1 + 16, 8)
    ref = conv(x).flatten(2).transpose(1, 2) + emb.pos[:, 1:]
    torch.testing.assert_close(out[:, 1:], ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 0], (emb.cls + emb.pos[:, :1])[0].expand(2, -1))


def test_patch_errors():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        patchify(torch.randn(1, 3, 10, 12), 4)
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        patchify(torch.randn(3, 8, 8), 4)
    with pytest.raises(ValueError, match="not divisible"):
        PatchEmbedding(10, 4, 3, 8)
    with pytest.raises(ValueError, match=r"\(batch, 3, 16, 16\)"):
        PatchEmbedding(16, 4, 3, 8)(torch.randn(1, 1, 16, 16))


def test_mel_filterbank_vs_transformers():
    audio_utils = pytest.importorskip("transformers.audio_utils")
    fb = mel_filterbank(201, 40, 16000, f_min=0.0, f_max=8000.0)
    ref = audio_utils.mel_filter_bank(201, 40, 0.0, 8000.0, 16000, norm=None, mel_scale="htk")
    assert fb.shape == (201, 40) and fb.dtype == torch.float32
    np.testing.assert_allclose(fb.numpy(), ref, rtol=1e-5, atol=1e-6)
    fb64 = mel_filterbank(201, 40, 16000, f_min=300.0, f_max=7000.0, dtype=torch.float64)
    ref = audio_utils.mel_filter_bank(201, 40, 300.0, 7000.0, 16000, norm=None, mel_scale="htk")
    np.testing.assert_allclose(fb64.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_mel_filterbank_rows_sum_to_one_between_first_and_last_centre():
    fb = mel_filterbank(257, 20, 16000).double()
    assert fb.shape == (257, 20) and (fb >= 0).all() and (fb <= 1).all()
    assert (fb.sum(0) > 0).all()  # no empty filter
    centres = fb.argmax(0)
    inside = fb[centres[0] + 1:centres[-1]].sum(1)  # adjacent triangles overlap: a partition of unity
    torch.testing.assert_close(inside, torch.ones_like(inside), rtol=0, atol=1e-6)


def test_mel_spectrogram_vs_direct_dft_and_transformers():
    sr, n_fft, hop, n_mels = 8000, 256, 64, 24
    t = np.arange(2000) / sr
    x = np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.1 * np.cos(2 * np.pi * 3000 * t)
    mel = mel_spectrogram(torch.tensor(x), sr, n_fft, hop, n_mels)
    assert mel.shape == (n_mels, 1 + len(x) // hop) and mel.dtype == torch.float64
    # one frame by hand: reflect-pad, periodic Hann, a plain DFT sum in float64
    padded = np.pad(x, n_fft // 2, mode="reflect")
    frame = 7
    seg = padded[frame * hop: frame * hop + n_fft] * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft))
    k = np.arange(n_fft // 2 + 1)[:, None]
    dft = (seg[None, :] * np.exp(-2j * np.pi * k * np.arange(n_fft)[None, :] / n_fft)).sum(1)
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sr, dtype=torch.float64).numpy()
    np.testing.assert_allclose(mel[:, frame].numpy(), fb.T @ np.abs(dft) ** 2, rtol=1e-9, atol=1e-9)
    audio_utils = pytest.importorskip("transformers.audio_utils")
    ref = audio_utils.spectrogram(x, audio_utils.window_function(n_fft, "hann"), n_fft, hop, power=2.0,
                                  center=True, pad_mode="reflect", mel_filters=fb, mel_floor=0.0, dtype=np.float64)
    np.testing.assert_allclose(mel.numpy(), ref, rtol=1e-7, atol=1e-7)
    batched = mel_spectrogram(torch.tensor(np.stack([x, -x, 2 * x])), sr, n_fft, hop, n_mels)
    torch.testing.assert_close(batched[2], 4 * mel)


def test_mel_spectrogram_errors():
    with pytest.raises(ValueError, match="n_samples"):
        mel_spectrogram(torch.arange(1000), 16000)  # integer signal
    with pytest.raises(ValueError, match="n_samples"):
        mel_spectrogram(torch.randn(100), 16000, n_fft=400)
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(201, 40, 16000, f_max=9000.0)


def test_audio_frontend_shapes_and_stride():
    torch.manual_seed(0)
    fe = AudioFrontend(n_mels=16, d_model=32, max_frames=100)
    for n in (10, 11, 100):
        assert fe(torch.randn(2, 16, n)).shape == (2, (n + 1) // 2, 32)
    x = torch.randn(1, 16, 20)
    ref = F.gelu(F.conv1d(F.gelu(F.conv1d(x, fe.conv1.weight, fe.conv1.bias, padding=1)),
                          fe.conv2.weight, fe.conv2.bias, stride=2, padding=1)).transpose(1, 2)
    torch.testing.assert_close(fe(x) - ref, fe.pos[:10].expand(1, -1, -1))
    with pytest.raises(ValueError, match="n_mels=16"):
        fe(torch.randn(2, 8, 10))
    with pytest.raises(ValueError, match="max_frames"):
        fe(torch.randn(1, 16, 202))


def _hf_bert_like(tok: CharTokenizer, max_len: int):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Regex, models, pre_tokenizers, processors

    V = tok.vocab_size
    vocab = {c: i for i, c in enumerate(tok.chars)} | {"[CLS]": V, "[SEP]": V + 1, "[PAD]": V + 2, "[UNK]": V - 1}
    hf = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    hf.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", V), ("[SEP]", V + 1)])
    hf.enable_padding(pad_id=V + 2, pad_token="[PAD]", length=max_len)
    hf.enable_truncation(max_length=max_len, strategy="longest_first")
    return hf


@pytest.mark.parametrize("items", [
    ["the cat sat", "a dog", "hello there world"],
    [("the cat", "sat on the mat"), ("a", "b"), ("a long first sentence here", "short")],
    [("abcdefghijklmnop", "abcdefghijklmnopqrstu"), ("xyz" * 9, "ab" * 9), ("ab" * 12, "cd" * 12), ("a", "b" * 30)],
    ["abcdefghijklmnopqrstuvwxyz" * 2, "short"],
])
def test_bert_inputs_match_hf_template(items):
    tok = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .")
    max_len = 24
    hf = _hf_bert_like(tok, max_len)
    ours = bert_inputs(tok, items, max_len)
    enc = [hf.encode(*it) if isinstance(it, tuple) else hf.encode(it) for it in items]
    assert ours.input_ids.tolist() == [e.ids for e in enc]
    assert ours.attention_mask.tolist() == [e.attention_mask for e in enc]
    assert ours.token_type_ids.tolist() == [e.type_ids for e in enc]
    assert ours.vocab_size == tok.vocab_size + 3 and int(ours.input_ids.max()) < ours.vocab_size


def test_bert_inputs_errors():
    tok = CharTokenizer.train("abc")
    with pytest.raises(ValueError, match="max_len=3"):
        bert_inputs(tok, [("a", "b")], 3)
    with pytest.raises(ValueError, match="str or a pair"):
        bert_inputs(tok, [("a", "b", "c")], 10)
