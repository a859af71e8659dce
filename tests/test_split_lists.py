"""Tests of helpers/kitti_files.py: the leakage check, the download of a standard list with its SHA-256,
user lists used as given, concurrent downloads, and the offline messages."""
import hashlib
import http.server
import importlib
import os
import threading
from functools import partial

import pytest

from helpers import kitti_files


def _data():
    return importlib.import_module("01_data")


def test_split_overlap_checker():
    """Shared drives are listed with both line counts and the number of test frames on them (3 of
    the 4 here); the guard refuses unless allowed."""
    train = [("a", 1, "l"), ("a", 2, "r"), ("b", 1, "l"), ("c", 4, "l")]
    test = [("a", 9, "l"), ("c", 1, "l"), ("c", 2, "l"), ("d", 1, "l")]
    assert kitti_files.check_split_overlap(train, test) == [("a", 2, 1), ("c", 1, 2)]
    assert kitti_files.check_split_overlap(train, [("z", 1, "l")]) == []
    with pytest.raises(kitti_files.SplitOverlapError, match=r"2 drive\(s\).*\(3 of its 4 test frames\): "
                                                    r"a \(train 2, eval 1\), c \(train 1, eval 2\)"):
        kitti_files.require_disjoint_splits(train, test)
    assert len(kitti_files.require_disjoint_splits(train, test, allow_overlap=True)) == 2


@pytest.fixture
def split_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving a generated eigen/test_files.txt."""
    served = tmp_path / "served"
    (served / "eigen").mkdir(parents=True)
    payload = b"".join(f"2011_09_26/2011_09_26_drive_0002_sync {i:010d} l\n".encode() for i in range(5))
    (served / "eigen" / "test_files.txt").write_bytes(payload)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hashlib.sha256(payload).hexdigest()
    server.shutdown()
    server.server_close()


def test_get_split_file_download_and_hash(split_server, tmp_path, monkeypatch):
    """First use downloads and caches the list with its download mark (no temporary file left); a
    wrong hash is refused; the cache works offline; a downloaded list that changed is still refused."""
    data = _data()
    url, digest = split_server
    monkeypatch.setitem(kitti_files.SPLIT_SHA256, ("eigen", "test"), "0" * 64)
    with pytest.raises(data.DataError, match="SHA-256"):
        kitti_files.get_split_file("eigen", "test", tmp_path / "cache", base_url=url)
    assert not (tmp_path / "cache" / "eigen" / "test_files.txt").exists()
    monkeypatch.setitem(kitti_files.SPLIT_SHA256, ("eigen", "test"), digest)
    path = kitti_files.get_split_file("eigen", "test", tmp_path / "cache", base_url=url)
    assert path == tmp_path / "cache" / "eigen" / "test_files.txt"
    assert len(data.read_split(path)) == 5
    assert (path.parent / "test_files.txt.sha256").read_text().split()[0] == digest
    assert sorted(p.name for p in path.parent.iterdir()) == ["test_files.txt", "test_files.txt.sha256"]
    # Cached: no server needed (an unreachable URL), and the env var selects the folder.
    monkeypatch.setenv("SQLDEPTH_SPLIT_DIR", str(tmp_path / "cache"))
    assert kitti_files.get_split_file("eigen", "test", base_url="http://127.0.0.1:9") == path
    # A corrupted download is refused rather than used (it carries the mark of a download).
    path.write_text("x 1 l\n")
    with pytest.raises(data.DataError, match="delete it"):
        kitti_files.get_split_file("eigen", "test", tmp_path / "cache", base_url=url)


def test_user_lists_are_used_as_given_with_one_note(tmp_path):
    """A list the user put in a split folder (no download mark) is never hash-checked or fetched:
    with a standard name but other contents it is used with one line naming the standard list and
    both line counts; a custom name (any name) is used silently; the standard contents give no note."""
    data = _data()
    mine = tmp_path / "their_splits"
    data.write_split(mine / "eigen_zhou" / "train_files.txt", [("2011_09_26/d_0001_sync", i, "l") for i in range(3)])
    data.write_split(mine / "my_split" / "val_files.txt", [("2011_09_26/d_0001_sync", 1, "r")])
    notes = []
    offline = "http://127.0.0.1:9"                       # nothing may be downloaded
    path = kitti_files.get_split_file("eigen_zhou", "train", mine, base_url=offline, log=notes.append)
    assert path == mine / "eigen_zhou" / "train_files.txt" and len(data.read_split(path)) == 3
    assert len(notes) == 1 and "\n" not in notes[0], notes
    assert "standard eigen_zhou/train list (39,810 lines)" in notes[0] and "3 lines" in notes[0]
    assert str(path) in notes[0]
    notes.clear()
    assert kitti_files.get_split_file("my_split", "val", mine, log=notes.append) == mine / "my_split" / "val_files.txt"
    with pytest.raises(data.DataError, match=r"not found: .*my_split.train_files\.txt"):
        kitti_files.get_split_file("my_split", "train", mine, log=notes.append)
    standard = hashlib.sha256(path.read_bytes()).hexdigest()
    kitti_files.SPLIT_SHA256[("eigen_zhou", "train")], old = standard, kitti_files.SPLIT_SHA256[("eigen_zhou", "train")]
    try:
        assert kitti_files.get_split_file("eigen_zhou", "train", mine, log=notes.append) == path
    finally:
        kitti_files.SPLIT_SHA256[("eigen_zhou", "train")] = old
    assert notes == []


def test_a_download_finishing_meanwhile_cannot_break_ours(split_server, tmp_path, monkeypatch):
    """Two writers of one list (torchrun ranks sharing a cache): another process completes the same
    download between our write and our rename. Each writer has its own temporary file, so both
    renames succeed, the list is intact and no temporary file is left (one shared `.part` name
    would have been renamed away under us: FileNotFoundError)."""
    url, digest = split_server
    monkeypatch.setitem(kitti_files.SPLIT_SHA256, ("eigen", "test"), digest)
    real_replace, interleaved = os.replace, []

    def replace_after_another_writer(src, dst):
        if not interleaved:                              # the other process, once, just before us
            interleaved.append(src)
            kitti_files.get_split_file("eigen", "test", tmp_path / "cache", base_url=url)
        real_replace(src, dst)

    monkeypatch.setattr(kitti_files.os, "replace", replace_after_another_writer)
    path = kitti_files.get_split_file("eigen", "test", tmp_path / "cache", base_url=url)
    assert interleaved and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in path.parent.iterdir()) == ["test_files.txt", "test_files.txt.sha256"]


def test_get_split_file_offline_and_names(tmp_path, tiny_world):
    """Offline: one line that names --split_dir; a list neither on disk nor downloadable is one line
    naming the path; synthetic is local."""
    data = _data()
    with pytest.raises(data.DataError) as err:
        kitti_files.get_split_file("eigen_zhou", "train", tmp_path, base_url="http://127.0.0.1:9", timeout=2)
    assert "--split_dir" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(data.DataError, match="not a list this program downloads") as err:
        kitti_files.get_split_file("eigen", "train", tmp_path)
    assert str(tmp_path / "eigen" / "train_files.txt") in str(err.value) and "\n" not in str(err.value)
    path = kitti_files.get_split_file("synthetic", "val", data_path=tiny_world)
    assert path == tiny_world / "splits" / "synthetic" / "val_files.txt"
    with pytest.raises(data.DataError):
        kitti_files.get_split_file("synthetic", "val", data_path=tmp_path)


# ---------------------------------------------------------------------------------------------
# KittiRaw
# ---------------------------------------------------------------------------------------------
