"""Tests of helpers/model_files.py's start_networks: --init_from and --pose_init of 06_train.py.

Oracles: the source networks themselves (the loaded networks give their outputs; a run with lr 0
keeps their parameters exactly), files the tests write in the official format (encoder.pth +
depth.pth under the official key names, pose.pth with DataParallel's "module." prefixes).
"""
import importlib
from dataclasses import asdict, replace

import pytest
import torch

from helpers import model_files as official_weights  # the official release's conversion
from test_06_train import TINY as TINY_FLAGS  # the tiny network and run of test_06_train

TINY = dict(num_layers=18, num_features=32, model_dim=16, patch_size=8, num_queries=8, num_bins=16,
            dim_feedforward=32)


def train():
    return importlib.import_module("06_train")


def init():
    return importlib.import_module("helpers.model_files")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one thread per test


def tiny_config(**changes):
    t = train()
    cfg = t.preset_config("synthetic-cpu")
    return replace(cfg, model={**cfg.model, **TINY, "pretrained": None}, use_stereo=False, **changes)


def source_networks(seed=1, **model):
    """A tiny DepthNet and PoseCNN, initialised from another seed than the networks they are loaded into."""
    bins, posenet_loss = importlib.import_module("04_bins"), importlib.import_module("05_posenet_loss")
    torch.manual_seed(seed)
    depth_net = bins.DepthNet(bins.DepthNetConfig(**{**TINY, **model}))
    return depth_net, posenet_loss.PoseCNN(num_input_frames=2)


def write_official(folder, depth_net, pose_net):
    """encoder.pth + depth.pth (official key names, the encoder's size metadata, "module." on the
    depth decoder as a DataParallel save) and pose.pth ("module." on every key)."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder_sd, depth_sd = {"height": 64, "width": 208, "use_stereo": True}, {}
    for key, value in depth_net.state_dict().items():
        official, ours = next((o, n) for o, n in official_weights.OFFICIAL_PREFIXES if key.startswith(n))
        if official.startswith(("encoder.", "decoder.")):
            encoder_sd[official + key[len(ours):]] = value
        else:
            depth_sd["module." + official + key[len(ours):]] = value
    torch.save(encoder_sd, folder / "encoder.pth")
    torch.save(depth_sd, folder / "depth.pth")
    torch.save({"module." + k: v for k, v in pose_net.state_dict().items()}, folder / "pose.pth")


def write_ours(path, depth_net, pose_net, **model):
    """A checkpoint in 06_train.py's format (the parts start_networks reads: model, pose, config)."""
    config = asdict(tiny_config())
    config["model"] = {**config["model"], **model}
    torch.save({"model": depth_net.state_dict(), "pose": pose_net.state_dict(), "config": config}, path)


def assert_same_outputs(depth_net, pose_net, src_depth, src_pose):
    """Eval-mode depth of an image and the pose of a frame pair equal the source networks'."""
    for net in (depth_net, pose_net, src_depth, src_pose):
        net.eval()
    img, pair = torch.rand(2, 3, 64, 208), torch.rand(2, 6, 64, 208)
    with torch.no_grad():
        torch.testing.assert_close(depth_net(img), src_depth(img))
        for got, want in zip(pose_net(pair), src_pose(pair)):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("form", ["official folder", "official files", "ours"])
def test_loaded_networks_give_the_source_outputs(tmp_path, form):
    """Networks built as the Trainer builds them (NHWC, 02's small-map convs, another seed) and then
    started from the official files (folder, or encoder.pth and pose.pth named) or from our checkpoint
    predict exactly the source networks' depth and poses; the returned config holds absolute paths."""
    src_depth, src_pose = source_networks()
    if form == "ours":
        write_ours(tmp_path / "src.pt", src_depth, src_pose)
        depth_from = pose_from = tmp_path / "src.pt"
    else:
        write_official(tmp_path / "official", src_depth, src_pose)
        depth_from = tmp_path / "official" if form == "official folder" else tmp_path / "official" / "encoder.pth"
        pose_from = tmp_path / "official" if form == "official folder" else tmp_path / "official" / "pose.pth"
    cfg = tiny_config(init_from=str(depth_from), pose_init=str(pose_from))
    torch.manual_seed(0)
    depth_net, pose_net = train().build_networks(cfg, torch.device("cpu"), load_pretrained=False)
    started = init().start_networks(cfg, depth_net, pose_net, verbose=False)
    pose_file = pose_from / "pose.pth" if pose_from.is_dir() else pose_from
    assert started.init_from == str(depth_from.resolve()) and started.pose_init == str(pose_file.resolve())
    assert_same_outputs(depth_net, pose_net, src_depth, src_pose)


def test_mismatched_or_foreign_files_name_the_file_and_the_first_mismatch(tmp_path):
    """A checkpoint of another architecture (Q=6 instead of 8) names the file and the first mismatching
    parameter; a pose.pth of another network names its first missing one; a file that is neither
    format, or missing, is one line naming it."""
    bins_q6 = source_networks(num_queries=6)
    write_ours(tmp_path / "q6.pt", *bins_q6, num_queries=6)
    cfg = tiny_config()
    depth_net, pose_net = train().build_networks(cfg, torch.device("cpu"), load_pretrained=False)
    with pytest.raises(ValueError, match=r"q6\.pt does not fit the depth network of this run: "
                                         r"bins_mlp\.0\.weight has shape"):
        init().start_networks(replace(cfg, init_from=str(tmp_path / "q6.pt")), depth_net, pose_net, False)
    torch.save({"module.conv.weight": torch.zeros(1)}, tmp_path / "pose.pth")
    with pytest.raises(ValueError, match=r"pose\.pth does not fit the pose network \(posecnn\) of this run: "
                                         r"net\.0\.weight is missing"):
        init().start_networks(replace(cfg, pose_init=str(tmp_path)), depth_net, pose_net, False)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt: neither a checkpoint of 06_train\.py"):
        init().start_networks(replace(cfg, init_from=str(tmp_path / "list.pt")), depth_net, pose_net, False)
    with pytest.raises(importlib.import_module("01_data").DataError, match=r"nothing\.pt not found"):
        init().start_networks(replace(cfg, pose_init=str(tmp_path / "nothing.pt")), depth_net, pose_net, False)


def test_a_run_started_from_weights_keeps_them_at_step_0_and_records_them(tiny_world, tmp_path, capsys):
    """06_train.py --init_from (official folder) --pose_init (official pose.pth) with lr 0 for one step:
    the checkpoint's parameters are exactly the source's (the run started from them, Adam moved
    nothing), its config records both absolute paths, and a mismatched file is one error line, exit 2,
    no run folder written."""
    src_depth, src_pose = source_networks()
    write_official(tmp_path / "official", src_depth, src_pose)
    run_dir = tmp_path / "run"
    code = train().main(TINY_FLAGS + ["--data_path", str(tiny_world), "--run_dir", str(run_dir), "--max_steps",
                                      "1", "--lr", "0", "--init_from", str(tmp_path / "official"),
                                      "--pose_init", str(tmp_path / "official" / "pose.pth")])
    assert code == 0
    assert "init: depth network from" in capsys.readouterr().out
    ckpt = torch.load(run_dir / "ckpt.pt", weights_only=True)
    for part, src in (("model", src_depth), ("pose", src_pose)):
        for name, param in src.named_parameters():
            torch.testing.assert_close(ckpt[part][name], param, rtol=0, atol=0)
    assert ckpt["config"]["init_from"] == str((tmp_path / "official").resolve())
    assert ckpt["config"]["pose_init"] == str((tmp_path / "official" / "pose.pth").resolve())

    write_ours(tmp_path / "q6.pt", *source_networks(num_queries=6), num_queries=6)
    code = train().main(TINY_FLAGS + ["--data_path", str(tiny_world), "--run_dir", str(tmp_path / "bad"),
                                      "--init_from", str(tmp_path / "q6.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "q6.pt" in err[0]
    assert not (tmp_path / "bad" / "ckpt.pt").exists()


def test_released_ms_presets_follow_the_official_argument_files():
    """kitti-r50-640x192-ms and kitti-r50-1024x320-ms: their base set-up plus stereo, the pose lr / 10
    (--diff_lr) in the optimiser's pose group, and the 1024x320 file's min_depth 0.01."""
    t = train()
    for name, min_depth in (("kitti-r50-640x192", 0.001), ("kitti-r50-1024x320", 0.01)):
        base, ms = t.preset_config(name), t.preset_config(name + "-ms")
        assert ms.preset == name + "-ms" and ms.use_stereo and ms.pose_lr_scale == 0.1
        assert ms.model == {**base.model, "min_depth": min_depth}
        assert (ms.lr, ms.batch_size, ms.epochs, ms.lr_step) == (base.lr, base.batch_size, base.epochs, base.lr_step)
    cfg = replace(tiny_config(), pose_lr_scale=0.1, lr=1e-4)
    groups = t.make_optimizer(cfg, *source_networks()).param_groups
    assert [g["lr"] for g in groups] == [1e-4, pytest.approx(1e-5)]
