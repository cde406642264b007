"""The documentation's commands and links work.

Every command line in README.md and docs/*.md that runs a tool — ``python tools/<name>.py ...``, also
under ``torchrun`` / ``python -m torch.distributed.run``, and the scripts that pass Hydra overrides on
to ``tools/train.py`` — must name an existing file, and its options must exist:

* argparse tools (``benchmark.py`` with its subcommands, ``convert_checkpoint.py``, ``export.py``,
  ...): every ``--flag`` is an option of the tool's parser (for ``benchmark.py``, of the subcommand's);
* Hydra tools (``train.py``, ``eval.py``, ``infer.py``, ``browse_dataset.py``): every ``key=value``
  names an existing key of the config composed with the group choices given on the same line
  (``model=``, ``dataset=``, ``experiment=``), and every group choice is a file in ``configs/<group>/``.
  ``+key=value``, ``++key=value`` and ``~key`` are accepted unchecked; values are never checked, so
  placeholders (PATH, DIR) and multirun lists (``a,b``) are fine.

Commands are read from shell code blocks (with ``\\`` continuations) and from inline code spans;
comments are skipped. The checker is tested on made-up bad commands, so it can fail. Relative links
between the pages (files and ``#anchors``) must resolve, and the README stays short.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
README = REPO / "README.md"
DOC_FILES = [README, *sorted((REPO / "docs").glob("*.md"))]
README_MAX_BYTES = 12_000

HYDRA_TOOLS = {"train": "train", "eval": "eval", "infer": "infer", "browse_dataset": "browse"}  # tool -> config
HYDRA_FLAGS = {
    "-m",
    "--multirun",
    "--cfg",
    "-c",
    "--resolve",
    "--package",
    "-p",
    "--info",
    "-i",
    "--help",
    "-h",
    "--hydra-help",
}
# scripts that hand their arguments to tools/train.py: path -> positional arguments of their own (dist_train: N)
TRAIN_SCRIPTS = {"scripts/dist_train.sh": 1, "scripts/slurm_train.sh": 0, "scripts/ablation_recurrence.sh": 0}
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "zsh", "console"}
PLACEHOLDERS = {"...", "…"}

TOOL_TOKEN = re.compile(r"^(?:\./)?(?:.*/)?tools/(?P<name>[A-Za-z_][\w-]*)\.py$")
MENTIONS_COMMAND = re.compile(r"tools/\w+\.py|" + "|".join(re.escape(s) for s in TRAIN_SCRIPTS))
OVERRIDE = re.compile(r"^(?P<prefix>\+\+|\+|~)?(?P<key>[A-Za-z_][\w.\-/@]*)(?P<eq>=(?P<value>.*))?$", re.S)
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}


@dataclass(frozen=True)
class Command:
    """One logical command line found in a document: ``where`` is ``file:line``."""

    where: str
    text: str


# --------------------------------------------------------------------------------------------- reading


def commands_in_markdown(text: str, source: str) -> Iterator[Command]:
    """Command lines of shell code blocks (continuations joined, comments dropped) and inline code spans."""
    fence: Optional[Tuple[str, str]] = None  # (marker, language) of the open code block
    prose: List[Tuple[int, str]] = []
    pending: Optional[Tuple[int, str]] = None  # a line ending in a backslash, waiting for its continuation
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        opening = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
        if fence is None:
            if opening:
                yield from _inline_commands(prose, source)
                prose = []
                fence = (opening.group(1), opening.group(2).lower())
            else:
                prose.append((number, line))
            continue
        marker, language = fence
        if stripped.startswith(marker) and not stripped.strip(marker[0]):
            fence, pending = None, None
            continue
        if language not in SHELL_LANGUAGES:
            continue
        if language == "console":  # only prompt lines are commands, the rest is output
            if not stripped.startswith("$ ") and pending is None:
                continue
            stripped = stripped[2:] if stripped.startswith("$ ") else stripped
        if pending is not None:
            start, stripped = pending[0], pending[1] + " " + stripped
        else:
            start = number
        if stripped.endswith("\\") and not stripped.endswith("\\\\"):
            pending = (start, stripped[:-1].rstrip())
            continue
        pending = None
        if stripped and not stripped.startswith("#"):
            yield Command(f"{source}:{start}", stripped)
    yield from _inline_commands(prose, source)


def _inline_commands(lines: List[Tuple[int, str]], source: str) -> Iterator[Command]:
    """Inline code spans of a run of prose lines (a span may wrap onto the next line)."""
    if not lines:
        return
    text = "\n".join(line for _, line in lines)
    starts = [0]
    for _, line in lines:
        starts.append(starts[-1] + len(line) + 1)
    for match in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", text, re.S):
        offset = match.start()
        index = max(i for i, s in enumerate(starts[:-1]) if s <= offset)
        yield Command(f"{source}:{lines[index][0]}", " ".join(match.group(2).split()))


def strip_comment(text: str) -> str:
    """The line without its shell comment: a ``#`` that starts a word, outside quotes."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text


def split_shell(text: str) -> List[List[str]]:
    """Simple commands of a shell line: words, split at ``&&``, ``|``, ``;``; redirections and comments dropped."""
    lexer = shlex.shlex(strip_comment(text), posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: List[List[str]] = [[]]
    tokens = list(lexer)
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
            continue
        if token in SHELL_OPERATORS:
            commands.append([])
        elif set(token) <= set("<>&") and any(c in token for c in "<>"):  # redirection: drop it and its target
            if commands[-1] and commands[-1][-1].isdigit():
                commands[-1].pop()
            skip_next = True
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


@dataclass(frozen=True)
class ToolCall:
    where: str
    text: str
    tool: str  # name of tools/<tool>.py
    path: str  # the file as written (tools/x.py or a scripts/ wrapper)
    args: Tuple[str, ...]


def tool_calls(command: Command) -> Iterator[ToolCall]:
    """The tool invocations in one command line (none when it runs no tool)."""
    if not MENTIONS_COMMAND.search(command.text):
        return
    try:
        simple_commands = split_shell(command.text)
    except ValueError:  # unbalanced quotes: report instead of guessing
        yield ToolCall(command.where, command.text, "", "", ("<unparsable shell line>",))
        return
    for words in simple_commands:
        while words and re.match(r"^[A-Za-z_]\w*=", words[0]):  # VAR=value prefixes
            words = words[1:]
        if not words:
            continue
        launcher = Path(words[0]).name
        rest = words[1:]
        script = words[0][2:] if words[0].startswith("./") else words[0]
        if script in TRAIN_SCRIPTS:
            yield ToolCall(command.where, command.text, "train", script, tuple(rest[TRAIN_SCRIPTS[script] :]))
            continue
        if re.fullmatch(r"python(3(\.\d+)?)?", launcher):
            if rest[:2] == ["-m", "torch.distributed.run"]:
                rest = rest[2:]
            elif rest and rest[0] == "-m":
                continue  # python -m pytest, ...: not a tool
        elif launcher != "torchrun":
            continue
        for i, word in enumerate(rest):  # the first tools/*.py word; launcher options come before it
            match = TOOL_TOKEN.match(word)
            if match:
                yield ToolCall(command.where, command.text, match.group("name"), word, tuple(rest[i + 1 :]))
                break


def documented_tool_calls(paths: Sequence[Path]) -> List[ToolCall]:
    calls = []
    for path in paths:
        source = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
        for command in commands_in_markdown(path.read_text(encoding="utf-8"), source):
            calls.extend(tool_calls(command))
    return calls


# -------------------------------------------------------------------------------------------- checking


@functools.lru_cache(maxsize=None)
def _tool_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_docs_checked_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _ParserCaptured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


@functools.lru_cache(maxsize=None)
def _tool_parser(name: str, subcommand: Optional[str] = None) -> argparse.ArgumentParser:
    """The argparse parser of tools/<name>.py (for benchmark.py: the subcommand's); KeyError if no such subcommand."""
    module = _tool_module(name)
    if hasattr(module, "build_parser"):
        try:
            parser = module.build_parser([subcommand] if subcommand else None)
        except SystemExit as exc:  # benchmark.py: a subcommand's module is missing
            raise KeyError(f"{subcommand}: {exc}") from None
    elif hasattr(module, "parse_args"):
        original = argparse.ArgumentParser.parse_args

        def capture(self, *args, **kwargs):
            raise _ParserCaptured(self)

        argparse.ArgumentParser.parse_args = capture
        try:
            module.parse_args([])
        except _ParserCaptured as captured:
            parser = captured.parser
        else:
            raise AssertionError(f"tools/{name}.py: parse_args() did not call ArgumentParser.parse_args")
        finally:
            argparse.ArgumentParser.parse_args = original
    else:
        raise AssertionError(f"tools/{name}.py has neither build_parser() nor parse_args() to check options against")
    if subcommand is None:
        return parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if subcommand in action.choices:
                return action.choices[subcommand]
            raise KeyError(f"{subcommand!r} (it has: {', '.join(action.choices)})")
    raise KeyError(f"{subcommand!r}: tools/{name}.py has no subcommands")


def _has_subcommands(name: str) -> bool:
    return hasattr(_tool_module(name), "build_parser")


def _unbracket(word: str) -> str:
    """``[--out`` / ``[key=value]`` / ``...]`` (optional parts of a usage line) without their brackets;
    ``key=[1,2]`` (a list value) as it is."""
    if word.startswith("["):
        word = word[1:]
    while word.endswith("]") and word.count("]") > word.count("["):
        word = word[:-1]
    return word


def _flag_name(word: str) -> Optional[str]:
    word = _unbracket(word)
    if re.match(r"^--?[A-Za-z]", word):
        return word.split("=", 1)[0]
    return None


def argparse_problems(call: ToolCall) -> List[str]:
    args = list(call.args)
    subcommand = None
    if _has_subcommands(call.tool):
        positionals = [a for a in args if not a.startswith("-")]
        if not positionals:
            return [f"tools/{call.tool}.py needs a subcommand"]
        subcommand = positionals[0]
        args = args[args.index(subcommand) + 1 :]
    try:
        parser = _tool_parser(call.tool, subcommand)
    except KeyError as exc:
        return [f"tools/{call.tool}.py has no subcommand {exc.args[0]}"]
    known = parser._option_string_actions
    where = f"tools/{call.tool}.py" + (f" {subcommand}" if subcommand else "")
    return [f"{where} has no option {flag}" for flag in map(_flag_name, args) if flag and flag not in known]


@functools.lru_cache(maxsize=None)
def _composed(config_name: str, groups: Tuple[str, ...]) -> Dict:
    """The config of one tool with the given group choices, as plain containers (interpolations unresolved)."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(groups), return_hydra_config=True)
    return OmegaConf.to_container(cfg, resolve=False)


def _has_key(config: Dict, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def hydra_problems(call: ToolCall) -> List[str]:
    config_name = HYDRA_TOOLS[call.tool]
    group_names = {p.name for p in CONFIGS.iterdir() if p.is_dir()}
    problems, groups, keys = [], [], []
    for word in map(_unbracket, call.args):
        if word in PLACEHOLDERS:
            continue
        if word.startswith("-") and "=" not in word:
            if word not in HYDRA_FLAGS:
                problems.append(f"tools/{call.tool}.py (Hydra) has no flag {word}")
            continue
        match = OVERRIDE.match(word)
        if not match or (match.group("eq") is None and match.group("prefix") != "~"):
            problems.append(f"{word!r} is not a Hydra override (key=value, +key=value, ~key)")
            continue
        key, prefix = match.group("key"), match.group("prefix")
        if prefix:  # adding (+, ++) or deleting (~): Hydra decides
            continue
        if key in group_names:
            options = match.group("value").split(",")
            for option in options:
                if option != "null" and not (CONFIGS / key / f"{option}.yaml").is_file():
                    problems.append(f"{key}={option}: configs/{key}/{option}.yaml does not exist")
            groups.append(f"{key}={options[0]}")
        else:
            keys.append(key)
    if problems:
        return problems
    try:
        config = _composed(config_name, tuple(groups))
    except Exception as exc:  # an override Hydra rejects (e.g. a group the config does not have)
        return [f"configs/{config_name}.yaml with {' '.join(groups) or 'no group choices'}: {exc}"]
    return [
        f"configs/{config_name}.yaml" + (f" with {' '.join(groups)}" if groups else "") + f" has no key {key}"
        for key in keys
        if not _has_key(config, key)
    ]


def problems_of(call: ToolCall) -> List[str]:
    if not call.tool:
        return list(call.args)
    if call.path in TRAIN_SCRIPTS and not (REPO / call.path).is_file():
        return [f"{call.path} does not exist"]
    if not (REPO / "tools" / f"{call.tool}.py").is_file():
        return [f"tools/{call.tool}.py does not exist"]
    if call.tool in HYDRA_TOOLS:
        return hydra_problems(call)
    return argparse_problems(call)


def check(paths: Sequence[Path]) -> List[str]:
    """One line per problem: ``file:line: problem`` followed by the command."""
    report = []
    for call in documented_tool_calls(paths):
        for problem in problems_of(call):
            report.append(f"{call.where}: {problem}\n    {call.text}")
    return report


# ----------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_documented_commands_name_existing_tools_options_and_keys(doc):
    problems = check([doc])
    assert not problems, "commands in the documentation that would fail:\n" + "\n".join(problems)


def test_docs_hold_tool_commands():
    """The extraction finds what it should: a checker that finds nothing also passes."""
    calls = documented_tool_calls(DOC_FILES)
    tools = {call.tool for call in calls}
    assert {"train", "eval", "infer", "benchmark", "convert_checkpoint", "export"} <= tools
    assert len(calls) > 40


BAD_DOC = """
Prose with an inline command: `torchrun --nproc_per_node=2 tools/eval.py checkpoint=PATH eval.no_such_eval_key=1`.

```bash
python tools/no_such_tool.py --anything
python tools/export.py ckpt.pth --onnx a.onnx --no-such-export-flag
python tools/train.py model=ccnet_tiny \\
    train.no_such_train_key=1      # the bad key is on the continuation line
python tools/train.py model=no_such_model
python tools/benchmark.py no_such_benchmark --threads 2
python tools/benchmark.py cca --no-such-cca-option
scripts/dist_train.sh 4 dataset.no_such_dataset_key=1
# python tools/commented_out_tool.py: a comment, skipped
```

```text
python tools/in_a_text_block.py (not a shell block: skipped)
```
"""

GOOD_DOC = """
Run `python tools/train.py model.recurrence=1` or `python tools/eval.py checkpoint=PATH dataset.root=DIR`.

```bash
python tools/train.py -m dataset=folder dataset.root=data/x dataset.num_classes=5 \\
    'dataset.crop_size=[128,128]' model.ccl=false,true train.seed=0,1 work_dir=work_dirs/w  # a comment
python tools/train.py experiment=cityscapes_r101_official train.ohem.enabled=true +train.extra=1 ~train.ccl
python tools/eval.py checkpoint=PATH +model.recurrence=3 eval.scales=[0.75,1.0] formats=[color,overlay]
torchrun --nproc_per_node=4 tools/train.py experiment=ade20k_r101_512_80k ... resume=true
python tools/cityscapes_eval.py --pred p/ --gt g/ [--out m.json]
python tools/benchmark.py cca --threads 2 --repeats 9 && echo done > log.txt
python tools/convert_checkpoint.py --from mmseg a.pth b.pth --align-corners auto
```
"""


def test_checker_reports_bad_commands(tmp_path):
    doc = tmp_path / "bad.md"
    doc.write_text(BAD_DOC, encoding="utf-8")
    report = "\n".join(check([doc]))
    for expected in (
        "tools/no_such_tool.py does not exist",
        "no option --no-such-export-flag",
        "has no key train.no_such_train_key",
        "configs/model/no_such_model.yaml does not exist",
        "no subcommand 'no_such_benchmark'",
        "no option --no-such-cca-option",
        "has no key eval.no_such_eval_key",
        "has no key dataset.no_such_dataset_key",
    ):
        assert expected in report, f"not reported: {expected}\n{report}"
    assert "commented_out_tool" not in report and "in_a_text_block" not in report
    assert "bad.md:7:" in report  # a continued command is reported at its first line


def test_checker_accepts_good_commands(tmp_path):
    doc = tmp_path / "good.md"
    doc.write_text(GOOD_DOC, encoding="utf-8")
    assert len(documented_tool_calls([doc])) == 9
    assert check([doc]) == []


# ---------------------------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set:
    anchors, seen = set(), {}
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.match(r"^\s*(```|~~~)", line):
            in_fence = not in_fence
        elif not in_fence and (m := re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)):
            slug = _slug(m.group(1))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(path: Path) -> Iterator[Tuple[int, str]]:
    in_fence = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if re.match(r"^\s*(```|~~~)", line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line)):
            if not re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                yield number, target


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(doc):
    broken = []
    for number, target in _links(doc):
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            broken.append(f"{doc.name}:{number}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{doc.name}:{number}: {target}: no heading with anchor #{anchor}")
    assert not broken, "\n".join(broken)


def test_readme_is_short():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move details into docs/ (limit {README_MAX_BYTES})"


# Where a documented command may write: the run and output folders, the user's data, absolute paths (a shared
# file system), or a placeholder (DIR, PATH, $VAR). Never the repository root, where a copied example would litter.
OUTPUT_FLAGS = {"--out", "--pt2", "--onnx", "--json", "--output-dir", "--out-dir", "--data-dir", "--root"}
OUTPUT_KEYS = {"output_dir", "work_dir"}
OUTPUT_ROOTS = ("outputs/", "work_dirs/", "data/", "/", "~", "$")


def output_problems(call: ToolCall) -> List[str]:
    """Outputs of one documented call that would land outside the output folders."""
    problems = []
    args = [_unbracket(word) for word in call.args]
    for i, word in enumerate(args):
        flag, _, inline = word.partition("=")
        value = inline if inline else (args[i + 1] if flag in OUTPUT_FLAGS and i + 1 < len(args) else None)
        key = OVERRIDE.match(word)
        if key and key.group("key") in OUTPUT_KEYS and key.group("value"):
            value, flag = key.group("value"), key.group("key")
        elif flag not in OUTPUT_FLAGS:
            continue
        if value and not value.startswith(OUTPUT_ROOTS) and not re.search(r"[A-Z]{3,}", value):
            problems.append(f"{call.where}: {flag} {value} writes outside outputs/ (or work_dirs/, data/)")
    return problems


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_documented_commands_write_under_the_output_folders(doc):
    assert [p for call in documented_tool_calls([doc]) for p in output_problems(call)] == []


def test_the_output_check_catches_the_repository_root():
    call = ToolCall("x.md:1", "", "export", "tools/export.py", ("ck.pth", "--pt2", "ccnet.pt2", "--out=export.json"))
    assert output_problems(call) == [
        "x.md:1: --pt2 ccnet.pt2 writes outside outputs/ (or work_dirs/, data/)",
        "x.md:1: --out export.json writes outside outputs/ (or work_dirs/, data/)",
    ]
    hydra = ToolCall("x.md:1", "", "infer", "tools/infer.py", ("output_dir=masks", "output_dir=outputs/m"))
    assert output_problems(hydra) == ["x.md:1: output_dir masks writes outside outputs/ (or work_dirs/, data/)"]
