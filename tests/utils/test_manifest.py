"""Output manifests: a run may replace only files an earlier run of the same tool recorded in its folder."""

from __future__ import annotations

import os

import pytest

from ccnet.utils.manifest import HEADER, OutputConflictError, OutputFiles, OutputManifest


def test_claim_names_the_first_five_conflicts_and_counts_the_rest(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mine = [out / f"{i}.png" for i in range(9)]
    for path in mine[:7]:
        path.write_bytes(b"someone else's")
    with pytest.raises(OutputConflictError) as refused:
        OutputManifest(out, "infer").claim(mine, inputs=[tmp_path / "photo.png"])
    message = str(refused.value)
    assert message.startswith(
        f"refusing to write into {out}: 7 file(s) this run would write are not its own to "
        f"replace: {out / '0.png'} (exists, and no earlier infer run wrote it here); "
    )
    assert f"{out / '4.png'} (exists" in message and "5.png" not in message and ", and 2 more." in message
    assert message.endswith("Give the run a folder of its own (output_dir=...) or move those files away")
    assert not (out / "manifest.txt").exists()  # a refused run starts no manifest


def test_recorded_files_belong_to_their_tool_only(tmp_path):
    out = tmp_path / "out"
    infer = OutputManifest(out, "infer")
    infer.claim([out / "a.png"])
    assert (out / "manifest.txt").read_text() == HEADER
    (out / "a.png").write_bytes(b"prediction")
    infer.record(out / "a.png")
    infer.record(out / "a.png")  # once per file, however often it is written
    assert (out / "manifest.txt").read_text() == HEADER + "infer a.png\n"
    OutputManifest(out, "infer").claim([out / "a.png"])  # a later infer run may replace it ...
    with pytest.raises(OutputConflictError, match="no earlier eval run wrote it"):
        OutputManifest(out, "eval").claim([out / "a.png"])  # ... an eval run may not


def test_a_recorded_path_that_became_a_symlink_is_not_owned(tmp_path):
    out, precious = tmp_path / "out", tmp_path / "precious.png"
    precious.write_bytes(b"the user's")
    manifest = OutputManifest(out, "infer")
    manifest.claim([out / "a.png"])
    (out / "a.png").write_bytes(b"prediction")
    manifest.record(out / "a.png")
    (out / "a.png").unlink()
    (out / "a.png").symlink_to(precious)  # writing there now would replace the user's file
    with pytest.raises(OutputConflictError, match="a.png \\(exists"):
        OutputManifest(out, "infer").claim([out / "a.png"])


def test_a_name_with_a_line_break_is_never_recorded(tmp_path):
    out = tmp_path / "out"
    odd = out / "x\ninfer y.png"
    manifest = OutputManifest(out, "infer")
    manifest.claim([odd])
    odd.write_bytes(b"prediction")
    manifest.record(odd)
    assert (out / "manifest.txt").read_text() == HEADER  # a later run refuses to replace it instead
    (out / "y.png").write_bytes(b"the user's")
    with pytest.raises(OutputConflictError, match="2 file"):
        OutputManifest(out, "infer").claim([odd, out / "y.png"])


def test_lines_of_several_processes_stay_whole(tmp_path):
    """The ranks of a torchrun evaluation append to one manifest."""
    out = tmp_path / "out"
    OutputManifest(out, "eval").claim([])
    children = []
    for rank in range(2):
        pid = os.fork()
        if pid == 0:  # child: write its shard's records, then leave without pytest's clean-up
            writer = OutputManifest(out, "eval")
            for i in range(rank, 400, 2):
                writer.record(out / "predictions" / f"{i:04d}.png")
            os._exit(0)
        children.append(pid)
    assert all(os.waitpid(pid, 0)[1] == 0 for pid in children)
    lines = (out / "manifest.txt").read_text().splitlines()
    assert lines[0] == HEADER.rstrip("\n")
    assert sorted(lines[1:]) == [f"eval predictions/{i:04d}.png" for i in range(400)]


def test_a_name_that_is_not_utf8_is_recorded_and_owned(tmp_path):
    out = tmp_path / "out"
    latin1 = out / os.fsdecode(b"caf\xe9.png")  # bytes a Linux file name may hold
    manifest = OutputManifest(out, "infer")
    manifest.claim([latin1])
    latin1.write_bytes(b"prediction")
    manifest.record(latin1)
    assert (out / "manifest.txt").read_bytes() == HEADER.encode() + b"infer caf\xe9.png\n"
    OutputManifest(out, "infer").claim([latin1])  # a later run may replace it


def test_check_refuses_like_claim_but_writes_nothing(tmp_path):
    out = tmp_path / "new" / "folder"
    manifest = OutputManifest(out, "convert")
    manifest.check([out / "a.pth"])  # free: passes without creating the folder or the manifest
    assert not (tmp_path / "new").exists()
    with pytest.raises(OutputConflictError, match=r"manifest.txt \(the folder's manifest"):
        manifest.check([out / "manifest.txt"])  # the run's records would land in its own output
    out.mkdir(parents=True)
    (out / "a.pth").write_bytes(b"the user's")
    with pytest.raises(OutputConflictError, match=r"Nothing was written\. Pick another$"):
        manifest.check([out / "a.pth"], fix="Pick another")
    assert sorted(p.name for p in out.iterdir()) == ["a.pth"]


def test_output_files_are_recorded_in_their_own_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    files = OutputFiles("export", {"--pt2": a / "m.pt2", "--onnx": b / "m.onnx", "--out": None})
    files.check(inputs=[tmp_path / "ckpt.pth"])
    assert not a.exists() and not b.exists()  # checking writes nothing
    for path in files.paths.values():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"export")
        files.record(path)
    assert (a / "manifest.txt").read_text() == HEADER + "export m.pt2\n"
    assert (b / "manifest.txt").read_text() == HEADER + "export m.onnx\n"
    OutputFiles("export", {"--pt2": a / "m.pt2", "--onnx": b / "m.onnx"}).check()  # a rerun replaces its own
    with pytest.raises(
        OutputConflictError,
        match=r"m\.pt2 \(exists, and no earlier convert run wrote it here\)\. "
        r"Nothing was written\. Choose another DST or move that file away",
    ):
        OutputFiles("convert", {"DST": a / "m.pt2"}).check()


def test_output_files_refuse_an_input_and_one_file_named_twice(tmp_path):
    ckpt = tmp_path / "ckpt.pth"
    ckpt.write_bytes(b"weights")
    (tmp_path / "link.onnx").symlink_to(ckpt)
    with pytest.raises(OutputConflictError, match=r"link\.onnx \(an input of this run\)"):
        OutputFiles("export", {"--onnx": tmp_path / "link.onnx"}).check(inputs=[ckpt])
    with pytest.raises(OutputConflictError, match=r"^--pt2 and --out both name .*m\.pt2: each output needs a file"):
        OutputFiles("export", {"--pt2": tmp_path / "m.pt2", "--out": tmp_path / "x" / ".." / "m.pt2"}).check()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "link.onnx"]
