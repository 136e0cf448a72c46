"""SIGINT and SIGTERM end the CLI cleanly (exit 130 / 143, one line, the encoder killed, every temp
file and folder removed); a closed stdout pipe ends it quietly (141); Ctrl-C during import is one line.

The runs are real subprocesses; LIGHTX2V_TEST_PAUSE_IN (lightx2v.io.atomic.test_pause, test-only)
makes one stop at a named point and say so, so that the signal lands exactly there."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 180


class Run:
    """A CLI subprocess in its own session (as a terminal's foreground job), stderr read by a thread."""

    def __init__(self, args, tmp_path: Path, pause: str = "", python_args=("-m", "lightx2v.cli.main"), stdout=None):
        (tmp_path / "tmp").mkdir(exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path / "tmp"), LIGHTX2V_TEST_PAUSE_IN=pause)
        self.proc = subprocess.Popen([sys.executable, *python_args, *map(str, args)], stdout=stdout or subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.err: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_pause(self) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "".join(self.err)
            if line.startswith("lightx2v: test pause at "):
                return dict(kv.split("=", 1) for kv in line.split()[5:])

    def finish(self) -> tuple[int, str]:
        rc = self.proc.wait(timeout=TIMEOUT)
        self.reader.join(TIMEOUT)
        return rc, "".join(self.err)


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def _gen(model, out):
    return ["generate", "--model-path", model, "--prompt", "a red fox in the snow", "--size", "48x32",
            "--frames", "9", "--steps", "1", "--device", "cpu", "--dtype", "fp32", "--quiet", "--seed", "1",
            "--output", out]


def _clean_exit(rc: int, err: str, code: int, line: str) -> None:
    assert rc == code, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == line, err


def test_sigterm_during_the_save_kills_ffmpeg_and_removes_the_partial_video(tiny_official_dir, tmp_path):
    out = tmp_path / "o" / "v.mp4"
    run = Run(_gen(tiny_official_dir, out), tmp_path, pause="save")
    ffmpeg = int(run.wait_for_pause()["pid"])
    assert Path(f"/proc/{ffmpeg}").exists() and [p.name for p in out.parent.iterdir() if ".partial" in p.name]
    run.proc.send_signal(signal.SIGTERM)
    rc, err = run.finish()
    _clean_exit(rc, err, 143, f"lightx2v: interrupted (SIGTERM); removed the partial output {out}")
    assert _gone(ffmpeg), "ffmpeg was left running"
    assert list(out.parent.iterdir()) == []


def test_ctrl_c_as_ffmpeg_starts_is_not_swallowed(tiny_official_dir, tmp_path):
    out = tmp_path / "v.mp4"
    run = Run(_gen(tiny_official_dir, out), tmp_path, pause="encoder-start")
    ffmpeg = int(run.wait_for_pause()["pid"])
    assert os.getpgid(ffmpeg) != run.proc.pid  # not in the job's process group: Ctrl-C goes to lightx2v only
    os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    rc, err = run.finish()
    _clean_exit(rc, err, 130, f"lightx2v: interrupted (SIGINT); removed the partial output {out}")
    assert _gone(ffmpeg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]


def test_sigterm_during_convert_removes_the_partial_folder(tiny_official_dir, tmp_path):
    dst = tmp_path / "converted"
    run = Run(["convert", tiny_official_dir, dst, "--dtype", "bf16"], tmp_path, pause="convert")
    run.wait_for_pause()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".converted.partial-")]
    assert len(partial) == 1 and any(partial[0].iterdir())
    run.proc.send_signal(signal.SIGTERM)
    rc, err = run.finish()
    _clean_exit(rc, err, 143, f"lightx2v: interrupted (SIGTERM); removed the partial output {dst}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]


def test_sigterm_during_demo_removes_its_temporary_folder(tmp_path):
    out = tmp_path / "demo.mp4"
    run = Run(["demo", "--output", out, "--steps", "1"], tmp_path, pause="demo")
    folder = Path(run.wait_for_pause()["folder"])
    assert folder.parent == tmp_path / "tmp" and folder.name.startswith("lightx2v-demo-") and any(folder.iterdir())
    run.proc.send_signal(signal.SIGTERM)
    rc, err = run.finish()
    _clean_exit(rc, err, 143, f"lightx2v: interrupted (SIGTERM); removed the temporary folder {folder}")
    assert not folder.exists() and list((tmp_path / "tmp").iterdir()) == [] and not out.exists()


def test_a_closed_stdout_pipe_ends_quietly(tiny_official_dir, tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is printed (`| head` that has exited)
    try:
        run = Run(["info", tiny_official_dir, "--json"], tmp_path, stdout=write_end)
    finally:
        os.close(write_end)
    rc, err = run.finish()
    assert rc == 141 and err == "", err


_INTERRUPT_AT_IMPORT = """
import importlib.abc, os, signal, sys
module = sys.argv.pop(1)
class Interrupt(importlib.abc.MetaPathFinder):  # Ctrl-C while `module` is being imported
    def find_spec(self, name, path=None, target=None):
        if name == module:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
from lightx2v.cli.main import main  # what the `lightx2v` console script runs
sys.exit(main())
"""


def _imports_torch(module: str) -> bool:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                          timeout=TIMEOUT).stdout.strip() == "True"


@pytest.mark.parametrize("module", ["lightx2v.loading.detect", "torch"])
def test_ctrl_c_during_import_is_one_line(tiny_official_dir, tmp_path, module):
    if module == "torch" and _imports_torch("lightx2v.cli.main"):
        pytest.skip("importing lightx2v.cli.main imports torch here (the lazy package init is not in this tree)")
    run = Run([module, "info", tiny_official_dir], tmp_path, python_args=("-c", _INTERRUPT_AT_IMPORT))
    rc, err = run.finish()
    _clean_exit(rc, err, 130, "lightx2v: interrupted (SIGINT); nothing was written")


def test_stop_on_signals_in_process(capsys):
    from lightx2v.cli.signals import Interrupted, describe, exit_code, stop_on_signals
    from lightx2v.io.atomic import note_removed

    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        with pytest.raises(Interrupted) as e:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at the next bytecode; never reached
        os.kill(os.getpid(), signal.SIGINT)  # a second signal while cleaning up: a note, no exception
        time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is before  # restored
    assert "still removing partial files" in capsys.readouterr().err
    note_removed(e.value, "the partial output a.mp4")
    assert (exit_code(e.value), describe(e.value)) == (143, "interrupted (SIGTERM); removed the partial output a.mp4")
    assert (exit_code(KeyboardInterrupt()), describe(KeyboardInterrupt())) == (130, "interrupted (SIGINT); nothing was written")
