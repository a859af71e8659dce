"""cli - one command-line convention for every script, generated from a config dataclass.

Not a reading step. `add_dataclass_flags` turns a dataclass whose fields carry a trailing `# comment`
into flags: both spellings (--num_layers, --num-layers), the comment as help, a bool as --flag /
--no-flag, a list as one or more values. `one_line(err)` is the one line every error is printed as.
Tests: tests/test_01_data.py, tests/test_house.py (every script's flags).
"""
import argparse
import inspect
import re
from dataclasses import MISSING, fields


def field_comments(cls):
    """{field: its trailing '# comment'} from a dataclass's source: the --help text of each flag."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    found = (re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line) for line in lines)
    return {m.group(1): m.group(2).strip() for m in found if m}


class BoolFlag(argparse.BooleanOptionalAction):
    """--flag / --no-flag where only the spellings this action added are negative: argparse's own treats
    every "--no-" option as negative, so --no-eval of a field no_eval would mean False."""

    def __init__(self, option_strings, dest, **kwargs):
        self.negative = {"--no-" + s[2:] for s in option_strings if s.startswith("--")}
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.option_strings:
            setattr(namespace, self.dest, option_string not in self.negative)


def add_dataclass_flags(parser, cls, defaults=None, choices=None, *, skip=(), only_given=False):
    """One flag per field of the dataclass `cls`, added to `parser` (a parser or an argument group).
    defaults: {field: value} or an instance of cls, used instead of the dataclass defaults; choices:
    {field: allowed values} (other names ignored); skip: fields without a flag; only_given: every flag
    parses to None unless given (the help still shows the default)."""
    helps = field_comments(cls)
    if defaults is not None and not isinstance(defaults, dict):
        defaults = {f.name: getattr(defaults, f.name) for f in fields(cls)}
    defaults, choices = defaults or {}, choices or {}
    for f in fields(cls):
        if f.name in skip:
            continue
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not MISSING:
            default = f.default
        else:
            default = f.default_factory() if f.default_factory is not MISSING else None
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        text = f"{helps.get(f.name, f.name.replace('_', ' '))} (default: {default!r})"
        kw = dict(dest=f.name, help=text.replace("%", "%%"))  # argparse %-formats help texts
        if f.name in choices:
            kw["choices"] = choices[f.name]
        if isinstance(default, bool):
            # Made with default None, then set: Python 3.9's BooleanOptionalAction would otherwise
            # append a second "(default: ...)" to the help.
            action = parser.add_argument(*names, action=BoolFlag, default=None, **kw)
            action.default = None if only_given else default
        elif isinstance(default, list):
            kind = type(default[0]) if default else str
            parser.add_argument(*names, nargs="+", type=kind, metavar=f.name.upper(),
                                default=None if only_given else list(default), **kw)
        else:
            parser.add_argument(*names, type=str if default is None else type(default),
                                default=None if only_given else default, **kw)


def without_removed(stored, removed, where):
    """A stored config dict without the fields of `removed` ({field: its default then}); a removed knob
    (docs/ablations.md) holding another value than its old default is a ValueError."""
    for name, default in removed.items():
        if stored.get(name, default) != default:
            raise ValueError(f"{where} was trained with {name}={stored[name]!r}, a knob removed after commit "
                             f"f51d69b (docs/ablations.md, \"Removed knobs\"): use that commit's code for it")
    return {k: v for k, v in stored.items() if k not in removed}


def one_line(err):
    """The first line of an exception's message, or its type's name (PyTorch's errors span many lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
