"""cli - one command-line convention for every script, generated from a config dataclass.

Not a reading step: nothing in it is SQLDepth. Each numbered script (and helpers/synthetic_world.py) says
what its command line does in a dataclass whose fields carry a trailing `# comment`;
`add_dataclass_flags` turns that dataclass into flags, so all of them follow the same rules:
  * every flag has both spellings, --num_layers and --num-layers;
  * every flag has help text: the field's comment, then "(default: ...)";
  * a bool field is a --flag / --no-flag pair (--no_eval / --no-no_eval for a field named no_eval);
  * a list field takes one or more values (--compare A B C).
`one_line(err)` gives the one line every error message is printed as. It lives in its own file so
that any script can import it without reaching into a step it does not need (02 never reads data,
yet has a command line). Used by 01-07, the unnumbered helpers and helpers/synthetic_world.py.
Tests: tests/test_01_data.py (the helper), tests/test_house.py (every script's flags).
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
    """--flag / --no-flag where the negative spellings are exactly the ones this action added.

    argparse's own action treats every option starting with "--no-" as negative, so for a field
    named no_eval its spelling --no-eval would mean False; here it means True, like --no_eval.
    """

    def __init__(self, option_strings, dest, **kwargs):
        self.negative = {"--no-" + s[2:] for s in option_strings if s.startswith("--")}
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.option_strings:
            setattr(namespace, self.dest, option_string not in self.negative)


def add_dataclass_flags(parser, cls, defaults=None, choices=None, *, skip=(), only_given=False):
    """One flag per field of the dataclass `cls`, added to `parser` (a parser or an argument group).

    Each flag has both spellings --a_b and --a-b (dest "a_b"), the type of its default (str for None)
    and as help the field's trailing `# comment` + "(default: ...)"; a bool is a --flag / --no-flag
    pair, a list takes one or more values. defaults: {field: value} or an instance of cls, shown and
    used instead of the dataclass defaults (a preset's); choices: {field: allowed values} (other names
    are ignored: one dict can serve several dataclasses); skip: fields without a flag; only_given:
    every flag parses to None unless given (the help still shows the default), so a caller can apply
    the given flags over a preset.
    Use: `add_dataclass_flags(parser, Config); cfg = Config(**vars(parser.parse_args(argv)))`.
    """
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
    """A stored config dict without the fields of `removed` ({field: its default then}) that this code
    no longer has. A knob that was measured, lost and removed (docs/ablations.md names the commit that
    had it) is read as absent when it holds its old default; any other value is one error line."""
    for name, default in removed.items():
        if stored.get(name, default) != default:
            raise ValueError(f"{where} was trained with {name}={stored[name]!r}, a knob removed after commit "
                             f"f51d69b (docs/ablations.md, \"Removed knobs\"): use that commit's code for it")
    return {k: v for k, v in stored.items() if k not in removed}


def one_line(err):
    """The first line of an exception's message, or its type's name: every bad input or failure is
    reported as one `error: ...` line (PyTorch's state-dict errors span many lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
