"""Command-line overrides that are checked.

``python -m monai.bundle run --config_file ... --epoch 3`` adds a new config id ``epoch`` and runs
with the default ``epochs``, without a word; ``--epoch_length null`` passes the string ``"null"``
and ``--epoch_length None`` is dropped (MONAI's command line only understands ``'$None'``).
:func:`check_cli_overrides`, the first ``initialize`` expression of every bundle, reads the
command line of the ``monai.bundle`` run that is executing, refuses an override of an id that no
config file of the run defines (naming the closest known ids), and makes ``null`` / ``None``
mean null. Outside that command line (tests, ``ConfigWorkflow`` in Python) it does nothing.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
import sys
from collections.abc import Iterable

__all__ = ["UnknownOverrideError", "check_cli_overrides", "cli_overrides", "config_ids", "choose"]

# arguments of `monai.bundle run` itself, not config ids
RUN_ARGUMENTS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking",
                 "args_file", "workflow_name", "workflow_type", "properties_path"}
NULLS = {"null", "none", "None", "~"}


class UnknownOverrideError(ValueError):
    """A command-line override names an id that no config file defines."""


def _is_bundle_cli(argv: list[str]) -> bool:
    return bool(argv) and os.path.normpath(argv[0]).endswith(os.path.join("monai", "bundle", "__main__.py")) \
        and len(argv) > 1 and argv[1] == "run"


def cli_overrides(argv: list[str]) -> dict[str, str | None]:
    """``{name: raw value}`` of the ``--name value`` / ``--name=value`` options after ``run``
    (a flag without a value maps to None)."""
    out: dict[str, str | None] = {}
    args = argv[2:]
    i = 0
    while i < len(args):
        tok = args[i]
        if tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            if not eq:
                if i + 1 < len(args) and not args[i + 1].startswith("--"):
                    value, i = args[i + 1], i + 1
                else:
                    value = None
            out[name.replace("-", "_") if name in ("config-file", "meta-file", "logging-file") else name] = value
        i += 1
    return out


def _files(value: str | None) -> list[str]:
    if not value:
        return []
    text = value.strip()
    if text.startswith(("[", "(")):
        return [str(f) for f in ast.literal_eval(text)]
    return [f.strip() for f in text.split(",") if f.strip()]


def _flatten(obj, prefix: str = "") -> Iterable[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            name = f"{prefix}{k}"
            yield name
            yield from _flatten(v, f"{name}#")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            name = f"{prefix}{i}"
            yield name
            yield from _flatten(v, f"{name}#")


def config_ids(files: Iterable[str]) -> set[str]:
    """Every id (``a``, ``a#b``, ``a#0#c``) that the config files define, plus the ids MONAI's
    experiment tracking adds."""
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    ids: set[str] = set()
    for f in files:
        ids.update(_flatten(ConfigParser.load_config_file(f)))
    for settings in DEFAULT_EXP_MGMT_SETTINGS.values():
        ids.update(settings["configs"])
    return ids


def caller_of_type(cls):
    """The nearest ``self`` of type ``cls`` on the call stack: how a config component reaches the
    ``ConfigWorkflow`` / ``ConfigParser`` that is instantiating it (it has no other handle)."""
    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, cls):
            return candidate
        frame = frame.f_back
    return None


def _running_workflow():
    """The ``ConfigWorkflow`` whose ``initialize`` is evaluating this call."""
    from monai.bundle import ConfigWorkflow

    return caller_of_type(ConfigWorkflow)


def check_cli_overrides(argv: list[str] | None = None) -> dict[str, str | None]:
    """Check the overrides of the running ``python -m monai.bundle run`` command (see the module
    docstring); returns them. Raises :class:`UnknownOverrideError` naming the unknown id and the
    closest known ones."""
    argv = list(sys.argv if argv is None else argv)
    if not _is_bundle_cli(argv):
        return {}
    given = cli_overrides(argv)
    files = _files(given.get("config_file"))
    if not files:
        return given
    known = config_ids(files)
    meta = given.get("meta_file")
    meta_ids = config_ids([meta]) if meta and os.path.isfile(meta) else set()
    unknown = [k for k in given if k not in RUN_ARGUMENTS and k not in known and k not in meta_ids]
    if unknown:
        lines = []
        for k in unknown:
            roots = sorted({i for i in known if "#" not in i})
            close = difflib.get_close_matches(k, roots, n=3, cutoff=0.6) or difflib.get_close_matches(
                k, sorted(known), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(f'--{c}' for c in close)}?)" if close else ""
            lines.append(f"--{k}: no config of this run defines '{k}'{hint}")
        raise UnknownOverrideError("unknown override(s) on the command line, nothing was run:\n  "
                                   + "\n  ".join(lines) + f"\n(configs: {', '.join(files)})")
    nulls = [k for k, v in given.items() if k not in RUN_ARGUMENTS and (v in NULLS)]
    if nulls:
        workflow = _running_workflow()
        if workflow is None:
            raise ValueError(f"--{nulls[0]} null: pass it as --{nulls[0]} '$None'")
        for k in nulls:
            workflow.parser[k] = None
    return given


def choose(options: dict, value, key: str):
    """``options[value]`` for a choice id (e.g. ``train_volumes`` → datalist file), with an error that
    names ``key`` and lists the allowed values (the command line gives ``7`` or ``"7"``)."""
    for k, v in options.items():
        if str(k) == str(value):
            return v
    allowed = ", ".join(str(k) for k in options)
    raise ValueError(f"`{key}` is {value!r}; allowed values: {allowed}")
