"""`lightx2v` command line: generate, info, demo, convert.

Errors meant for people (LightX2VError) are printed as one line on stderr with exit code 2,
never as a traceback; Ctrl-C stops cleanly (exit 130) and leaves no partial output.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from lightx2v.cli import convert, demo, generate, info
from lightx2v.errors import GenerationCancelled, LightX2VError

COMMANDS = {"generate": generate, "info": info, "demo": demo, "convert": convert}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightx2v",
        description="Fast, low-memory video generation (Wan2.1 text-, image- and first-last-frame-to-video; more families through one registry).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from lightx2v import __version__

    parser.add_argument("--version", action="version", version=f"lightx2v {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in COMMANDS.items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # the library warns (an assumed preset, CFG on a distilled model, unmatched LoRA keys):
    # people see one line, not a file:line and a source line
    print(f"lightx2v: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import warnings

    with warnings.catch_warnings():  # restores the caller's warning display on return
        warnings.showwarning = _one_line_warning
        return _main(argv)


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
        print(f"lightx2v: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except GenerationCancelled as exc:
        print(f"lightx2v: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("lightx2v: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
