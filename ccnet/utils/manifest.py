"""Which files in an output folder a tool wrote, so that a later run replaces those and nothing else.

Before writing, a run lists every path it will write; :meth:`OutputManifest.claim` refuses the whole run
when one is an input (resolved, so symlinks count) or exists without an earlier run of the same tool
having written it. Each file is appended to ``<folder>/manifest.txt`` (``<tool> <relative path>``) as it
is written, so a crashed run has recorded its files. :class:`OutputFiles` does the same for paths given
one by one (``--out``, ``--onnx``), each in its own folder's manifest.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Set, Union

from ccnet.errors import UserError

MANIFEST_NAME = "manifest.txt"
HEADER = "# ccnet output manifest: the files ccnet's tools wrote into this folder, one '<tool> <path>' per line\n"
SHOWN = 5  # conflicting files named in the message


class OutputConflictError(UserError, ValueError):
    """A run would write over a file it may not replace (an input, another of its outputs, or a file no earlier
    run of the same tool wrote there); nothing was written.
    """


def _read(path: Path) -> Dict[str, Set[str]]:
    """Relative paths per tool recorded in a manifest file; raises ValueError for a foreign file."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")  # any name a file system allows
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ValueError(str(exc)) from exc
    if not text.startswith(HEADER.split(":")[0]):
        raise ValueError("not written by ccnet")
    recorded: Dict[str, Set[str]] = {}
    for line in text.split("\n")[1:]:  # not splitlines(): names may hold other line separators
        tool, _, rel = line.partition(" ")
        if rel:
            recorded.setdefault(tool, set()).add(rel)
    return recorded


class OutputManifest:
    """The files ``tool`` wrote into ``folder``, read from and appended to ``folder/manifest.txt``.

    Args:
        folder: the output folder (``output_dir``); every recorded file lies below it.
        tool: the writing tool's name (``"infer"``, ``"eval"``); a run may replace only files recorded
            under its own tool's name.
    """

    def __init__(self, folder: Union[str, Path], tool: str) -> None:
        self.folder = Path(folder)
        self.tool = tool
        self.path = self.folder / MANIFEST_NAME
        try:
            self._foreign = False
            self._recorded = _read(self.path).get(tool, set())
        except ValueError:
            self._foreign = True
            self._recorded = set()

    def relative(self, path: Union[str, Path]) -> str:
        """``path`` relative to the folder, as recorded (``/``-separated, compared as written, not resolved)."""
        rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.folder)))
        assert not rel.is_absolute() and ".." not in rel.parts, f"{path} is not below {self.folder}"
        return rel.as_posix()

    def owns(self, path: Union[str, Path]) -> bool:
        """Whether ``path`` is a regular file (not a symlink) inside the folder that an earlier run of
        this tool recorded, i.e. whether this run may replace it."""
        return self._owns(path, os.path.realpath(self.folder))

    def _owns(self, path: Union[str, Path], real_folder: str) -> bool:
        """:meth:`owns` with the folder's real path computed once."""
        if self.relative(path) not in self._recorded:
            return False
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):  # a symlink or a folder is never ours to replace
                return False
        except OSError:
            return False
        return os.path.realpath(path).startswith(os.path.join(real_folder, ""))  # not via a symlinked folder

    def check(
        self,
        outputs: Iterable[Union[str, Path]],
        inputs: Iterable[Union[str, Path]] = (),
        key: str = "output_dir",
        fix: Optional[str] = None,
    ) -> None:
        """Check that this run may write every path of ``outputs``, writing nothing (not even the folder).

        Args:
            outputs: every file the run will write, below the folder.
            inputs: the files the run reads; none of them may be written.
            key: the setting that names the folder, for the message.
            fix: the message's advice, if not to choose another folder with ``key``.

        Raises:
            OutputConflictError: naming the first few conflicting files, their count and the fix.
        """
        sources = {Path(p).resolve() for p in inputs}
        manifest = os.path.abspath(self.path)
        real_folder = os.path.realpath(self.folder)
        conflicts: List[str] = []
        if self._foreign:
            conflicts.append(f"{self.path} (a file of the manifest's name that ccnet did not write)")
        for out in outputs:
            out = Path(out)
            if sources and out.resolve() in sources:  # no resolve() per file when there are no inputs
                conflicts.append(f"{out} (an input of this run)")
            elif out.name == MANIFEST_NAME and os.path.abspath(out) == manifest:
                conflicts.append(f"{out} (the folder's manifest, where this run records what it writes)")
            elif os.path.lexists(out) and not self._owns(out, real_folder):
                conflicts.append(f"{out} (exists, and no earlier {self.tool} run wrote it here)")
        if conflicts:
            more = f", and {len(conflicts) - SHOWN} more" if len(conflicts) > SHOWN else ""
            raise OutputConflictError(
                f"refusing to write into {self.folder}: {len(conflicts)} file(s) this run would write are not its "
                f"own to replace: {'; '.join(conflicts[:SHOWN])}{more}. Nothing was written. "
                + (fix or f"Give the run a folder of its own ({key}=...) or move those files away")
            )

    def claim(
        self, outputs: Iterable[Union[str, Path]], inputs: Iterable[Union[str, Path]] = (), key: str = "output_dir"
    ) -> None:
        """:meth:`check`, then start the manifest file (creating the folder).

        Raises:
            OutputConflictError: naming the first few conflicting files, their count and the fix.
        """
        self.check(outputs, inputs, key)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.write_text(HEADER, encoding="utf-8")

    def record(self, path: Union[str, Path]) -> None:
        """Append ``path`` (just written) to the manifest in one ``write``, so lines of several processes do not
        interleave; a name with a line break is not recorded (a later run then refuses to replace it).
        """
        rel = self.relative(path)
        if rel in self._recorded or "\n" in rel or "\r" in rel:
            return
        line = f"{self.tool} {rel}\n"
        if not self.path.exists():  # claim() was skipped: the header still comes first
            line = HEADER + line
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8", errors="surrogateescape"))
        finally:
            os.close(fd)
        self._recorded.add(rel)


class OutputFiles:
    """Files at paths the user names one by one, each in its own folder's manifest: :meth:`check` them all
    before any work, :meth:`record` each once written.

    Args:
        tool: the writing tool's name; a run may replace only files recorded under it.
        paths: option (for the message, e.g. ``"--onnx"``) -> the file it names; None: not written.
    """

    def __init__(self, tool: str, paths: Mapping[str, Optional[Union[str, Path]]]) -> None:
        self.tool = tool
        self.paths: Dict[str, Path] = {option: Path(p) for option, p in paths.items() if p is not None}
        self._manifests: Dict[str, OutputManifest] = {}

    def manifest(self, path: Union[str, Path]) -> OutputManifest:
        """The manifest of ``path``'s folder (read once per folder)."""
        folder = Path(path).parent
        key = os.path.abspath(folder)
        if key not in self._manifests:
            self._manifests[key] = OutputManifest(folder, self.tool)
        return self._manifests[key]

    def check(self, inputs: Iterable[Union[str, Path]] = ()) -> None:
        """Refuse the run, writing nothing, when two options name one file, or a path is one of
        ``inputs`` or a file that no earlier run of this tool wrote there.

        Raises:
            OutputConflictError: naming the option, the file and the fix.
        """
        inputs = list(inputs)
        seen: Dict[Path, str] = {}
        for option, path in self.paths.items():
            same = seen.setdefault(path.resolve(), option)
            if same != option:
                raise OutputConflictError(
                    f"{same} and {option} both name {path}: each output needs a file of its "
                    "own. Nothing was written; give them different paths"
                )
        for option, path in self.paths.items():
            self.manifest(path).check([path], inputs, fix=f"Choose another {option} or move that file away")

    def record(self, path: Union[str, Path]) -> None:
        """Append ``path`` (just written) to its folder's manifest."""
        self.manifest(path).record(path)
