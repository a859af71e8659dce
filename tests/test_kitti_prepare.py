"""Tests of helpers/kitti_files.py: png -> jpg and the depth-completion ground truth, on a small KITTI-layout
tree written by the test.

Oracles: a jpg saved by Pillow with Monodepth2's settings (same quantisation tables, 4:2:0 chroma),
the png pixels (the jpg stays close), 01_data's own reader of the arranged ground truth (the same
depths), and a second run (resumable: nothing redone).
"""
import importlib

import numpy as np
from PIL import Image, JpegImagePlugin

DRIVE = "2011_09_26_drive_0001_sync"


def prep():
    return importlib.import_module("helpers.kitti_files")


def smooth_image(seed, mode="RGB", size=(64, 24)):
    """A smooth random image (JPEG keeps it close), RGB or grayscale."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 8, 3 if mode == "RGB" else 1), dtype=np.uint8)
    img = Image.fromarray(coarse.squeeze(-1) if mode == "L" else coarse).resize(size, Image.BILINEAR)
    return img


def raw_tree(root):
    """<date>/<drive>/image_0{0,2}/data/*.png (grayscale and colour cameras), plus one corrupt png."""
    for cam, mode in (("image_00", "L"), ("image_02", "RGB")):
        folder = root / "2011_09_26" / DRIVE / cam / "data"
        folder.mkdir(parents=True)
        for i in range(3):
            smooth_image(i, mode).save(folder / f"{i:010d}.png")
    bad = root / "2011_09_26" / DRIVE / "image_02" / "data" / "0000000009.png"
    bad.write_bytes(b"not a png")
    return bad


def test_png_to_jpg_with_monodepth2_settings_resumable_and_bad_files_named(tmp_path, capsys):
    """--to_jpg writes each camera png as a jpg with Pillow's quality-92 tables and 4:2:0 chroma (as an
    image saved with those settings has), close to the png; the corrupt png is one error line naming
    it and exit 2 while the others are converted; a second run converts nothing; --delete_png then
    removes the pngs whose jpg is in place and keeps the bad one; a depth png is never touched."""
    root = tmp_path / "kitti"
    bad = raw_tree(root)
    gt = root / "2011_09_26" / DRIVE / "proj_depth" / "groundtruth" / "image_02"
    gt.mkdir(parents=True)
    Image.fromarray(np.full((24, 64), 2560, np.uint16)).save(gt / "0000000001.png")
    argv = ["--to_jpg", "--data_path", str(root), "--workers", "2"]
    assert prep().main(argv) == 2
    out = capsys.readouterr()
    assert [line for line in out.err.splitlines() if line] == [next(l for l in out.err.splitlines() if l)]
    assert out.err.startswith("error: cannot convert") and str(bad) in out.err
    assert "png -> jpg: 6 done, 0 already done, 1 failed" in out.out
    reference = tmp_path / "reference.jpg"
    smooth_image(1).save(reference, "JPEG", quality=92, subsampling="4:2:0")
    with Image.open(reference) as ref:
        tables = ref.quantization
    for cam, mode in (("image_00", "L"), ("image_02", "RGB")):
        jpg = root / "2011_09_26" / DRIVE / cam / "data" / "0000000001.jpg"
        with Image.open(jpg) as im:
            assert im.mode == mode
            if mode == "RGB":
                assert im.quantization == tables and JpegImagePlugin.get_sampling(im) == 2
            png = np.asarray(Image.open(jpg.with_suffix(".png")), np.float64)
            assert np.abs(np.asarray(im, np.float64) - png).mean() < 3.0
    assert not list(gt.glob("*.jpg"))
    assert prep().main(argv) == 2
    assert "0 done, 6 already done, 1 failed" in capsys.readouterr().out
    assert prep().main(argv + ["--delete_png"]) == 2
    capsys.readouterr()
    left = sorted(p.name for p in root.glob("*/*/image_0*/data/*.png"))
    assert left == [bad.name] and len(list(root.glob("*/*/image_0*/data/*.jpg"))) == 6
    assert (gt / "0000000001.png").is_file()


def test_depth_completion_ground_truth_is_arranged_for_eigen_benchmark(tmp_path, capsys):
    """--depth_gt DIR places train/ and val/ drives' proj_depth pngs at <date>/<drive>/proj_depth, where
    01_data.gt_png_path finds them and read_depth_png reads the written depths; a folder that is not a
    drive and an 8-bit png are one error line each (exit 2) while the rest is placed; a second run
    places nothing again; DIR is left as it was."""
    data = importlib.import_module("01_data")
    annotated, root = tmp_path / "annotated", tmp_path / "kitti"
    root.mkdir()
    depths = {}
    for part, drive, frame in (("train", DRIVE, 5), ("val", "2011_09_28_drive_0002_sync", 7)):
        folder = annotated / part / drive / "proj_depth" / "groundtruth" / "image_02"
        folder.mkdir(parents=True)
        depth = np.random.default_rng(frame).integers(0, 80 * 256, (24, 64)).astype(np.uint16)
        Image.fromarray(depth).save(folder / f"{frame:010d}.png")
        depths[(f"{drive[:10]}/{drive}", frame)] = depth.astype(np.float32) / 256
    (annotated / "train" / "readme_notes").mkdir()
    eight_bit = annotated / "val" / "2011_09_28_drive_0002_sync" / "proj_depth" / "groundtruth" / "image_02"
    Image.fromarray(np.zeros((24, 64), np.uint8)).save(eight_bit / "0000000008.png")
    before = sorted(p.relative_to(annotated) for p in annotated.rglob("*"))
    argv = ["--depth_gt", str(annotated), "--data_path", str(root), "--workers", "2"]
    assert prep().main(argv) == 2
    out = capsys.readouterr()
    errors = [line for line in out.err.splitlines() if line]
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert any("readme_notes" in line for line in errors) and any("0000000008.png" in line for line in errors)
    assert "depth GT: 2 done, 0 already done, 1 failed" in out.out
    for (folder, frame), depth in depths.items():
        np.testing.assert_array_equal(data.read_depth_png(data.gt_png_path(root, folder, frame, "l")), depth)
    assert prep().main(argv) == 2
    assert "0 done, 2 already done, 1 failed" in capsys.readouterr().out
    assert sorted(p.relative_to(annotated) for p in annotated.rglob("*")) == before


def test_nothing_to_do_or_missing_folders_are_one_line(tmp_path, capsys):
    """No action, a missing --data_path and a --depth_gt folder without train/ or val/: one error line, exit 2."""
    for argv, text in (([], "nothing to do"), (["--to_jpg", "--data_path", str(tmp_path / "no")], "no such folder"),
                       (["--depth_gt", str(tmp_path), "--data_path", str(tmp_path)], "train/ and val/")):
        assert prep().main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and text in err[0]
