"""How the commands present themselves: their name as the user typed it, and help texts that show defaults.

Each command has two spellings: a console script (``fastcvrl-train``, installed by pip) and a Python form
(``python -m fastcvrl.train`` or ``python fastcvrl/train.py``). ``prog`` gives the one this process was
started with, so that ``--help``, usage errors and the hints a command prints name what the user can type
again; ``sibling`` names another command in the same spelling (the trainer's closing lines suggest
``fastcvrl-eval`` after ``fastcvrl-train``, ``python -m fastcvrl.eval`` after ``python -m fastcvrl.train``).
"""

from __future__ import annotations

import argparse
import os
import sys

# console script -> module, as setup.cfg installs them
COMMANDS = {
    "fastcvrl-train": "fastcvrl.train",
    "fastcvrl-eval": "fastcvrl.eval",
    "fastcvrl-prepare": "fastcvrl.prepare",
    "fastcvrl-synthetic": "fastcvrl.synthetic",
}


def _started_as_console_script() -> bool:
    """Whether ``sys.argv[0]`` is one of the console scripts (``fastcvrl-train``, or pip's
    ``fastcvrl-train-script.py`` on Windows)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    name = name.removesuffix(".exe").removesuffix("-script.py")
    return name in COMMANDS


def prog(console: str, module: str) -> str:
    """The command as typed: ``console`` when started as that console script, ``python -m module`` when
    started with ``-m``, ``python path/to/script.py`` when started as a script, ``console`` otherwise (an
    embedding program, tests calling ``main``)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name.removesuffix(".exe").removesuffix("-script.py") == console:
        return console
    orig = list(getattr(sys, "orig_argv", []))  # the interpreter's own command line (Python >= 3.10)
    if "-m" in orig[1:]:
        i = orig.index("-m", 1)
        if i + 1 < len(orig) and orig[i + 1] in (module, module + ".__main__"):
            return f"python -m {module}"
    if name.endswith(".py") and name != "__main__.py" and os.path.splitext(name)[0] == module.split(".")[-1]:
        return f"python {sys.argv[0]}"
    return console


def sibling(console: str) -> str:
    """Another command (``console``, a key of ``COMMANDS``) in the spelling this process was started with:
    the console script after a console script, else its ``python -m`` form."""
    return console if _started_as_console_script() else f"python -m {COMMANDS[console]}"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written, and each option's default appended to its help ("(default: 2)") unless
    the help already says it, or the default is None, False or suppressed (nothing to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default" in text.lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == ""
            or not action.option_strings
        ):
            return text
        if isinstance(default, (list, tuple)):
            shown = " ".join(str(v) for v in default)
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})" if text else f"default: {shown}"
