"""`lightx2v ui` without its extra, and the default install staying free of gradio."""

import subprocess
import sys

from lightx2v.cli.main import main


def test_missing_gradio_prints_the_pip_command(monkeypatch, capsys, tmp_path):
    from lightx2v.models.wan.tiny import write_official_checkpoint

    model = write_official_checkpoint(tmp_path / "tiny")
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    code = main(["ui", "--model-path", str(model), "--device", "cpu", "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install 'lightx2v[ui]'" in err and "gradio" in err
    assert "Traceback" not in err


def test_bad_flag_is_one_line(capsys):
    assert main(["ui", "--model-path", "x", "--max-queue", "0"]) == 2
    assert "--max-queue must be positive" in capsys.readouterr().err


def test_the_cli_does_not_import_gradio():
    code = ("import sys, lightx2v.cli.main as m; m.build_parser(); "
            "print('gradio' in sys.modules, 'lightx2v.web.app' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
