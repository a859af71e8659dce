"""Tests of helpers/synthetic_world.py: the KITTI layout it writes, its calibration and lidar scans read back
by 01_data, geometric consistency of images, depth and poses, determinism, the world styles (the
default rendering exactly the world of before), and its command line."""
import hashlib
import importlib
import os

import numpy as np
import pytest
from PIL import Image
from helpers import kitti_files  # the standard split lists (helpers/kitti_files.py)


def _data():
    return importlib.import_module("01_data")


def _world():
    return importlib.import_module("helpers.synthetic_world")


def test_tiny_world_layout_and_splits(tiny_world):
    """KITTI layout, calibration with the renderer's intrinsics (+1 for MATLAB pixels) and the
    0.54 m baseline, one drive per split, drive-disjoint test/train, masks and poses present."""
    data, world = _data(), _world()
    splits = {k: data.read_split(kitti_files.get_split_file("synthetic", k, data_path=tiny_world))
              for k in ("train", "val", "test")}
    drives = {k: {l[0] for l in v} for k, v in splits.items()}
    assert all(len(d) == 1 for d in drives.values())
    assert kitti_files.check_split_overlap(splits["train"], splits["test"]) == []
    assert {l[2] for l in splits["train"]} == {"l", "r"} and {l[1] for l in splits["test"]} == set(range(1, 7))
    cam = data.read_calib_file(tiny_world / world.SYNTH_DATE / "calib_cam_to_cam.txt")
    P2, P3 = cam["P_rect_02"].reshape(3, 4), cam["P_rect_03"].reshape(3, 4)
    np.testing.assert_allclose(P2[:, :3], [[0.58 * 208, 0, 105], [0, 1.92 * 64, 33], [0, 0, 1]], rtol=1e-6)
    assert P3[0, 3] == pytest.approx(-0.58 * 208 * 0.54)
    np.testing.assert_allclose(cam["S_rect_02"], [208, 64])
    drive = tiny_world / next(iter(drives["test"]))
    poses = world.read_synthetic_poses(drive)
    assert poses.shape == (8, 4, 4)
    np.testing.assert_allclose(poses[:, :3, :3] @ poses[:, :3, :3].transpose(0, 2, 1), np.tile(np.eye(3), (8, 1, 1)),
                               atol=1e-6)
    step = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert ((step > 0.6) & (step < 1.5)).all()
    thin = sum((np.asarray(Image.open(world.synthetic_thin_mask_path(tiny_world, drive.relative_to(tiny_world).as_posix(), f)))
                > 0).sum() for f in range(8))
    assert thin > 0


def _warp_error(src_img, tgt_img, depth, T_tgt_to_src, K):
    """Mean |I_tgt - I_src(warped)| and mean |I_tgt - I_src| (no warp) over target pixels with depth
    that land inside the source (nearest-pixel sampling, numpy), and that fraction of pixels."""
    h, w = depth.shape
    v, u = np.nonzero(depth > 0)
    z = depth[v, u]
    X = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z, np.ones_like(z)])
    Y = T_tgt_to_src @ X
    us = np.round(K[0, 0] * Y[0] / Y[2] + K[0, 2]).astype(int)
    vs = np.round(K[1, 1] * Y[1] / Y[2] + K[1, 2]).astype(int)
    ok = (Y[2] > 0.1) & (us >= 0) & (us < w) & (vs >= 0) & (vs < h)
    target = tgt_img[v[ok], u[ok]].astype(float)
    warped = np.abs(target - src_img[vs[ok], us[ok]]).mean() / 255
    unwarped = np.abs(target - src_img[v[ok], u[ok]]).mean() / 255
    return warped, unwarped, ok.mean()


def test_world_geometry_is_consistent(tiny_world):
    """GT depth + poses.txt + K warp frame 5 and the right camera onto frame 4 (brightness constancy):
    the mean photometric error is small, and far smaller than without warping."""
    data, world = _data(), _world()
    folder = data.read_split(kitti_files.get_split_file("synthetic", "train", data_path=tiny_world))[0][0]
    drive = tiny_world / folder
    poses = world.read_synthetic_poses(drive)
    K = data.scale_K(data.normalised_K(), 208, 64)
    image = lambda cam, f: np.asarray(Image.open(drive / cam / "data" / f"{f:010d}.jpg"))  # noqa: E731
    depth = data.read_depth_png(drive / "proj_depth" / "groundtruth" / "image_02" / f"{4:010d}.png")
    T = np.linalg.inv(poses[5]) @ poses[4]  # target (frame 4) to source (frame 5)
    warped, unwarped, inside = _warp_error(image("image_02", 5), image("image_02", 4), depth, T, K)
    assert inside > 0.7 and warped < 0.04 and warped < 0.5 * unwarped
    stereo = np.eye(4)
    stereo[0, 3] = -world.STEREO_BASELINE  # camera 2 coordinates -> camera 3 coordinates
    warped, unwarped, _ = _warp_error(image("image_03", 4), image("image_02", 4), depth, stereo, K)
    assert warped < 0.04 and warped < 0.5 * unwarped


def test_world_is_deterministic_and_skips_complete_tree(tmp_path, tiny_world):
    """Same seed -> same pixels (also from 2 worker processes); a complete tree with the same
    arguments is not rewritten."""
    data, world = _data(), _world()
    root = world.make_synthetic_kitti(tmp_path / "w", num_drives=3, frames_per_drive=3, height=32, width=104, seed=5)
    parallel = world.make_synthetic_kitti(tmp_path / "p", num_drives=3, frames_per_drive=3, height=32, width=104,
                                         seed=5, workers=2)
    for name in ("image_03/data/0000000001.jpg", "velodyne_points/data/0000000002.bin", "poses.txt"):
        for d in range(3):
            assert (root / world._drive_name(d) / name).read_bytes() == (parallel / world._drive_name(d) / name).read_bytes()
    rng = np.random.default_rng([5, 1])
    poses = world._trajectory(rng, 3)
    street = world._Street(rng, poses[0, 2, 3] - 30.0, poses[-1, 2, 3] + world.MAX_GT_DEPTH + 30.0)
    image, depth, _ = world.render_view(street, poses[2], 32, 104)
    drive = root / world._drive_name(1)
    np.testing.assert_array_equal(data.read_depth_png(drive / "proj_depth/groundtruth/image_02/0000000002.png"),
                                  np.round(depth * 256.0) / 256.0)
    marker = root / data.SYNTH_MARKER
    stamp = os.stat(drive / "image_02/data/0000000002.jpg").st_mtime_ns
    world.make_synthetic_kitti(root, num_drives=3, frames_per_drive=3, height=32, width=104, seed=5)
    assert os.stat(drive / "image_02/data/0000000002.jpg").st_mtime_ns == stamp and marker.is_file()
    assert (depth == 0).any() and depth.max() <= world.MAX_GT_DEPTH  # sky/far is "no data"


def test_synthetic_lidar_round_trip(tiny_world):
    """GT -> velodyne .bin (real velo_to_cam) -> velodyne_to_depth recovers the GT: >= 99% of the
    lidar pixels within 0.1% relative, for every camera-2 frame of a drive."""
    data, world = _data(), _world()
    folder = data.read_split(kitti_files.get_split_file("synthetic", "test", data_path=tiny_world))[0][0]
    calib = data.read_calib_file(tiny_world / folder.split("/")[0] / "calib_velo_to_cam.txt")
    np.testing.assert_allclose(calib["R"].reshape(3, 3), world.VELO_TO_CAM_R)
    good = total = 0
    for frame in range(8):
        lidar = data.velodyne_to_depth(tiny_world / folder.split("/")[0],
                                       tiny_world / folder / "velodyne_points" / "data" / f"{frame:010d}.bin")
        gt = data.read_depth_png(tiny_world / folder / "proj_depth" / "groundtruth" / "image_02" / f"{frame:010d}.png")
        on = lidar > 0
        assert (gt[on] > 0).all()
        good += (np.abs(lidar[on] - gt[on]) <= 1e-3 * gt[on]).sum()
        total += on.sum()
    assert total > 8 * 1000 and good >= 0.99 * total


def test_bad_arguments_are_one_error_line(tmp_path, capsys):
    """Too few drives is a ValueError naming the values; on the command line, `error: ...` and exit 2."""
    world = _world()
    with pytest.raises(ValueError, match="num_drives >= 3"):
        world.make_synthetic_kitti(tmp_path / "w", num_drives=2, frames_per_drive=5)
    assert world.main(["--make", str(tmp_path / "w"), "--num-drives", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: make_synthetic_kitti: need num_drives >= 3") and err.count("\n") == 1
    assert not (tmp_path / "w").exists()


# The default world's decoded depth maps and images (tiny_world: 3 drives x 8 frames, 208x64, seed 0)
# as rendered before the world had styles: the default style must still render exactly these pixels.
DEFAULT_DEPTH_SHA256 = "3d7e30b14f64cd4b79b67beadb57fea2ebab4dadaa7bb6c93c8438af92408eae"
DEFAULT_IMAGES_SHA256 = "bf1fd28e47f49e32e710d64c9f843835053364a9acf0d086bb7402fb61e479fe"


def _pixels_digest(paths):
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(np.asarray(Image.open(p)).tobytes())
    return h.hexdigest()


def test_default_style_renders_the_world_as_before(tiny_world):
    """The default style is the world of every earlier version, pixel for pixel: the decoded depth
    pngs and camera images of tiny_world hash to what the renderer gave before it had styles."""
    assert _pixels_digest(tiny_world.glob("*/*/proj_depth/groundtruth/image_0[23]/*.png")) == DEFAULT_DEPTH_SHA256
    assert _pixels_digest(tiny_world.glob("*/*/image_0[23]/data/*.jpg")) == DEFAULT_IMAGES_SHA256
    assert _world().STYLES["default"] == _world().WorldStyle()


@pytest.fixture(scope="module")
def style_worlds(tmp_path_factory):
    """Every style as a test-only world of 3 drives x 5 frames at 208x64."""
    root = tmp_path_factory.mktemp("styles")
    for name in _world().STYLES:
        _world().make_synthetic_kitti(root / name, num_drives=3, frames_per_drive=5, height=64, width=208, seed=0,
                                     style=name, test_only=name != "default")
    return root


def test_every_style_renders_a_test_split_and_changes_what_it_says(style_worlds):
    """Each style renders a complete world whose test list holds every drive (the default keeps its
    train/val/test split). Styles that change only the look (light, paint) render the same streets:
    identical depth, other pixels; the van camera's calibration has its focal length and its depth
    differs (another viewpoint); the cluttered street has more thin-structure pixels."""
    data = _data()
    read = lambda name, kind: data.read_split(kitti_files.get_split_file("synthetic", kind, data_path=style_worlds / name))
    assert len(read("default", "test")) == 3 and len(read("dusk", "test")) == 3 * 3  # 3 drives x 3 inner frames
    assert (style_worlds / "dusk" / "splits" / "synthetic" / "train_files.txt").read_text() == ""

    def frames(name, pattern):
        return [np.asarray(Image.open(p)) for p in sorted((style_worlds / name).glob(pattern))]
    depth, image = "*/*/proj_depth/groundtruth/image_02/*.png", "*/*/image_02/data/*.jpg"
    for name in ("dusk", "other_town"):
        assert all(np.array_equal(a, b) for a, b in zip(frames(name, depth), frames("default", depth))), name
        assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(frames(name, image),
                                                                        frames("default", image))]) > 5, name
    calib = data.read_calib_file(data.calib_folder(style_worlds / "van_camera", "2000_01_01/2000_01_01_drive_0000_sync")
                                 / data.CAM_TO_CAM_FILE)
    fx, fy = _world().STYLES["van_camera"].focal
    P2 = calib["P_rect_02"].reshape(3, 4)
    assert P2[0, 0] == pytest.approx(fx * 208, rel=1e-5) and P2[1, 1] == pytest.approx(fy * 64, rel=1e-5)
    default_P2 = data.read_calib_file(data.calib_folder(style_worlds / "default", "2000_01_01/2000_01_01_drive_0000_sync")
                                      / data.CAM_TO_CAM_FILE)["P_rect_02"].reshape(3, 4)
    assert P2[0, 0] != pytest.approx(default_P2[0, 0], rel=1e-3)
    assert not all(np.array_equal(a, b) for a, b in zip(frames("van_camera", depth), frames("default", depth)))
    thin = "*/*/thin_mask/image_02/*.png"
    assert sum(m.sum() for m in frames("cluttered", thin)) > 1.3 * sum(m.sum() for m in frames("default", thin))


def test_unknown_style_is_one_error_line(tmp_path, capsys):
    """--style nope: exit 2, one line naming the styles."""
    assert _world().main(["--make", str(tmp_path / "w"), "--style", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err and "dusk" in err
