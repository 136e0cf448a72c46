"""io/output.py: the extension decides the format; folders, existing files, symlinks, devices,
FIFOs and sockets as the module docstring says; metadata in the file and beside it."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from lightx2v.config import SamplingParams
from lightx2v.errors import InputError
from lightx2v.io import video
from lightx2v.io.output import check_output, save, sidecar_path
from lightx2v.io.video import probe_mp4, read_metadata

META = {"prompt": "a fox; = # \\ ü \"quoted\"\nsecond line", "seed": 7, "loras": [{"path": "a.safetensors", "strength": 0.5}]}


def _frames(n=5, h=32, w=48, seed=0):
    return np.random.default_rng(seed).random((n, h, w, 3), dtype=np.float32)


def _atoms(path) -> list[str]:
    """Top-level boxes of an mp4, in file order."""
    data, out, i = Path(path).read_bytes(), [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        out.append(kind.decode("latin-1"))
        i += size if size >= 8 else len(data)
    return out


def _leftovers(*folders) -> list[str]:
    return [p.name for f in folders for p in Path(f).iterdir() if ".partial" in p.name]


@pytest.mark.parametrize("ext, codec", [("mp4", "h264"), ("webm", "vp9"), ("gif", "gif")])
def test_the_extension_decides_the_format(tmp_path, ext, codec):
    out = save(_frames(), tmp_path / f"v.{ext}", fps=8, metadata=META)
    info = probe_mp4(out)
    assert (info["codec"], info["frames"], info["width"], info["height"]) == (codec, 5, 48, 32)
    assert json.loads(sidecar_path(out).read_text()) == META
    if ext != "gif":  # gif has no comment tag: the sidecar carries it
        assert read_metadata(out) == META
    if ext == "mp4":  # +faststart: the index before the data, so a browser plays it while downloading
        atoms = _atoms(out)
        assert atoms.index("moov") < atoms.index("mdat"), atoms
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"v.{ext}", f"v.{ext}.json"]


def test_png_is_one_frame_with_its_metadata(tmp_path):
    from PIL import Image

    frames = _frames(1)
    out = save(frames, tmp_path / "img.png", metadata=META)
    with Image.open(out) as im:
        assert json.loads(im.text["Comment"]) == META
        assert np.array_equal(np.asarray(im), (frames[0] * 255 + 0.5).astype(np.uint8))
    with pytest.raises(InputError, match=r"a \.png output is one image, but 5 frames .* --frames 1"):
        save(_frames(5), tmp_path / "many.png")
    assert not (tmp_path / "many.png").exists()


@pytest.mark.parametrize("name, words", [("v.avi", "extension '.avi'"), ("v.txt", "extension '.txt'"),
                                         ("video", "no extension")])
def test_other_extensions_are_refused_naming_the_supported_ones(tmp_path, name, words):
    with pytest.raises(InputError) as e:
        check_output(tmp_path / name, 5)
    msg = str(e.value)
    assert words in msg and ".mp4, .webm, .gif, .png" in msg and "\n" not in msg
    with pytest.raises(InputError):
        SamplingParams(prompt="x", output_path=str(tmp_path / name)).validate()
    assert list(tmp_path.iterdir()) == []


def test_output_type_and_extension_agree(tmp_path):
    SamplingParams(prompt="x", output_path=str(tmp_path / "a.gif")).validate()  # default mp4: the extension decides
    with pytest.raises(InputError, match=r"output_type 'webm' does not match the output file a\.gif"):
        SamplingParams(prompt="x", output_type="webm", output_path=str(tmp_path / "a.gif")).validate()
    with pytest.raises(InputError, match="output_type 'png' is one image"):
        SamplingParams(prompt="x", output_type="png", num_frames=81, output_path=str(tmp_path / "a.png")).validate()
    # no frame count yet: the checkpoint's (81 for Wan) is filled in, then the same refusal
    from lightx2v.config import SamplingDefaults

    unfilled = SamplingParams(prompt="x", output_type="png", output_path=str(tmp_path / "a.png"))
    unfilled.validate()
    with pytest.raises(InputError, match="output_type 'png' is one image"):
        unfilled.with_defaults(SamplingDefaults())


def test_webm_refused_when_the_bundled_ffmpeg_lacks_vp9(tmp_path, monkeypatch):
    assert "libvpx-vp9" in video.encoders()  # the imageio-ffmpeg binary has it
    monkeypatch.setattr(video, "encoders", lambda: frozenset({"libx264", "gif"}))
    with pytest.raises(InputError, match=r"cannot write \.webm: .* no libvpx-vp9 encoder; write \.mp4 instead"):
        check_output(tmp_path / "v.webm", 5)


@pytest.mark.parametrize("trailing", [True, False])
def test_a_folder_gets_the_default_name_inside(tmp_path, trailing):
    folder = tmp_path / "new" / "dir"
    if not trailing:
        folder.mkdir(parents=True)
    out = save(_frames(), str(folder) + (os.sep if trailing else ""), default_stem="wan_t2v_seed3")
    assert out == folder / "wan_t2v_seed3.mp4" and probe_mp4(out)["frames"] == 5
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is a file; expected a folder"):
        check_output(str(blocker) + "/")


def test_an_existing_file_is_replaced_with_a_warning_or_kept(tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old")
    with pytest.raises(InputError, match=r"exists and overwrite is off \(--no-overwrite\)"):
        check_output(out, 5, overwrite=False)
    with pytest.raises(InputError, match="exists and overwrite is off"):
        save(_frames(), out, overwrite=False)
    assert out.read_bytes() == b"old" and _leftovers(tmp_path) == []
    with pytest.warns(UserWarning, match=r"overwrote the existing file .*v\.mp4 \(--no-overwrite"):
        save(_frames(), out)
    assert probe_mp4(out)["frames"] == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a new file: no warning
        save(_frames(), tmp_path / "fresh.mp4")


def test_a_symlink_is_followed_and_stays_a_link(tmp_path):
    real_dir, link_dir = tmp_path / "real", tmp_path / "links"
    real_dir.mkdir()
    link_dir.mkdir()
    target = real_dir / "target.mp4"
    target.write_bytes(b"old")
    link = link_dir / "out.mp4"
    link.symlink_to(target)
    with pytest.warns(UserWarning, match="overwrote"):
        assert save(_frames(), link, metadata=META) == link
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert probe_mp4(target)["frames"] == 5 and read_metadata(link) == META
    assert json.loads((link_dir / "out.mp4.json").read_text()) == META  # the sidecar beside the name given
    dangling = link_dir / "new.mp4"
    dangling.symlink_to(real_dir / "created.mp4")
    save(_frames(), dangling)
    assert dangling.is_symlink() and probe_mp4(real_dir / "created.mp4")["frames"] == 5
    assert _leftovers(real_dir, link_dir) == []


def _stream_temps() -> set:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob(".lightx2v-out.*")}


def test_a_fifo_is_written_through(tmp_path):
    temps = _stream_temps()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(Path(fifo).read_bytes()))
    reader.start()
    assert save(_frames(), fifo, metadata=META) == fifo
    reader.join(30)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO
    assert got and got[0][4:8] == b"ftyp"  # mp4 bytes (no extension: output_type's format)
    written = tmp_path / "copy.mp4"
    written.write_bytes(got[0])
    assert probe_mp4(written)["frames"] == 5 and read_metadata(written) == META
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.mp4", "pipe"]  # no sidecar, no temp
    assert _stream_temps() == temps  # the encoded temp file was removed


def _char_device(path: Path) -> Path:
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("mknod needs root (CI runs as root)")
    return path


def test_a_character_device_is_written_through_not_replaced(tmp_path):
    null = _char_device(tmp_path / "null")
    before = os.lstat(null)
    assert save(_frames(), null, metadata=META) == null
    after = os.lstat(null)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]
    SamplingParams(prompt="x", output_path=str(null), overwrite=False).validate()  # a device is not overwritten


def test_block_devices_and_sockets_are_refused(tmp_path):
    block = tmp_path / "disk"
    try:
        os.mknod(block, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    except PermissionError:
        pytest.skip("mknod needs root (CI runs as root)")
    with pytest.raises(InputError, match=r"is a block device; expected a file name, a folder, a character device"):
        save(_frames(), block)
    assert stat.S_ISBLK(os.lstat(block).st_mode)
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        with pytest.raises(InputError, match="is a socket"):
            check_output(sock_path, 5)
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)


def test_unwritable_places_are_one_line(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"is not writable: .*file\.txt is a file, not a folder"):
        check_output(blocker / "sub" / "v.mp4", 5)
    with pytest.raises(InputError, match="is not writable"):
        check_output("/proc/lightx2v-test/v.mp4", 5)
    assert blocker.read_text() == "x"


def test_crf_sets_the_quality_and_is_checked(tmp_path):
    """--crf / crf=: a lower value writes a larger (better) mp4; outside 0-51 is one line."""
    from lightx2v.io.output import save

    rng = np.random.default_rng(0)
    frames = (rng.random((5, 32, 48, 3)) * 255).astype(np.uint8)
    sizes = {}
    for crf in (5, 40):
        path = save(frames, tmp_path / f"c{crf}.mp4", fps=8, crf=crf)
        sizes[crf] = path.stat().st_size
    assert sizes[5] > 2 * sizes[40]
    with pytest.raises(InputError, match="crf must be an integer from 0 .* to 51, got 52"):
        SamplingParams(prompt="x", crf=52).validate()
