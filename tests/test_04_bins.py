"""Tests of 04_bins.py: summaries, bins, probabilistic combination, DepthNet, presets, official conversion."""
import importlib
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import model_files as official_weights  # the official release's conversion
from exercise_checks import (assert_close_explained, assert_near_explained, first_false_message, gradcheck_explained,
                             shape_message)
from test_02_unet import torchvision_resnet_shapes

SMALL = dict(num_layers=18, num_features=64, model_dim=16, patch_size=8, num_queries=8, num_bins=16,
             dim_feedforward=32)


def bins_module():
    return importlib.import_module("04_bins")


def test_spatial_softmax_summaries_match_loop():
    """Exercise 4.1: summary[b,q] = sum_pixels softmax_over_pixels(V[b,q]) * S[b,:,pixel] (not softmax over Q)."""
    bins = bins_module()
    torch.manual_seed(0)
    B, Q, E, h, w = 2, 3, 4, 3, 5
    what = "Exercise 4.1 spatial_softmax_summaries"
    V, S = torch.randn(B, Q, h, w) * 3, torch.randn(B, E, h, w)
    out = bins.spatial_softmax_summaries(V, S)
    assert out.shape == (B, Q, E), shape_message(
        out.shape, (B, Q, E), f"{what}: summaries of V [2, 3, 3, 5] and S [2, 4, 3, 5]",
        "[B, Q, E]: bmm(weights [B, Q, h*w], S flattened and transposed to [B, h*w, E])?")
    want = torch.empty(B, Q, E)
    for b in range(B):
        for q in range(Q):
            weights = torch.exp(V[b, q]) / torch.exp(V[b, q]).sum()  # (h, w)
            want[b, q] = (weights[None] * S[b]).sum(dim=(1, 2))  # (E,)
    assert_close_explained(out, want, f"{what}: summary", "softmax of V[b, q] over the h*w pixels (the last dim "
                           "after flattening), not over the queries (dim 1)? a weighted sum of S's pixel vectors "
                           "(S as [B, h*w, E]), not a plain mean?", names=("b", "q", "e"))


def test_bins_closed_form_and_properties():
    """Exercise 4.2: y=[-1,0,1,2] -> widths prop. to [.1,.1,1.1,2.1]; edges from min to max; centres mid-points."""
    bins = bins_module()
    what = "Exercise 4.2 bins_from_mlp_output"
    widths_hint = ("widths = relu(y) + 0.1, divided by their sum, times (max_depth - min_depth)? edges = "
                   "min_depth, then min_depth + the cumulative sum of the widths (F.pad(widths, (1, 0), "
                   "value=min_depth), then cumsum)?")
    lo, hi = 0.5, 7.3
    edges, centres = bins.bins_from_mlp_output(torch.tensor([[-1.0, 0.0, 1.0, 2.0]], dtype=torch.float64), lo, hi)
    widths = torch.tensor([0.1, 0.1, 1.1, 2.1], dtype=torch.float64) / 3.4 * (hi - lo)
    want_edges = torch.cat([torch.tensor([lo], dtype=torch.float64), lo + torch.cumsum(widths, 0)])
    assert_close_explained(edges[0], want_edges, f"{what}: edges of y = [-1, 0, 1, 2] in (0.5, 7.3)", widths_hint,
                           names=("edge",))
    assert_close_explained(centres[0], 0.5 * (want_edges[1:] + want_edges[:-1]),
                           f"{what}: centres of y = [-1, 0, 1, 2] in (0.5, 7.3)",
                           "centre d = (edges[d] + edges[d + 1]) / 2, the mid-point of bin d?", names=("bin",))
    y = torch.randn(5, 32) * 4
    edges, centres = bins.bins_from_mlp_output(y, 0.001, 80.0)
    assert edges.shape == (5, 33) and centres.shape == (5, 32), (
        f"{what}: edges have shape {tuple(edges.shape)} and centres {tuple(centres.shape)}, expected (5, 33) "
        f"and (5, 32) for y [5, 32]. Check: D + 1 edges (min_depth first), D centres?")
    assert_close_explained(edges[:, 0], torch.full((5,), 0.001), f"{what}: first edge", "the first edge is "
                           "min_depth (pad with min_depth before the cumulative sum)?", names=("b",))
    assert_close_explained(edges[:, -1], torch.full((5,), 80.0), f"{what}: last edge", "the widths sum to "
                           "max_depth - min_depth (normalised by their sum per image, dim 1)?", names=("b",))
    assert torch.all(edges[:, 1:] - edges[:, :-1] > 0), first_false_message(  # relu + 0.1: positive widths
        edges[:, 1:] - edges[:, :-1] > 0, f"{what}: width edges[d + 1] - edges[d] > 0", "relu(y) + 0.1 (the "
        "0.1 keeps every bin wider than zero)?", values=edges[:, 1:] - edges[:, :-1], names=("b", "bin"))
    inside = (centres > edges[:, :-1]) & (centres < edges[:, 1:])
    assert torch.all(inside), first_false_message(
        inside, f"{what}: edges[d] < centre d < edges[d + 1]", "centres = mid-points of consecutive edges?",
        values=centres, names=("b", "bin"))


def test_combination_softmax_over_bins_closed_form():
    """Exercise 4.3: P = softmax over D at each pixel (sums to 1 over D), depth = sum_d P_d c_d, which lies
    inside (c_min, c_max)."""
    bins = bins_module()
    torch.manual_seed(1)
    B, D, h, w = 2, 5, 3, 4
    what = "Exercise 4.3 combine_probabilities"
    logits = torch.randn(B, D, h, w) * 2
    centres = torch.sort(torch.rand(B, D) * 80, dim=1).values
    depth, P = bins.combine_probabilities(logits, centres)
    assert depth.shape == (B, 1, h, w) and P.shape == (B, D, h, w), (
        f"{what}: depth has shape {tuple(depth.shape)} and P {tuple(P.shape)}, expected {(B, 1, h, w)} and "
        f"{(B, D, h, w)}. Check: sum over the bins with keepdim=True so depth stays 4-D?")
    assert_close_explained(P.sum(dim=1), torch.ones(B, h, w), f"{what}: P summed over the bins (dim 1)",
                           "P = softmax over the D bins, dim 1, not over the pixels or the batch?",
                           names=("b", "row", "col"))
    want = torch.empty(B, 1, h, w, dtype=torch.float64)
    for b in range(B):
        for i in range(h):
            for j in range(w):
                e = torch.exp(logits[b, :, i, j])
                want[b, 0, i, j] = float((e / e.sum() * centres[b]).sum())
    assert_near_explained(depth, want, f"{what}: depth", "depth = sum_d P_d c_d, the expectation over the bins, "
                          "not the centre of the most likely bin (argmax)? P = softmax over the bins (dim 1)? "
                          "the centres of the pixel's own image, broadcast as [B, D, 1, 1]?", atol=1e-4,
                          names=("b", "c", "row", "col"))
    for name, ok in (("min", depth >= centres.min(dim=1).values[:, None, None, None]),
                     ("max", depth <= centres.max(dim=1).values[:, None, None, None])):
        assert torch.all(ok), first_false_message(ok, f"{what}: depth within the image's {name} centre",
                                                  "a weighted mean of the centres (weights >= 0, summing to 1)?",
                                                  values=depth, names=("b", "c", "row", "col"))


def test_gradcheck_bins_and_combination_float64():
    """torch.autograd.gradcheck of MLP output -> bins -> probabilistic depth (inputs away from relu's kink)."""
    bins = bins_module()
    torch.manual_seed(2)
    y = (torch.rand(2, 4, dtype=torch.float64) + 0.2) * torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    logits = torch.randn(2, 4, 2, 3, dtype=torch.float64)
    y.requires_grad_(True)
    logits.requires_grad_(True)

    def f(y, logits):
        edges, centres = bins.bins_from_mlp_output(y, 0.001, 80.0)
        return bins.combine_probabilities(logits, centres)[0]
    gradcheck_explained(f, (y, logits), "Exercises 4.2 bins_from_mlp_output + 4.3 combine_probabilities: "
                        "gradients", "no .detach(), .item(), torch.no_grad() or numpy in the path? an expectation "
                        "over the bins (argmax has no gradient)? float64 kept (no .float())?",
                        input_names=("y", "logits"))


@pytest.mark.parametrize("name,count", [("kitti-r50-640x192", 31_051_944), ("kitti-r50-1024x320", 37_782_824),
                                        ("kitti-r18-640x192", 21_163_688)])
def test_preset_parameter_counts(name, count):
    """Exact parameter counts of the presets (torchvision's fc included); configs round-trip through asdict."""
    bins = bins_module()
    cfg = bins.PRESETS[name]
    assert bins.DepthNetConfig(**asdict(cfg)) == cfg
    with torch.device("meta"):
        net = bins.DepthNet(cfg)
    assert sum(p.numel() for p in net.parameters()) == count


@pytest.mark.parametrize("name", ["kitti-r50-640x192", "kitti-r50-1024x320", "kitti-r18-640x192"])
def test_preset_shapes(name):
    """U-Net output at a small input; head outputs (depth, V, bins, probs) at the preset's own S0 size."""
    bins = bins_module()
    cfg = bins.PRESETS[name]
    torch.manual_seed(0)
    net = bins.DepthNet(cfg).eval()
    h, w = bins.PRESET_SIZES[name]
    with torch.no_grad():
        assert net.unet(torch.rand(1, 3, 64, 192)).shape == (1, cfg.model_dim, 32, 96)
        out = net.depth_from_features(torch.randn(1, cfg.model_dim, h // 2, w // 2), return_extras=True)
    assert out["depth"].shape == (1, 1, h // 2, w // 2)
    assert out["cost_volume"].shape == (1, cfg.num_queries, h // 2, w // 2)
    assert out["bin_centers"].shape == (1, cfg.num_bins)
    assert out["probs"].shape == (1, cfg.num_bins, h // 2, w // 2)
    inside = (out["depth"] > cfg.min_depth) & (out["depth"] < cfg.max_depth)
    assert torch.all(inside), first_false_message(
        inside, f"DepthNet {name}: depth in (min_depth, max_depth)", "bins span [min_depth, max_depth] "
        "(Exercise 4.2) and depth is a weighted mean of their centres (Exercise 4.3)?", values=out["depth"],
        names=("b", "c", "row", "col"))


@pytest.mark.parametrize("bins_kind,queries", [("sql", "self"), ("fixed", "self"), ("adabins", "self"),
                                               ("sql", "learned"), ("sql", "none")])
def test_variants_run_and_train_one_step(bins_kind, queries):
    """Each ablation gives depth [B,1,H/2,W/2] in (min, max) and one Adam step changes the weights."""
    bins = bins_module()
    torch.manual_seed(3)
    net = bins.DepthNet(bins.DepthNetConfig(**SMALL, bins=bins_kind, queries=queries))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    img = torch.rand(2, 3, 64, 96)
    depth = net(img)
    assert depth.shape == (2, 1, 32, 48)
    inside = (depth > 0.001) & (depth < 80.0)
    assert torch.all(inside), first_false_message(
        inside, f"DepthNet bins={bins_kind!r}, queries={queries!r}: depth in (0.001, 80)", "bins span [min_depth, "
        "max_depth] (Exercise 4.2) and depth is a weighted mean of their centres (Exercise 4.3)?", values=depth,
        names=("b", "c", "row", "col"))
    before = [p.detach().clone() for p in net.parameters()]
    (depth - 10.0).abs().mean().backward()
    opt.step()
    assert torch.isfinite(net(img)).all()
    assert sum(not torch.equal(a, p) for a, p in zip(before, net.parameters())) > 0.9 * len(before)


@pytest.mark.parametrize("bins_kind", ["sql", "adabins", "fixed"])
def test_cost_volume_head_is_float32_under_bf16_autocast(bins_kind):
    """Under bf16 autocast (on CPU here; the same code path on CUDA) the encoder/decoder and the
    transformer run in bf16, but V, the fine features, the bins, the probabilities and the depth
    are float32, and V is the float32 product of the float32 fine features and queries."""
    bins = bins_module()
    torch.manual_seed(0)
    net = bins.DepthNet(bins.DepthNetConfig(**SMALL, bins=bins_kind)).eval()
    img = torch.rand(2, 3, 64, 96)
    seen = {}
    net.sql.register_forward_hook(lambda m, inputs, out: seen.update(s0=inputs[0], V=out[0], S=out[1]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(img, return_extras=True)
        tokens = net.sql.tokens(seen["s0"])
    assert seen["s0"].dtype == torch.bfloat16 and tokens.dtype == torch.bfloat16   # autocast is on
    for name in ("cost_volume", "bin_centers", "probs", "depth"):
        assert out[name].dtype == torch.float32, name
    assert seen["S"].dtype == torch.float32
    K = tokens[:, : net.cfg.num_queries].float()                    # (B, Q, E)
    expected = torch.einsum("bqe,behw->bqhw", K, seen["S"])
    assert_close_explained(out["cost_volume"], expected, "the cost volume under bf16 autocast (Exercise 3.2 "
                           "self_cost_volume)", "V[b, q, i, j] = sum_e K[b, q, e] S[b, e, i, j], no scaling, no "
                           "softmax (test_self_cost_volume_matches_slow_loop)?", rtol=1e-5, atol=1e-4,
                           names=("b", "q", "row", "col"))


def test_bad_config_raises():
    """Unknown variants or depth range -> ValueError naming the value."""
    bins = bins_module()
    with pytest.raises(ValueError, match="bins='nope'"):
        bins.DepthNet(bins.DepthNetConfig(**SMALL, bins="nope"))
    with pytest.raises(ValueError, match="queries='x'"):
        bins.DepthNet(bins.DepthNetConfig(**SMALL, queries="x"))


# ----------------------------------------------------------------------------- diagnostics

def test_query_similarity_identical_orthogonal_and_a_slow_loop():
    """Identical queries (any positive scale) -> 1; orthogonal -> 0; random -> the mean of cos(q_i, q_j)
    over all ordered pairs i != j, computed by a loop; averaged over the batch."""
    bins = bins_module()
    same = torch.randn(1, 1, 8).expand(2, 5, 8) * torch.tensor([1.0, 2, 3, 4, 5])[None, :, None]  # (2, 5, 8)
    assert bins.query_similarity(same) == pytest.approx(1.0, abs=1e-6)
    assert bins.query_similarity(torch.eye(6)[None, :4] * 3.0) == pytest.approx(0.0, abs=1e-7)
    torch.manual_seed(0)
    K = torch.randn(2, 4, 3)
    per_image = []
    for b in range(2):
        pairs = [F.cosine_similarity(K[b, i], K[b, j], dim=0) for i in range(4) for j in range(4) if i != j]
        per_image.append(sum(pairs) / len(pairs))
    assert bins.query_similarity(K) == pytest.approx(float(sum(per_image) / 2), abs=1e-6)
    assert bins.query_similarity(K[:, :1]) != bins.query_similarity(K[:, :1])  # NaN: one query has no pair


def test_cost_volume_effective_rank_closed_forms():
    """Rank-1 V (every slice a multiple of one image) -> 1; Q one-hot slices of equal norm -> Q; two
    orthogonal slices with norms 3 and 1 -> exp(H([3/4, 1/4])); the result is the mean over the batch."""
    bins = bins_module()
    torch.manual_seed(0)
    rank_one = torch.randn(5)[:, None, None] * torch.randn(1, 6, 7)  # (Q=5, h=6, w=7)
    assert bins.cost_volume_effective_rank(rank_one[None]) == pytest.approx(1.0, abs=1e-4)
    identity = torch.eye(6 * 7)[:5].reshape(1, 5, 6, 7) * 2.0  # slice q lights pixel q only
    assert bins.cost_volume_effective_rank(identity) == pytest.approx(5.0, rel=1e-5)
    two = torch.zeros(1, 2, 2, 3)
    two[0, 0, 0, 0], two[0, 1, 1, 2] = 3.0, 1.0
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert bins.cost_volume_effective_rank(two) == pytest.approx(expected, rel=1e-5)
    batch = torch.cat([two, identity[:, :2, :2, :3]])  # (2, 2, 2, 3): effective ranks 1.75..., 2
    assert bins.cost_volume_effective_rank(batch) == pytest.approx((expected + 2.0) / 2, rel=1e-5)


def test_bins_holding_mass_counts_bins_until_the_fraction():
    """One-hot probabilities on 3 of 16 bins (pixel shares 1/2, 1/3, 1/6) -> 3 bins hold 99%; with
    fraction 0.5 the biggest bin alone; uniform P over 16 bins -> 16; averaged over the batch."""
    bins = bins_module()
    P = torch.zeros(1, 16, 2, 3)  # 6 pixels
    for pixel, d in enumerate([4, 4, 4, 9, 9, 13]):
        P[0, d, pixel // 3, pixel % 3] = 1.0
    assert bins.bins_holding_mass(P) == 3.0
    assert bins.bins_holding_mass(P, fraction=0.5) == 1.0
    assert bins.bins_holding_mass(P, fraction=0.8) == 2.0  # 1/2 + 1/3 = 0.83 >= 0.8
    uniform = torch.full((1, 16, 2, 3), 1 / 16)
    assert bins.bins_holding_mass(uniform) == 16.0
    assert bins.bins_holding_mass(torch.cat([P, uniform])) == pytest.approx(9.5)


def test_internals_stats_of_a_depthnet_and_of_the_no_query_variant():
    """internals_stats equals the three functions applied to the extras of the same forward pass, keeps
    the train/eval mode of the net, and gives NaN for queries="none" (no queries, V or bins)."""
    bins = bins_module()
    torch.manual_seed(0)
    net = bins.DepthNet(bins.DepthNetConfig(**SMALL)).train()
    img = torch.rand(2, 3, 64, 96)
    stats = bins.internals_stats(net, img)
    assert net.training and set(stats) == set(bins.INTERNALS_STATS)
    with torch.no_grad():
        out = net.eval()(img, return_extras=True)
    assert out["queries"].shape == (2, SMALL["num_queries"], SMALL["model_dim"])
    assert stats["query_similarity"] == pytest.approx(bins.query_similarity(out["queries"]), abs=1e-6)
    assert stats["effective_rank"] == pytest.approx(bins.cost_volume_effective_rank(out["cost_volume"]), rel=1e-5)
    assert stats["bins_99"] == bins.bins_holding_mass(out["probs"])
    assert 1.0 <= stats["effective_rank"] <= SMALL["num_queries"] and 1 <= stats["bins_99"] <= SMALL["num_bins"]
    none = bins.DepthNet(bins.DepthNetConfig(**SMALL, queries="none"))
    assert all(math.isnan(v) for v in bins.internals_stats(none, img).values())


def official_shapes(num_layers, nf, E, p, Q, D, ffn, n_tr=4):
    """{key: shape} of the official encoder.pth and depth.pth (ResnetEncoderDecoder + Lite_Depth_Decoder_QueryTr)."""
    enc = {"encoder.encoder." + k: s for k, s in torchvision_resnet_shapes(num_layers).items()}
    c0, c1, c2, c3, c4 = (64, 64, 128, 256, 512) if num_layers < 50 else (64, 256, 512, 1024, 2048)
    enc.update({"decoder.conv2.weight": (nf, c4, 1, 1), "decoder.conv2.bias": (nf,),
                "decoder.conv3.weight": (E, nf // 16, 3, 3), "decoder.conv3.bias": (E,)})
    for i, (cin, cout) in enumerate([(nf + c3, nf // 2), (nf // 2 + c2, nf // 4), (nf // 4 + c1, nf // 8),
                                     (nf // 8 + c0, nf // 16)], start=1):
        for j, ci in ((0, cin), (3, cout)):
            enc[f"decoder.up{i}._net.{j}.weight"] = (cout, ci, 3, 3)
            enc[f"decoder.up{i}._net.{j}.bias"] = (cout,)
            for k in ("weight", "bias", "running_mean", "running_var"):
                enc[f"decoder.up{i}._net.{j + 1}.{k}"] = (cout,)
            enc[f"decoder.up{i}._net.{j + 1}.num_batches_tracked"] = ()
    dep = {"embedding_convPxP.weight": (E, E, p, p), "embedding_convPxP.bias": (E,),
           "positional_encodings": (500, E), "conv3x3.weight": (E, E, 3, 3), "conv3x3.bias": (E,),
           "bins_regressor.0.weight": (16 * Q, Q * E), "bins_regressor.0.bias": (16 * Q,),
           "bins_regressor.2.weight": (256, 16 * Q), "bins_regressor.2.bias": (256,),
           "bins_regressor.4.weight": (D, 256), "bins_regressor.4.bias": (D,),
           "convert_to_prob.0.weight": (D, Q, 1, 1), "convert_to_prob.0.bias": (D,)}
    for n in range(n_tr):
        t = f"transformer_encoder.layers.{n}."
        dep.update({t + "self_attn.in_proj_weight": (3 * E, E), t + "self_attn.in_proj_bias": (3 * E,),
                    t + "self_attn.out_proj.weight": (E, E), t + "self_attn.out_proj.bias": (E,),
                    t + "linear1.weight": (ffn, E), t + "linear1.bias": (ffn,), t + "linear2.weight": (E, ffn),
                    t + "linear2.bias": (E,), t + "norm1.weight": (E,), t + "norm1.bias": (E,),
                    t + "norm2.weight": (E,), t + "norm2.bias": (E,)})
    return enc, dep


def random_state(shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randint(0, 5, s, generator=gen) if k.endswith("tracked") else
                torch.rand(s, generator=gen) + 0.5 if "running_var" in k else torch.randn(s, generator=gen) * 0.2)
            for k, s in shapes.items()}


def official_head(dep, s0, Q, lo, hi):
    """The official Lite_Depth_Decoder_QueryTr forward, re-derived from its state dict (seq-first transformer)."""
    E = s0.shape[1]
    p = dep["embedding_convPxP.weight"].shape[-1]
    ffn = dep["transformer_encoder.layers.0.linear1.weight"].shape[0]
    tr = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, 4, ffn), 4, enable_nested_tensor=False).eval()
    prefix = "transformer_encoder."
    tr.load_state_dict({k[len(prefix):]: v for k, v in dep.items() if k.startswith(prefix)})
    emb = F.conv2d(s0, dep["embedding_convPxP.weight"], dep["embedding_convPxP.bias"], stride=p).flatten(2)
    emb = emb + dep["positional_encodings"][: emb.shape[2]].T.unsqueeze(0)  # (B, E, N)
    K = tr(emb.permute(2, 0, 1))[:Q].permute(1, 0, 2)  # (B, Q, E)
    x = F.conv2d(s0, dep["conv3x3.weight"], dep["conv3x3.bias"], padding=1)
    n, c, h, w = x.shape
    y = torch.matmul(x.view(n, c, h * w).permute(0, 2, 1), K.permute(0, 2, 1))  # (B, hw, Q)
    summary = torch.matmul(torch.softmax(y, dim=1).permute(0, 2, 1), x.view(n, c, h * w).permute(0, 2, 1))
    energy = y.permute(0, 2, 1).reshape(n, Q, h, w)
    z = summary.reshape(n, -1)
    for i in (0, 2, 4):
        z = F.linear(z, dep[f"bins_regressor.{i}.weight"], dep[f"bins_regressor.{i}.bias"])
        z = F.leaky_relu(z) if i < 4 else z
    z = torch.relu(z) + 0.1
    z = z / z.sum(dim=1, keepdim=True)
    edges = torch.cumsum(F.pad((hi - lo) * z, (1, 0), value=lo), dim=1)
    centres = 0.5 * (edges[:, :-1] + edges[:, 1:])
    prob = torch.softmax(F.conv2d(energy, dep["convert_to_prob.0.weight"], dep["convert_to_prob.0.bias"]), dim=1)
    return (prob * centres[:, :, None, None]).sum(1, keepdim=True)


def test_official_conversion_round_trip_and_same_depth():
    """Official-named state dicts convert strictly: config inferred, every tensor lands, and the head gives the
    official forward's depth; metadata and "module." prefixes are tolerated; a foreign key is reported."""
    bins = bins_module()
    enc_shapes, dep_shapes = official_shapes(18, 64, 16, 4, 6, 10, 32)
    enc, dep = random_state(enc_shapes, 0), random_state(dep_shapes, 1)
    enc.update(height=192, width=640, use_stereo=True)
    cfg = official_weights.config_from_official(enc, dep)
    assert cfg == bins.DepthNetConfig(18, 64, 16, 4, 6, 10, 32)
    assert official_weights.official_metadata(enc) == {"height": 192, "width": 640, "use_stereo": True}
    sd = official_weights.convert_official_checkpoint(enc, {"module." + k: v for k, v in dep.items()})
    net = bins.DepthNet(cfg).eval()
    net.load_state_dict(sd, strict=True)
    ours = net.state_dict()
    assert torch.equal(ours["unet.encoder.layer4.1.bn2.running_var"], enc["encoder.encoder.layer4.1.bn2.running_var"])
    assert torch.equal(ours["unet.decoder.up3._net.4.weight"], enc["decoder.up3._net.4.weight"])
    assert torch.equal(ours["sql.transformer.layers.3.self_attn.in_proj_weight"],
                       dep["transformer_encoder.layers.3.self_attn.in_proj_weight"])
    assert torch.equal(ours["bins_mlp.4.bias"], dep["bins_regressor.4.bias"])
    assert torch.equal(ours["to_logits.weight"], dep["convert_to_prob.0.weight"])
    torch.manual_seed(4)
    s0 = torch.randn(2, 16, 12, 20)
    with torch.no_grad():
        assert_close_explained(net.depth_from_features(s0), official_head(dep, s0, 6, 0.001, 80.0),
                               "the head's depth against the official forward (Exercises 3.1, 3.2, 4.1, 4.2, 4.3)",
                               "do the tests of those exercises pass (tests/test_03_self_query.py, "
                               "tests/test_04_bins.py)?", atol=1e-4, rtol=1e-4, names=("b", "c", "row", "col"))
    with pytest.raises(ValueError, match="decoder.extra.weight"):
        official_weights.convert_official_checkpoint({**enc, "decoder.extra.weight": torch.zeros(1)}, dep)
    with pytest.raises(ValueError, match="missing"):
        official_weights.convert_official_checkpoint({k: v for k, v in enc.items() if "conv3" not in k}, dep)


@pytest.mark.parametrize("name", ["kitti-r18-640x192", "kitti-r50-640x192"])
def test_config_inferred_from_official_shapes_is_the_preset(name):
    """Official checkpoints shaped like the released models map to our presets and convert strictly."""
    bins = bins_module()
    c = bins.PRESETS[name]
    enc_shapes, dep_shapes = official_shapes(c.num_layers, c.num_features, c.model_dim, c.patch_size,
                                             c.num_queries, c.num_bins, c.dim_feedforward)
    enc = {k: torch.zeros(s, dtype=torch.long if k.endswith("tracked") else torch.float32)
           for k, s in enc_shapes.items()}
    dep = {k: torch.zeros(s) for k, s in dep_shapes.items()}
    assert official_weights.config_from_official(enc, dep) == c
    assert len(official_weights.convert_official_checkpoint(enc, dep)) == len(enc) + len(dep)


def test_demo_figure_and_cli_errors(tmp_path, capsys):
    """`python 04_bins.py` writes the bins figure and says that it shows an untrained network (flat
    probabilities) and how to see a trained one; an unknown preset is one `error:` line, exit 2."""
    bins = bins_module()
    assert bins.main(["--preset", "nope"]) == 2
    try:
        importlib.import_module("helpers.synthetic_world").make_synthetic_kitti
    except (ModuleNotFoundError, AttributeError):
        pytest.skip("synthetic_world.make_synthetic_kitti is not there yet")
    out = tmp_path / "bins.png"
    capsys.readouterr()
    assert bins.main(["--out", str(out)]) == 0
    assert out.stat().st_size > 0
    printed = capsys.readouterr().out
    assert printed.startswith("UNTRAINED network (kitti-r18-640x192, random weights, no --checkpoint)"), printed
    assert "python 06_train.py" in printed and "python 04_bins.py --checkpoint runs/RUN/best.pt" in printed


@pytest.mark.gpu
def test_bf16_autocast_on_cuda_stays_close_to_fp32():
    """On a GPU, the depth of a small DepthNet under bf16 autocast stays within a few percent of the
    fp32 depth and inside (min_depth, max_depth): bins and combination keep float32 precision."""
    b = bins_module()
    torch.manual_seed(0)
    cfg = b.DepthNetConfig(num_layers=18, num_features=32, model_dim=16, patch_size=8, num_queries=8,
                           num_bins=16)
    net = b.DepthNet(cfg).to("cuda").eval()
    img = torch.rand(2, 3, 64, 192, device="cuda")
    with torch.no_grad():
        ref = net(img)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = net(img).float()
    assert torch.isfinite(out).all()
    assert out.min() > cfg.min_depth and out.max() < cfg.max_depth
    assert ((out - ref).abs() / ref).mean() < 0.05


def test_plain_head_is_monodepth2s_disparity_head():
    """queries="none" is Monodepth2's disparity head on S0: depth = 1 / (1/100 + (1/0.1 - 1/100) *
    sigmoid(conv(ELU(conv(S0))))), so depth lies in (0.1, 100) whatever S0 is; no bins, no cost
    volume; every head weight gets a gradient; the loss's clamp range follows the head's range."""
    bins = bins_module()
    torch.manual_seed(4)
    net = bins.DepthNet(bins.DepthNetConfig(**SMALL, queries="none")).eval()
    s0 = torch.randn(2, 16, 8, 12) * 50                          # large features: the sigmoid saturates
    out = net.depth_from_features(s0, return_extras=True)
    assert set(out) == {"depth"} and out["depth"].shape == (2, 1, 8, 12)
    sigmoid = torch.sigmoid(net.head[2](F.elu(net.head[0](s0))))
    torch.testing.assert_close(out["depth"], 1.0 / (0.01 + (10.0 - 0.01) * sigmoid))
    assert torch.all((out["depth"] >= 0.1 - 1e-6) & (out["depth"] <= 100.0 + 1e-3))
    torch.testing.assert_close(bins.disparity_to_depth(torch.tensor([0.0, 0.5, 1.0]), 0.1, 100.0),
                               torch.tensor([100.0, 1 / (0.01 + 0.5 * 9.99), 0.1]))
    net.depth_from_features(torch.randn(2, 16, 8, 12)).log().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.head.parameters())
    assert bins.output_depth_range(net.cfg) == (0.1, 100.0)
    assert bins.output_depth_range(bins.DepthNetConfig(**SMALL)) == (0.001, 80.0)
    assert net.query_parameters() == []


def test_query_parameters_are_the_token_path_of_the_self_query_layer():
    """The parameters that make the queries: patch embedding, positional encoding and transformer
    (and the learned queries), never the fine-feature conv or anything outside the layer."""
    bins = bins_module()
    for queries in ("self", "learned"):
        net = bins.DepthNet(bins.DepthNetConfig(**SMALL, queries=queries))
        ids = {id(p) for p in net.query_parameters()}
        names = {n for n, p in net.named_parameters() if id(p) in ids}
        assert names == {n for n, _ in net.named_parameters()
                         if n.startswith("sql.") and not n.startswith("sql.fine_conv.")}
        assert any(n.startswith("sql.transformer.") for n in names) and "sql.pos_encoding" in names
