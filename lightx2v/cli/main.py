"""`lightx2v` command line: generate, info, demo, convert, serve, ui.

Errors meant for people (LightX2VError) are printed as one line on stderr with the error's exit
code (2 bad input, 3 resources, 4 hub, 5 non-finite; 1 the video encoder failed), never as a
traceback. SIGINT (Ctrl-C) and SIGTERM stop the command cleanly, with exit 130 / 143: the video
encoder is killed, every temp file and folder removed, and one line says what was removed
(cli/signals.py). A closed stdout pipe (`| head`) ends it quietly with exit 141.

The console script is `lightx2v.cli.main:main`. The module's own imports are light (no torch:
the package's attributes load lazily): the heavy imports happen inside `main`, where a Ctrl-C is
caught like any other.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from lightx2v.cli import convert, demo, generate, info
from lightx2v.cli.signals import describe, exit_code, quiet_broken_pipe, stop_on_signals
from lightx2v.errors import GenerationCancelled, LightX2VError
from lightx2v.server import cli as serve
from lightx2v.web import ui

COMMANDS = {"generate": generate, "info": info, "demo": demo, "convert": convert, "serve": serve, "ui": ui}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None/False or its help already says it ("default: ...")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default:" in text or action.default in (None, False, []):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightx2v",
        description="Fast, low-memory video generation (Wan2.1 text-, image- and first-last-frame-to-video; more families through one registry).",
        formatter_class=_HelpFormatter,
    )
    from lightx2v import __version__

    parser.add_argument("--version", action="version", version=f"lightx2v {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in COMMANDS.items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP,
                           formatter_class=_HelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # the library warns (an assumed preset, CFG on a distilled model, unmatched LoRA keys):
    # people see one line, not a file:line and a source line
    print(f"lightx2v: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import warnings

    with warnings.catch_warnings(), stop_on_signals():  # both restore the caller's state on return
        warnings.showwarning = _one_line_warning
        try:
            code = _main(argv)
            sys.stdout.flush()  # here, not at exit: a closed pipe is told apart below
            return code
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (cli/signals.py), imports included
            _err(describe(exc))
            return exit_code(exc)
        except BrokenPipeError:
            return quiet_broken_pipe()


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        if getattr(args, "config", None):
            args = generate.apply_config_file(parser, argv, args)
        return int(args._run(args) or 0)
    except LightX2VError as exc:
        _err(f"error: {exc}")
        return exc.exit_code
    except GenerationCancelled as exc:
        _err(str(exc))
        return 130


def _err(text: str) -> None:
    try:
        print(f"lightx2v: {text}", file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):  # stderr's reader is gone too
        pass


if __name__ == "__main__":
    sys.exit(main())
