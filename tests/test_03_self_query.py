"""Tests of 03_self_query.py: patch tokens, queries, the self-cost volume, size checks, the demo."""
import importlib

import pytest
import torch
import torch.nn as nn

from exercise_checks import assert_close_explained, assert_near_explained, shape_message


def test_embed_patches_matches_per_patch_loop():
    """Exercise 3.1: token n = conv(patch at row n // W', column n % W') + pos[n], in raster order."""
    sql = importlib.import_module("03_self_query")
    torch.manual_seed(0)
    E, p = 3, 2
    conv = nn.Conv2d(E, E, p, stride=p)
    pos = torch.randn(500, E)
    s0 = torch.randn(2, E, 5, 7)  # 2 x 3 patches; the odd last row/column is dropped
    what = "Exercise 3.1 embed_patches"
    with torch.no_grad():
        tokens = sql.embed_patches(s0, conv, pos)
    assert tokens.shape == (2, 6, E), shape_message(
        tokens.shape, (2, 6, E), f"{what}: tokens of a [2, 3, 5, 7] map with 2x2 patches",
        "N = floor(5/2) * floor(7/2) = 6 tokens (the stride-p conv drops the odd last row and column), "
        "E last: [B, N, E] (flatten the two spatial dims, then transpose)?")
    want = torch.empty(2, 6, E)
    with torch.no_grad():
        for b in range(2):
            for n in range(6):
                i, j = divmod(n, 3)
                patch = s0[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # (E, p, p)
                want[b, n] = (conv.weight * patch).sum(dim=(1, 2, 3)) + conv.bias + pos[n]
    assert_close_explained(tokens, want, f"{what}: tokens", "raster order, row by row (conv -> flatten(2) -> "
                           "transpose(1, 2); flattening after swapping h and w walks down the columns)? "
                           "positional encoding added: pos_encoding[n] to token n?", names=("b", "n", "e"),
                           where=lambda k: f"token {k[1]} = the patch at row {k[1] // 3}, column {k[1] % 3}")


def test_self_cost_volume_matches_slow_loop():
    """Exercise 3.2: V[b,q,i,j] = sum_e K[b,q,e] S[b,e,i,j] (no scaling), checked pixel by pixel."""
    sql = importlib.import_module("03_self_query")
    torch.manual_seed(1)
    B, E, Q, h, w = 2, 4, 3, 5, 6
    what = "Exercise 3.2 self_cost_volume"
    S, K = torch.randn(B, E, h, w), torch.randn(B, Q, E)
    V = sql.self_cost_volume(S, K)
    assert V.shape == (B, Q, h, w), shape_message(
        V.shape, (B, Q, h, w), f"{what}: V of S [2, 4, 5, 6] and K [2, 3, 4]",
        "[B, Q, h, w]: bmm(K, S as [B, E, h*w]) is [B, Q, h*w], then reshape (not [B, h*w, Q])?")
    want = torch.empty(B, Q, h, w, dtype=torch.float64)
    for b in range(B):
        for q in range(Q):
            for i in range(h):
                for j in range(w):
                    want[b, q, i, j] = sum(float(K[b, q, e]) * float(S[b, e, i, j]) for e in range(E))
    assert_near_explained(V, want, f"{what}: V", "V[b, q, i, j] = sum_e K[b, q, e] S[b, e, i, j]: raw dot "
                          "products, no 1/sqrt(E) scaling, no softmax? the reshape keeps rows and columns in "
                          "place (h*w back to (h, w), not (w, h))?", atol=1e-5, names=("b", "q", "row", "col"))


def test_queries_are_first_tokens_and_layer_matches_seq_first_transformer():
    """The layer = official recipe: seq-first transformer on tokens, first Q outputs as K, V = conv3x3(S0)^T K."""
    sql = importlib.import_module("03_self_query")
    torch.manual_seed(2)
    E, p, Q = 8, 4, 5
    layer = sql.SelfQueryLayer(E, p, Q, dim_feedforward=16).eval()
    s0 = torch.randn(2, E, 12, 16)  # N = 3 * 4 = 12 tokens
    ref_layer = nn.TransformerEncoderLayer(E, 4, 16)  # seq-first like the official code
    ref = nn.TransformerEncoder(ref_layer, 4, enable_nested_tensor=False).eval()
    ref.load_state_dict(layer.transformer.state_dict())
    with torch.no_grad():
        V, S = layer(s0)
        emb = layer.patch_embed(s0).flatten(2) + layer.pos_encoding[:12].T.unsqueeze(0)  # (B, E, N)
        tokens = ref(emb.permute(2, 0, 1))  # (N, B, E)
        K = tokens[:Q].permute(1, 0, 2)  # (B, Q, E)
        S_ref = layer.fine_conv(s0)
        V_ref = torch.einsum("bqe,behw->bqhw", K, S_ref)
    assert V.shape == (2, Q, 12, 16) and S.shape == (2, E, 12, 16)
    torch.testing.assert_close(S, S_ref)
    assert_close_explained(V, V_ref, "SelfQueryLayer: the cost volume V (uses Exercises 3.1 and 3.2)",
                           "do test_embed_patches_matches_per_patch_loop and test_self_cost_volume_matches_slow_loop "
                           "pass? tokens in raster order with the positional encoding (3.1), V = raw dot products "
                           "of the first Q transformer outputs with the fine features (3.2)?",
                           atol=1e-4, rtol=1e-4, names=("b", "q", "row", "col"))


def test_too_many_queries_or_tokens_raise_clear_errors():
    """Q > N names both numbers; N > 500 (positional-encoding rows) is refused too."""
    sql = importlib.import_module("03_self_query")
    layer = sql.SelfQueryLayer(8, 4, 13, dim_feedforward=16)
    with pytest.raises(ValueError, match=r"Q=13.*N=12"):
        layer(torch.randn(1, 8, 12, 16))
    with pytest.raises(ValueError, match="N=504"):
        sql.SelfQueryLayer(8, 1, 4, dim_feedforward=16)(torch.randn(1, 8, 12, 42))
    with pytest.raises(ValueError, match="queries"):
        sql.SelfQueryLayer(8, 4, 4, queries="none")


def test_learned_queries_shapes_and_gradients():
    """queries='learned': V [B,Q,h,w] also when Q > N, and the query embeddings receive gradients."""
    sql = importlib.import_module("03_self_query")
    layer = sql.SelfQueryLayer(8, 4, 20, dim_feedforward=16, queries="learned")
    V, S = layer(torch.randn(2, 8, 12, 16))
    assert V.shape == (2, 20, 12, 16)
    V.square().mean().backward()
    assert layer.query_embed.weight.grad.abs().sum() > 0


def test_demo_saves_figure(tmp_path):
    """`python 03_self_query.py` (untrained, synthetic frame from 01_data) writes the PNG."""
    try:
        importlib.import_module("helpers.synthetic_world").make_synthetic_kitti
    except (ModuleNotFoundError, AttributeError):
        pytest.skip("synthetic_world.make_synthetic_kitti is not there yet")
    sql = importlib.import_module("03_self_query")
    out = tmp_path / "cv.png"
    assert sql.main(["--out", str(out), "--num-slices", "3"]) == 0
    assert out.stat().st_size > 0
    assert sql.main(["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)]) == 2
