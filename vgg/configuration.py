"""The one configuration system of every command: a dataclass (``config.Config`` for train.py,
``config.EvalConfig`` for evaluate.py, ``config.PredictConfig`` for predict.py, and in the
vgg package the commands' own: ``ExportConfig``, ``PlotConfig``, ``ResultsConfig``,
``SummaryConfig``) is the whole configuration; its fields become ``--flags``, a YAML file
(``yaml.safe_load``) can override them, and every value is checked against the field's type
and declared choices. Precedence: dataclass defaults < ``base`` dict (e.g. a resumed run's
saved config) < ``--config file.yaml`` < ``--key value``.

Flags are spelled the same way in every command, with underscores or dashes (``--batch_size``
= ``--batch-size``): booleans ``--flip`` (true), ``--no-flip`` or ``--flip true|false``;
list and tuple fields take space- or comma-separated values (``--scale 256 384`` =
``--scale 256,384``, ``--train_scale 256,512``); ``none`` sets an optional field to None.
Choices of text fields are case-insensitive (``--dataset cifar10`` is ``Cifar10``). A
flag argparse cannot read is a ConfigError too (one paragraph, exit code 2).

A field declared with :func:`positional` is also given bare on the command line
(``predict.py cat.jpg dog.png``), as written (never split at commas), before, after or
between the flags; it must end up with a value, from there or from ``--config``.

Declare choices next to the field: ``field(default="sgd", metadata={"choices": ("sgd",
"adamw")})``; ``choices`` may be a zero-argument callable, evaluated only when checked, so a
heavy import (the dataset registry) happens only when needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import re
import sys
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from vgg.atomic import replace_atomically
from vgg.errors import UserError, short_repr


class ConfigError(UserError, ValueError):
    """A configuration value, key or file a user has to fix."""


def positional(metavar: str, default: Any = None, help: str = "") -> Any:
    """A field that is also the command's bare argument, shown as ``metavar``: a list field
    takes any number (``IMAGE [IMAGE ...]``), another field one. ``default`` (a list is
    copied per instance) applies when neither the command line nor ``--config`` gives one;
    without a default, one of them must. ``help``: where the field's comment is too short."""
    metadata = {"positional": True, "metavar": metavar, "help": help}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _positionals(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("positional")]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _choices(f: dataclasses.Field) -> tuple | None:
    choices = f.metadata.get("choices")
    if callable(choices):
        choices = choices()
    return tuple(choices) if choices is not None else None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


NULLS = ("none", "null", "~")


def _parse_text(text: str) -> Any:
    """A command-line value as YAML would read it, plus "a,b" as a list."""
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):  # "[[[[..." nested too deep: kept as text
        return text
    if isinstance(value, str) and "," in value:
        return [_parse_text(part.strip()) for part in value.split(",")]
    return value


def _sequence_args(tp: Any) -> tuple | None:
    """The item types of a list or tuple field (``list[str] | None`` -> ``(str,)``), or None
    for any other field."""
    for candidate in (tp, *typing.get_args(tp)):
        if typing.get_origin(candidate) in (list, tuple):
            return typing.get_args(candidate)
    return None


def _from_text(value: str | list[str], tp: Any) -> Any:
    """Command-line text as a value for a field of type ``tp``: YAML scalars ("1e-2" ->
    0.01, "true"), "none" -> None for optional fields, and for list/tuple fields the
    space-separated values (``nargs="+"``), each split at commas."""
    texts = [value] if isinstance(value, str) else list(value)
    optional = type(None) in typing.get_args(tp)
    if optional and len(texts) == 1 and texts[0].lower() in NULLS:
        return None
    items = _sequence_args(tp)
    if items is None:
        text = " ".join(texts)
        return text if tp is str or str in typing.get_args(tp) else _parse_text(text)
    parts = [part.strip() for text in texts for part in text.split(",") if part.strip()]
    text_items = items[:1] == (str,) or items[:1] == (Path,)  # paths: never YAML-parsed
    return [part if text_items else _parse_text(part) for part in parts]


def coerce(name: str, value: Any, tp: Any, from_text: bool = False) -> Any:
    """``value`` as type ``tp``, or ConfigError saying what the field takes. Text from the
    command line is parsed first ("1e-2" -> 0.01, "none" -> None, "256,512" -> [256, 512])."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if from_text and isinstance(value, (str, list)):
        value = _from_text(value, tp)
    def wrong() -> ConfigError:  # built only on failure: a valid value is never repr()'d
        return ConfigError(f"--{name}: expected {_type_name(tp)}, got {short_repr(value)} "
                           f"({type(value).__name__})")

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(name, value, arg)
            except ConfigError:
                pass
        raise wrong()
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"--{name}: expected {len(args)} values "
                                  f"({_type_name(tp)}), got {short_repr(list(value))}")
            items = [coerce(name, v, a) for v, a in zip(value, args, strict=True)]
        else:
            items = [coerce(name, v, args[0]) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise wrong()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-2" as a string
            try:
                return float(value)
            except ValueError:
                raise wrong() from None
        raise wrong()
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong()
    if tp is Any:
        return value
    raise ConfigError(f"--{name}: unsupported field type {_type_name(tp)}")


def _unknown(keys: Sequence[str], cls: type, where: str) -> ConfigError:
    valid = [f.name for f in dataclasses.fields(cls)]
    hints = []
    for key in keys:
        close = difflib.get_close_matches(key, valid, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ConfigError(f"unknown configuration key{'s' if len(keys) > 1 else ''} in {where}: "
                       f"{', '.join(hints)}. Valid keys: {', '.join(valid)}")


def _unknown_flags(flags: Sequence[str], parser: argparse.ArgumentParser) -> ConfigError:
    """Unknown command-line flags, each with the closest valid one (in either spelling)."""
    valid = [s for action in parser._actions for s in action.option_strings]
    hints = []
    for flag in flags:
        close = difflib.get_close_matches(flag, valid, n=1)
        hints.append(flag + (f" (did you mean {close[0]}?)" if close else ""))
    return ConfigError(f"unknown flag{'s' if len(flags) > 1 else ''} {', '.join(hints)}; "
                       f"{parser.prog} --help lists every option")


def apply(config: Any, values: Mapping[str, Any], where: str, from_text: bool = False) -> Any:
    """A copy of ``config`` with ``values`` applied and checked."""
    cls = type(config)
    names = {f.name: f for f in dataclasses.fields(cls)}
    not_text = [short_repr(k) for k in values if not isinstance(k, str)]
    if not_text:
        raise ConfigError(f"configuration keys in {where} must be option names (text), got "
                          f"{', '.join(not_text[:5])}: write them as key: value, e.g. lr: 0.01")
    unknown = [k for k in values if k not in names]
    if unknown:
        raise _unknown(unknown, cls, where)
    hints = _hints(cls)
    changes = {k: coerce(k, v, hints[k], from_text) for k, v in values.items()}
    return dataclasses.replace(config, **changes)


def check_choices(config: Any) -> Any:
    """``config`` with every choice field checked and spelled as declared: text matches
    case-insensitively (``--dataset cifar10`` -> ``Cifar10``)."""
    canonical = {}
    for f in dataclasses.fields(config):
        choices = _choices(f)
        value = getattr(config, f.name)
        if choices is None or value is None or value in choices:
            continue
        by_lower = {c.lower(): c for c in choices if isinstance(c, str)}
        if isinstance(value, str) and value.lower() in by_lower:
            canonical[f.name] = by_lower[value.lower()]
            continue
        raise ConfigError(f"--{f.name} {value}: unknown {f.name.replace('_', ' ')}; valid choices: "
                          f"{', '.join(map(str, choices))}")
    return dataclasses.replace(config, **canonical)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain YAML/``weights_only``-safe values: tuples become lists."""
    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v
    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in the YAML file ``path``. Only a regular file is read: a FIFO would
    block and a device such as /dev/zero never ends."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a directory; give a YAML file (key: value per "
                          "line), e.g. configs/quickstart_digits.yaml or <run>/config.yaml")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"--config {path} is not a regular file (a FIFO, socket or device): "
                          "write the YAML to a file and give its path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text ({error.reason} at byte "
                          f"{error.start}): is it a YAML file?") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests its values too deeply to be a "
                          "configuration (a key: value per line)") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value, "
                          f"got {type(data).__name__}")
    return data


def save_yaml(values: Mapping[str, Any], path: str | Path) -> None:
    """Write through a temporary file and an atomic rename: a kill never leaves a run
    directory with half a config."""
    with replace_atomically(path) as f:
        f.write(yaml.safe_dump(dict(values), sort_keys=False))


def to_yaml(config: Any) -> str:
    """The resolved configuration as ``--print_config`` shows it (loadable by ``--config``)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field's line in the class source."""
    pattern = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.*)$")
    return {m[1]: m[2].strip() for line in _source_lines(cls) if (m := pattern.match(line))}


def field_sections(cls: type) -> dict[str, str]:
    """The section of each field: the last ``# --- data ---`` line above it in the class
    source ("options" before the first)."""
    sections, section = {}, "options"
    for line in _source_lines(cls):
        if heading := re.match(r"^\s+# --- (.+) ---\s*$", line):
            section = heading[1]
        elif field := re.match(r"^\s+(\w+)\s*:", line):
            sections[field[1]] = section
    return sections


def _source_lines(cls: type) -> list[str]:
    try:
        return inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return []


class _Boolean(argparse.Action):
    """A boolean field's flag: alone it means true (``--deterministic``), with a value that
    value (``--deterministic false``). Its ``--no-deterministic`` (false) is a flag of its own
    that takes no value, so that a bare argument after it stays one (``--no-flip cat.jpg``)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs="?", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        bare = [a.metavar for a in parser._get_positional_actions()]
        if bare and values is not None and not isinstance(_parse_text(values), bool) \
                and values.lower() not in NULLS:
            # "predict.py --flip cat.jpg": the flag took the image as its value
            raise argparse.ArgumentError(self, f"{values!r} is not true or false; a flag alone "
                                               f"must come after {bare[0]} (or write "
                                               f"{option_string} true)")
        setattr(namespace, self.dest, "true" if values is None else values)


class _Parser(argparse.ArgumentParser):
    """Its failures (a flag without its value, a value for a ``--no-`` flag) are
    ConfigErrors: the house one-paragraph error, exit code 2, not argparse's usage dump."""

    def error(self, message: str) -> typing.NoReturn:
        # "argument --x/--x-y/--no-x: ..." names the flag by its first spelling
        message = re.sub(r"^argument (--[\w-]+)(/--[\w-]+)*: ", r"\1: ", message)
        raise ConfigError(f"{message}; {self.prog} --help lists every option")


def _spellings(name: str) -> list[str]:
    """``--batch_size`` and its dash alias ``--batch-size``."""
    return [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])


class _Help(argparse.RawDescriptionHelpFormatter):
    """Each option once, by its first spelling and its metavar (the dash alias and
    ``--no-`` spelling are said once, in the epilog); the description keeps its layout."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:  # a positional field: its metavar
            return super()._format_action_invocation(action)
        if action.nargs == 0:  # -h, --help; --print_config
            return ", ".join(s for s in action.option_strings if "-" not in s[2:])
        if isinstance(action, _Boolean):
            return f"{action.option_strings[0]} [true|false]"
        return f"{action.option_strings[0]} {action.metavar}"


def _metavar(f: dataclasses.Field, tp: Any) -> str:
    """How a field's value is written: the field's ``metavar`` metadata (``SMIN,SMAX``), its
    choices, or its type (``N``, ``X``, ``X,X`` for a pair, ``N [N ...]`` for a list)."""
    if "metavar" in f.metadata:
        return f.metadata["metavar"]
    choices = f.metadata.get("choices")
    if choices is not None:
        return "NAME" if callable(choices) else (
            "{" + ",".join(str(c) for c in choices if c is not None) + "}")

    def scalar(item: Any) -> str:
        return {int: "N", float: "X"}.get(item, f.name.upper())

    items = _sequence_args(tp)
    if items is None:
        return scalar(next((a for a in typing.get_args(tp) if a is not type(None)), tp))
    if list not in (typing.get_origin(a) for a in (tp, *typing.get_args(tp))) and \
            Ellipsis not in items:  # a tuple of fixed length
        return ",".join(map(scalar, items))
    return f"{scalar(items[0])} [{scalar(items[0])} ...]"


def _shown(value: Any) -> str:
    """A default as it would be typed on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(_shown, value))
    return str(value)


def help_text(doc: str) -> str:
    """What ``--help`` says first: a module docstring's opening paragraph and the indented
    examples that follow it (the rest of the docstring is for readers of the code)."""
    paragraphs = doc.strip().split("\n\n")
    examples = [p for p in paragraphs[1:2] if p.startswith(" ")]
    return "\n\n".join([paragraphs[0], *examples])


SPELLING = textwrap.fill(
    "Flags take underscores or dashes (--batch_size = --batch-size). A boolean flag alone "
    "means true, --no-FLAG false. Lists are space- or comma-separated; none sets an optional "
    "value to None. --config FILE.yaml sets any option; flags given with it override the "
    "file.", width=79)


def _usage(cls: type) -> str:
    """The usage line: the options, then the positional fields (``[X ...]`` where the
    field has a default, so that the command runs without them)."""
    hints, defaults = _hints(cls), cls()
    words = ["%(prog)s [--config FILE.yaml] [--OPTION VALUE ...]"]
    for f in _positionals(cls):
        metavar = f.metadata["metavar"]
        optional = getattr(defaults, f.name) not in (None, [])
        if _sequence_args(hints[f.name]) is None:
            words.append(f"[{metavar}]" if optional else metavar)
        else:
            words.append(f"[{metavar} ...]" if optional else f"{metavar} [{metavar} ...]")
    return " ".join(words)


def build_parser(cls: type, description: str = "", prog: str | None = None
                 ) -> argparse.ArgumentParser:
    """``--config``, ``--print_config`` and one ``--<field>`` per dataclass field (dash
    spellings too: ``--batch-size``), or a bare argument for a :func:`positional` field, in
    groups by the class's ``# --- section ---`` comments; a field's help is its one-line
    comment in the source, else its ``help`` metadata (an option shared by several
    commands). ``description`` is the tool's module docstring (its summary and examples
    open ``--help``)."""
    parser = _Parser(prog=prog, description=help_text(description), epilog=SPELLING,
                     usage=_usage(cls), allow_abbrev=False, argument_default=argparse.SUPPRESS,
                     formatter_class=_Help)
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of key: value "
                        "options (a run's config.yaml, a preset in configs/)")
    parser.add_argument(*_spellings("print_config"), action="store_true",
                        help="print the resolved configuration as YAML and exit")
    hints = _hints(cls)
    defaults = cls()
    comments = field_comments(cls)
    sections = field_sections(cls)
    groups: dict[str, Any] = {"options": parser}  # fields before any section: with --config
    for f in dataclasses.fields(cls):
        section = sections.get(f.name, "options")
        if section not in groups:
            groups[section] = parser.add_argument_group(section)
        tp = hints[f.name]
        text = comments.get(f.name) or f.metadata.get("help", "")
        default = getattr(defaults, f.name)
        if f.metadata.get("positional"):
            if default not in (None, []):
                text += f" (default: {_shown(default)})"
            groups[section].add_argument(
                f.name, metavar=_metavar(f, tp), help=text.replace("%", "%%"),
                nargs="?" if _sequence_args(tp) is None else "*")
            continue
        boolean = tp is bool or tp == bool | None
        flag = ({"action": _Boolean} if boolean else
                {"nargs": "+" if _sequence_args(tp) is not None else None})
        groups[section].add_argument(
            *_spellings(f.name), dest=f.name, metavar=_metavar(f, tp), **flag,
            # argparse %-formats help: a comment's "10%" must reach it as "10%%"
            help=f"{text} (default: {_shown(default)})".replace("%", "%%"))
        if boolean:  # said once, in the epilog
            groups[section].add_argument(
                *(f"--no-{s[2:]}" for s in _spellings(f.name)), dest=f.name,
                action="store_const", const="false", help=argparse.SUPPRESS)
    return parser


def parse_args(cls: type, argv: Sequence[str] | None,
               base: Mapping[str, Any] | Any | None = None,
               description: str = "", prog: str | None = None
               ) -> tuple[Any, argparse.Namespace]:
    """Resolve the configuration from ``argv``. ``base`` (a dict or a callable taking the
    flag values and returning one, or None) sits between the defaults and the YAML file.
    Returns the checked config and the namespace (for ``print_config``)."""
    parser = build_parser(cls, description, prog)
    # Intermixed: bare arguments may stand before, after and between the flags.
    args, rest = parser.parse_known_intermixed_args(argv)
    usage = parser.format_usage().strip()[len("usage: "):]
    if rest:
        unknown = [r.split("=")[0] for r in rest if r.startswith("--")]
        if unknown:
            raise _unknown_flags(unknown, parser)
        words = list(sys.argv[1:] if argv is None else argv)
        for flag, value in zip(words, words[1:], strict=False):
            if flag.startswith("--no-") and value == rest[0]:
                raise ConfigError(f"{flag} takes no value (it means false; --{flag[5:]} "
                                  f"{value} sets one)")
        raise ConfigError(f"unexpected command-line arguments {rest}; " + (
            f"usage: {usage}" if _positionals(cls) else "every option is --key value"))
    bare_names = [f.name for f in _positionals(cls)]
    flags = {k: v for k, v in vars(args).items()
             if k not in ("config", "print_config", *bare_names)}
    # Bare arguments are taken as written: a file name is never YAML-parsed or split at ",".
    bare = {k: v for k, v in vars(args).items() if k in bare_names}

    def given(config: Any) -> Any:
        return apply(apply(config, flags, "command-line flags", from_text=True), bare,
                     "the command line")

    config = cls()
    # Apply flags once first so that ``base`` may depend on them (e.g. --resume).
    flagged = given(config)
    if callable(base):
        base = base(flagged)
    if base:
        config = apply(config, base, "the base configuration")
    if getattr(args, "config", None):
        config = apply(config, load_yaml(args.config), str(args.config))
    config = given(config)
    missing = [f for f in _positionals(cls) if getattr(config, f.name) in (None, [])]
    if missing:
        f = missing[0]
        raise ConfigError(f"{f.metadata['metavar']} is missing: give it on the command line "
                          f"({usage}) or as {f.name}: in --config FILE.yaml")
    config = check_choices(config)
    if hasattr(config, "validate"):
        config.validate()
    return config, args


def command_config(cls: type, argv: Sequence[str] | None, description: str, prog: str
                   ) -> Any | None:
    """What a command runs with: the configuration :func:`parse_args` resolves from ``argv``,
    or None when ``--print_config`` asked only to see it (printed here, as YAML that
    ``--config`` reads back)."""
    config, args = parse_args(cls, argv, description=description, prog=prog)
    if getattr(args, "print_config", False):
        print(to_yaml(config), end="")
        return None
    return config
