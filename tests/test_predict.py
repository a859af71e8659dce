"""Tests of helpers/predict.py: depth for your own images (PNG, .npy, PLY point clouds), and its bad inputs.

Oracles: back-projection against re-projection, PLY files read back by a minimal reader, the .npy
depths against the point clouds' z.
"""
import importlib
from pathlib import Path

import numpy as np

from test_07_eval import _tiny_checkpoint


def predict_module():
    return importlib.import_module("helpers.predict")


def test_back_projection_reprojects_and_ply_files_are_valid(tmp_path):
    """Points re-project to their pixels; binary and ASCII PLY headers count exactly the points written."""
    p = predict_module()
    K = np.array([[100.0, 0, 20], [0, 90, 10], [0, 0, 1]])
    depth = np.random.default_rng(0).uniform(1, 30, (21, 41)).astype(np.float32)
    pts = p.back_project(depth, K)
    v, u = np.mgrid[0:21, 0:41]
    np.testing.assert_allclose(K[0, 0] * pts[:, 0] / pts[:, 2] + K[0, 2], u.ravel(), atol=1e-3)
    np.testing.assert_allclose(K[1, 1] * pts[:, 1] / pts[:, 2] + K[1, 2], v.ravel(), atol=1e-3)
    colors = np.random.default_rng(1).integers(0, 256, (len(pts), 3)).astype(np.uint8)
    for ascii_ in (False, True):
        path = tmp_path / f"cloud_{ascii_}.ply"
        p.write_ply(path, pts.astype(np.float32), colors, ascii=ascii_)
        header, points, cols = _read_ply(path)
        assert len(points) == len(pts) == int(header["vertex"])
        np.testing.assert_allclose(points, pts, atol=1e-3)
        np.testing.assert_array_equal(cols, colors)


def test_output_names_keep_frames_of_different_drives_apart():
    """Equal frame names from different drives get their folders in the name; unique names stay short."""
    p = predict_module()
    a, b = Path("/d/drive_a/image_02/data/0000000001.jpg"), Path("/d/drive_b/image_02/data/0000000001.jpg")
    assert p._output_names([a, b]) == ["drive_a__image_02__data__0000000001", "drive_b__image_02__data__0000000001"]
    assert p._output_names([a, Path("/x/0000000002.png")]) == ["0000000001", "0000000002"]


def _read_ply(path):
    """Minimal PLY reader (x y z float, r g b uchar) for the tests."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode().splitlines()
    header = {ln.split()[1]: ln.split()[2] for ln in lines if ln.startswith("element")}
    header["format"] = next(ln.split()[1] for ln in lines if ln.startswith("format"))
    n = int(header["vertex"])
    if header["format"] == "ascii":
        rows = np.array([ln.split() for ln in raw[end:].decode().splitlines()], float).reshape(n, 6)
        return header, rows[:, :3], rows[:, 3:].astype(np.uint8)
    body = np.frombuffer(raw[end:], np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3)]))
    assert len(body) == n and len(raw) == end + 15 * n
    return header, body["xyz"], body["rgb"]


def test_predict_writes_png_npy_and_ply(tmp_path, tiny_world, capsys):
    """helpers/predict.py on a folder of frames: per image a colour PNG of the image's size, a .npy of positive
    finite depth, and a PLY whose header counts exactly the vertices stored."""
    from PIL import Image
    _tiny_checkpoint(tmp_path / "ckpt.pt", data_path=tiny_world)
    frames = sorted(tiny_world.glob("*/*/image_02/data/*.jpg"))[:2]
    folder = tmp_path / "frames"
    folder.mkdir()
    for f in frames:
        (folder / f.name).write_bytes(f.read_bytes())
    code = predict_module().main([str(a) for a in ["--checkpoint", tmp_path / "ckpt.pt", "--images", folder,
                                                   "--ply", "--out", tmp_path / "pred"]])
    err = capsys.readouterr().err
    assert code == 0, err
    for f in frames:
        w, h = Image.open(f).size
        png = np.array(Image.open(tmp_path / "pred" / f"{f.stem}_depth.png"))
        depth = np.load(tmp_path / "pred" / f"{f.stem}_depth.npy")
        assert png.shape == (h, w, 3) and depth.shape == (h, w)
        assert np.isfinite(depth).all() and (depth > 0).all() and png.max() > 100
        header, points, _ = _read_ply(tmp_path / "pred" / f"{f.stem}.ply")
        assert len(points) == int(header["vertex"]) > 0.5 * h * w
        np.testing.assert_allclose(np.sort(points[:, 2]), np.sort(depth.ravel()[depth.ravel() < 80]), rtol=1e-5)


def test_bad_inputs_give_one_error_line_and_exit_2(tmp_path, tiny_world, capsys):
    """No images, both or neither of --checkpoint / --official, a folder without images, an image
    that is not one, a negative --threads: each gives exactly one `error:` line and exit 2."""
    _tiny_checkpoint(tmp_path / "ok.pt", data_path=tiny_world)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "frame.png").write_text("not an image")
    cases = [(["--checkpoint", tmp_path / "ok.pt"], "--images"),
             (["--images", tmp_path / "empty"], "exactly one"),
             (["--images", tmp_path / "empty", "--checkpoint", tmp_path / "ok.pt", "--official", tmp_path], "exactly one"),
             (["--images", tmp_path / "empty", "--checkpoint", tmp_path / "ok.pt"], "no image file"),
             (["--images", tmp_path / "bad", "--checkpoint", tmp_path / "ok.pt"], "cannot read image"),
             (["--images", tmp_path / "bad", "--checkpoint", tmp_path / "ok.pt", "--threads", "-2"], "--threads -2")]
    for argv, needle in cases:
        code = predict_module().main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2, argv
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
