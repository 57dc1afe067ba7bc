"""`sdmvae prepare --shard I/N` then `--merge` (the array-job habit): the merged folder is the one
a one-machine prepare of the same corpus with the same options writes, byte for byte, but for
prepare.json's fields that describe the run; missing, foreign, stale or damaged shards are refused
in one line before the merge writes anything, bad --shard values with exit 2, and a shard folder or
OUT_DIR that another process is writing is refused naming that process (a real second process)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, one_line, write_wav

from sdmvae_cli.audio.synthetic import source_filter_speech
from sdmvae_cli.core.lock import LOCK_NAME
from sdmvae_cli.data.frames import open_frames
from sdmvae_cli.data.prepare import PrepareOptions, prepare
from sdmvae_cli.data.prepared import load_prepare_info, read_manifest
from sdmvae_cli.data.shards import FIELDS_OF_THE_RUN, block, parse_shard

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """<root>/<speaker>/<utt>.wav: 3 train speakers (7 utterances and one corrupt file: skipped),
    a validation speaker with 2 utterances and a test speaker with 1 (so 3 shards leave empty
    blocks), and its one-machine preparation."""
    root = tmp_path_factory.mktemp("shard-corpus") / "c"
    counts = {"a": 2, "b": 3, "c": 2, "v": 2, "t": 1}
    for k, (spk, n) in enumerate(counts.items()):
        for u in range(n):
            write_wav(root / spk / f"u{u}.wav", source_filter_speech(0.4 + 0.1 * u, seed=10 * k + u))
    (root / "b" / "u9.wav").write_bytes(b"not audio")
    split = root.parent / "split.json"
    split.write_text(json.dumps({"validation": ["v"], "test": ["t"]}))
    args = ["folder", root]
    one = root.parent / "one"
    return {"args": args, "split": split, "one": one, "root": root}


@pytest.fixture(scope="module")
def one_machine(corpus) -> Path:
    from sdmvae_cli.cli.app import run

    assert run(["prepare", *map(str, corpus["args"]), str(corpus["one"]), "--split-file", str(corpus["split"])]) == 0
    return corpus["one"]


def prep(capsys, corpus: dict, out: Path, *extra) -> tuple[int, str, str]:
    return cli(capsys, "prepare", *corpus["args"], out, "--split-file", corpus["split"], *extra)


def test_blocks_cover_each_split_once_in_order():
    for n_items in (0, 1, 2, 7, 10):
        for n in (1, 3, 4):
            got = [block(n_items, i, n) for i in range(1, n + 1)]
            assert got[0][0] == 0 and got[-1][1] == n_items
            assert all(a[1] == b[0] for a, b in zip(got, got[1:]))
            assert max(hi - lo for lo, hi in got) - min(hi - lo for lo, hi in got) <= 1
    assert parse_shard("2/3") == (2, 3) and parse_shard(" 1 / 1 ") == (1, 1)


def test_three_shards_merge_into_the_one_machine_preparation(corpus, one_machine, tmp_path, capsys):
    out = tmp_path / "o"
    for i in (1, 3):
        code, stdout, err = prep(capsys, corpus, out, "--shard", f"{i}/3")
        assert code == 0, err
        assert stdout == f"{(out / 'shards' / f'{i}-of-3').resolve()}\n"
    # a shard made with other options is refused by name
    assert prep(capsys, corpus, out, "--shard", "2/3", "--top-db", "20")[0] == 0
    code, _, err = prep(capsys, corpus, out, "--merge")
    line = one_line(err)
    assert code == 1 and "shard 2-of-3" in line and "top_db" in line, line
    # a missing shard is refused by name, before anything is written
    for f in sorted((out / "shards" / "2-of-3").rglob("*"), reverse=True):
        f.rmdir() if f.is_dir() else f.unlink()
    (out / "shards" / "2-of-3").rmdir()
    code, _, err = prep(capsys, corpus, out, "--merge")
    line = one_line(err)
    assert code == 1 and "2 of 3 shards complete" in line and "missing 2-of-3" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["shards"]

    code, _, err = prep(capsys, corpus, out, "--shard", "2/3")
    assert code == 0, err
    # the empty blocks (1 test utterance, 2 validation ones, 3 shards) are empty shards
    assert np.load(out / "shards" / "1-of-3" / "test" / "frames.npy").shape == (0, 513)
    assert np.load(out / "shards" / "1-of-3" / "validation" / "frames.npy").shape == (0, 513)
    assert np.load(out / "shards" / "3-of-3" / "test" / "frames.npy").shape[0] > 0
    # a re-run with the same inputs skips its work
    frames = out / "shards" / "2-of-3" / "train" / "frames.npy"
    mtime = frames.stat().st_mtime_ns
    code, stdout, err = prep(capsys, corpus, out, "--shard", "2/3", "--json")
    assert code == 0 and json.loads(stdout)["up_to_date"] and frames.stat().st_mtime_ns == mtime, err

    code, stdout, err = prep(capsys, corpus, out, "--merge")
    assert code == 0, err
    assert stdout == f"{out.resolve()}\n"
    same_as_one_machine(out, one_machine)
    assert (out / "shards" / "3-of-3" / "shard.json").exists()  # kept unless --remove-shards


def same_as_one_machine(out: Path, one: Path) -> None:
    """Every file a one-machine prepare writes, compared with the merged folder's."""
    for s in SPLITS:
        assert (out / s / "frames.npy").read_bytes() == (one / s / "frames.npy").read_bytes()
        assert (out / s / "manifest.jsonl").read_bytes() == (one / s / "manifest.jsonl").read_bytes()
        assert (out / s / "speakers.txt").read_text() == (one / s / "speakers.txt").read_text()
        assert json.loads((out / s / ".done.json").read_text()) == json.loads((one / s / ".done.json").read_text())
    assert (out / "splits.json").read_text() == (one / "splits.json").read_text()
    merged, single = (json.loads((d / "prepare.json").read_text()) for d in (out, one))
    assert FIELDS_OF_THE_RUN == ("merged_shards",) and merged["merged_shards"] == 3
    assert {k: v for k, v in merged.items() if k not in FIELDS_OF_THE_RUN} == single
    assert merged["fingerprint"] == single["fingerprint"]
    assert len(merged["splits"]["train"]["skipped"]) == 1 and merged["splits"]["test"]["utterances"] == 1
    # an ordinary prepared folder for train and evaluate
    assert load_prepare_info(out)["fingerprint"] == single["fingerprint"]
    rows = read_manifest(out, "train")
    assert all(os.path.isabs(r["path"]) for r in rows) and len(rows) == 7
    assert open_frames(out, "train").shape == (sum(r["n_frames"] for r in rows), 513)


def test_a_merge_refuses_changed_audio_and_removes_shards_when_asked(corpus, one_machine, tmp_path, capsys):
    out = tmp_path / "o"
    (tmp_path / "mount").symlink_to(corpus["root"])  # shard 1 sees the corpus elsewhere: the manifests name this machine's files
    for i, root in ((1, tmp_path / "mount"), (2, corpus["root"])):
        code, _, err = cli(
            capsys, "prepare", "folder", root, out, "--split-file", corpus["split"], "--shard", f"{i}/2", "-j", "2"
        )
        assert code == 0, err
    assert all(r["path"].startswith(str(tmp_path / "mount")) for r in read_manifest(out / "shards" / "1-of-2", "train"))
    victim = corpus["root"] / "a" / "u0.wav"
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        code, _, err = prep(capsys, corpus, out, "--merge")
        line = one_line(err)
        assert code == 1 and "shard 1-of-2, train split: not made from the audio" in line, line
        assert not (out / "prepare.json").exists()
    finally:
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, _, err = prep(capsys, corpus, out, "--merge", "--remove-shards")
    assert code == 0, err
    assert not (out / "shards").exists()
    merged = json.loads((out / "prepare.json").read_text())
    assert (
        merged["merged_shards"] == 2
        and merged["fingerprint"] == json.loads((one_machine / "prepare.json").read_text())["fingerprint"]
    )
    for s in SPLITS:
        assert (out / s / "frames.npy").read_bytes() == (one_machine / s / "frames.npy").read_bytes()
        assert (out / s / "manifest.jsonl").read_bytes() == (one_machine / s / "manifest.jsonl").read_bytes()
    # the merged folder is up to date for a plain prepare: nothing recomputed
    mtime = (out / "train" / "frames.npy").stat().st_mtime_ns
    again = prepare(corpus["root"], out, PrepareOptions(split_file=str(corpus["split"])))
    assert again["up_to_date"] and (out / "train" / "frames.npy").stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--shard", "0/2"], "1 <= I <= N"),
        (["--shard", "3/2"], "not '3/2'"),
        (["--shard", "x"], "--shard takes I/N"),
        (["--shard", "1/0"], "--shard takes I/N"),
        (["--shard", "1/2", "--merge"], "two steps"),
        (["--remove-shards"], "goes with --merge"),
    ],
)
def test_bad_shard_options_are_one_line_and_exit_2(corpus, tmp_path, capsys, extra, needle):
    code, _, err = prep(capsys, corpus, tmp_path / "o", *extra)
    line = one_line(err)
    assert code == 2 and needle in line, line
    assert not (tmp_path / "o").exists()


def test_a_merge_without_shards_says_so(corpus, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    code, _, err = prep(capsys, corpus, tmp_path / "o", "--merge")
    assert code == 1 and "no shards to merge" in one_line(err)


def shard_all(capsys, corpus: dict, out: Path, n: int) -> None:
    for i in range(1, n + 1):
        code, _, err = prep(capsys, corpus, out, "--shard", f"{i}/{n}")
        assert code == 0, err


def snapshot(folder: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every folder (None) and file (bytes, mtime) under ``folder``: equal snapshots, nothing written."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def one_row_fewer(frames: Path) -> None:
    np.save(frames, np.load(frames)[:-1])


def truncated(frames: Path) -> None:
    frames.write_bytes(frames.read_bytes()[:-100])


def manifest_shifted(frames: Path) -> None:
    manifest = frames.with_name("manifest.jsonl")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[0]["frame_offset"] += 3
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    "damage,needle",
    [(one_row_fewer, "frames.npy: float32 ("), (truncated, "frames.npy: float32 ("), (manifest_shifted, "manifest.jsonl")],
)
def test_a_damaged_later_shard_is_refused_before_the_merge_writes(corpus, one_machine, tmp_path, capsys, damage, needle):
    out = tmp_path / "o"
    shard_all(capsys, corpus, out, 2)
    # the test split is the last one merged, and its one utterance is in the last shard
    frames = out / "shards" / "2-of-2" / "test" / "frames.npy"
    assert np.load(frames).shape[0] > 0 and np.load(out / "shards" / "1-of-2" / "test" / "frames.npy").shape[0] == 0
    damage(frames)
    before = snapshot(out)
    code, stdout, err = prep(capsys, corpus, out, "--merge")
    line = one_line(err)
    assert code == 1 and not stdout and "2-of-2" in line and needle in line and "re-run shard 2-of-2" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["shards"]  # no splits.json, no train or validation split
    assert snapshot(out) == before


def test_a_failed_merge_leaves_an_earlier_merge_untouched(corpus, one_machine, tmp_path, capsys):
    out = tmp_path / "o"
    shard_all(capsys, corpus, out, 2)
    assert prep(capsys, corpus, out, "--merge")[0] == 0
    truncated(out / "shards" / "2-of-2" / "test" / "frames.npy")
    before = snapshot(out)
    code, _, err = prep(capsys, corpus, out, "--merge", "--force")  # --force: every split would be rewritten
    line = one_line(err)
    assert code == 1 and "shards/2-of-2/test/frames.npy" in line, line
    assert snapshot(out) == before  # prepare.json, splits.json and the merged splits as they were
    same_as_one_machine_but_n(out, one_machine, 2)


def same_as_one_machine_but_n(out: Path, one: Path, n: int) -> None:
    for s in SPLITS:
        assert (out / s / "frames.npy").read_bytes() == (one / s / "frames.npy").read_bytes()
    merged = json.loads((out / "prepare.json").read_text())
    assert merged.pop("merged_shards") == n and merged == json.loads((one / "prepare.json").read_text())


def test_a_split_without_usable_audio_is_refused_before_the_merge_writes(tmp_path, capsys):
    """The test speaker's only file is not audio: each shard holds an empty block of it (allowed),
    the merge refuses the split as a one-machine prepare does, with nothing written."""
    root = tmp_path / "c"
    for k, spk in enumerate(("a", "b", "v")):
        write_wav(root / spk / "u0.wav", source_filter_speech(0.4, seed=k))
    (root / "t").mkdir()
    (root / "t" / "u0.wav").write_bytes(b"not audio")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": ["v"], "test": ["t"]}))
    corpus = {"args": ["folder", root], "split": split}
    code, _, err = prep(capsys, corpus, tmp_path / "one")
    assert code == 1 and "error: test split: no usable audio" in err.strip().splitlines()[-1], err  # after the skip's warning
    out = tmp_path / "o"
    shard_all(capsys, corpus, out, 2)
    before = snapshot(out)
    code, _, err = prep(capsys, corpus, out, "--merge")
    line = one_line(err)
    assert code == 1 and "test split: no usable audio (1 file(s) skipped" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["shards"] and snapshot(out) == before


#: holds the lock of argv[1] until stdin closes (the kernel's flock in another process, as a
#: requeued array task or a second merge would hold it)
HOLDER = """
import sys
from sdmvae_cli.core.lock import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def held_by_another_process(folder: Path):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        yield p
    finally:
        p.stdin.close()
        p.wait(timeout=60)


def test_a_shard_or_merge_under_way_is_refused_naming_its_holder(corpus, one_machine, tmp_path, capsys):
    out = tmp_path / "o"
    shard_all(capsys, corpus, out, 2)
    held = out / "shards" / "1-of-2"
    partial = held / ".shard.json.x1.tmp"  # what the holder is writing: a second shard 1/2 would remove it
    partial.write_text("{")
    with held_by_another_process(held) as holder:
        before = snapshot(out)
        assert (held / LOCK_NAME).exists()
        for extra in (["--shard", "1/2"], ["--merge"]):
            code, stdout, err = prep(capsys, corpus, out, *extra)
            line = one_line(err)
            assert code == 1 and not stdout and f"pid {holder.pid} " in line, (extra, line)
            assert "1-of-2 is in use by another sdmvae process" in line, (extra, line)
            assert snapshot(out) == before  # the partial file, shard.json and every frame as they were
    with held_by_another_process(out) as holder:  # a merge under way: a second one is refused
        code, _, err = prep(capsys, corpus, out, "--merge")
        line = one_line(err)
        assert code == 1 and f"pid {holder.pid} " in line and "in use by another sdmvae process" in line, line
        assert not (out / "prepare.json").exists() and not (out / "splits.json").exists()
    # free again: the shard re-run clears what a killed writer left, and the merge joins them
    code, _, err = prep(capsys, corpus, out, "--shard", "1/2")
    assert code == 0 and not partial.exists(), err
    assert prep(capsys, corpus, out, "--merge")[0] == 0
    same_as_one_machine_but_n(out, one_machine, 2)
    assert not list(out.rglob(LOCK_NAME))  # every lock file gone with its holder


def test_the_split_file_may_be_spelled_differently_by_each_job(corpus, one_machine, tmp_path, capsys, monkeypatch):
    """An array job's tasks and its merge job start in other folders: a relative and an absolute
    spelling of one split file are one option (it is stored absolute)."""
    out = tmp_path / "out"
    monkeypatch.chdir(corpus["split"].parent)
    for i in (1, 2):
        code, _, err = cli(capsys, "prepare", *corpus["args"], out, "--split-file", corpus["split"].name, "--shard", f"{i}/2")
        assert code == 0, err
    monkeypatch.chdir(tmp_path)
    code, _, err = prep(capsys, corpus, out, "--merge")
    assert code == 0, err
    same_as_one_machine_but_n(out, one_machine, 2)


@contextlib.contextmanager
def touched(*files: Path):
    """The files' mtimes one second later (their shards' skip keys change), restored after."""
    stats = [f.stat() for f in files]
    for f, st in zip(files, stats):
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        yield
    finally:
        for f, st in zip(files, stats):
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_merge_names_every_refused_shard_in_one_line(corpus, one_machine, tmp_path, capsys):
    """Train's 8 files in corpus order, in 3 blocks: a/u0 is in shard 1, c/u1 in shard 3."""
    out = tmp_path / "o"
    shard_all(capsys, corpus, out, 3)
    assert prep(capsys, corpus, out, "--shard", "2/3", "--top-db", "20")[0] == 0
    with touched(corpus["root"] / "a" / "u0.wav", corpus["root"] / "c" / "u1.wav"):
        code, _, err = prep(capsys, corpus, out, "--merge")
        line = one_line(err)
        assert code == 1 and "shards 1-of-3 (changed audio), 2-of-3 (other options: top_db), 3-of-3 (changed audio)" in line
        assert prep(capsys, corpus, out, "--shard", "2/3")[0] == 0
        before = snapshot(out)
        code, _, err = prep(capsys, corpus, out, "--merge")
        line = one_line(err)
        assert code == 1 and "shards 1-of-3, 3-of-3 were made from audio that has changed since" in line, line
        assert "re-run them" in line and "2-of-3" not in line, line
        assert sorted(p.name for p in out.iterdir()) == ["shards"] and snapshot(out) == before
    assert prep(capsys, corpus, out, "--merge")[0] == 0  # the audio as it was: the shards merge
    same_as_one_machine(out, one_machine)


def test_an_up_to_date_merge_leaves_prepare_json_as_it_is(corpus, one_machine, tmp_path, capsys):
    """A folder that holds the identical one-machine preparation: the merge recomputes nothing and
    does not add ``merged_shards`` to its prepare.json (nothing was merged)."""
    out = tmp_path / "o"
    shutil.copytree(one_machine, out)
    shard_all(capsys, corpus, out, 2)
    before = {k: v for k, v in snapshot(out).items() if not k.startswith("shards")}
    code, stdout, err = prep(capsys, corpus, out, "--merge", "--json")
    assert code == 0 and json.loads(stdout)["up_to_date"], err
    assert {k: v for k, v in snapshot(out).items() if not k.startswith("shards")} == before
    assert (out / "prepare.json").read_bytes() == (one_machine / "prepare.json").read_bytes()


def test_a_merge_rerun_after_remove_shards_is_up_to_date(corpus, one_machine, tmp_path, capsys):
    out = tmp_path / "o"
    shard_all(capsys, corpus, out, 2)
    code, _, err = prep(capsys, corpus, out, "--merge", "--remove-shards")
    assert code == 0 and not (out / "shards").exists(), err
    before = snapshot(out)
    for extra in ([], ["--remove-shards"]):  # a whole pipeline script run again
        code, stdout, err = prep(capsys, corpus, out, "--merge", "--json", *extra)
        assert code == 0 and json.loads(stdout)["up_to_date"] and json.loads(stdout)["merged_shards"] == 2, err
        assert "up to date, nothing recomputed" in err and snapshot(out) == before
    same_as_one_machine_but_n(out, one_machine, 2)
    # no shards and nothing up to date to stand for them: still refused, nothing written
    for extra in (["--top-db", "20"], ["--force"]):
        code, _, err = prep(capsys, corpus, out, "--merge", *extra)
        assert code == 1 and "no shards to merge" in one_line(err) and snapshot(out) == before, (extra, err)
    with touched(corpus["root"] / "t" / "u0.wav"):
        code, _, err = prep(capsys, corpus, out, "--merge")
        assert code == 1 and "no shards to merge" in one_line(err) and snapshot(out) == before, err
    one = tmp_path / "one"
    shutil.copytree(one_machine, one)  # a one-machine preparation was made by no merge
    code, _, err = prep(capsys, corpus, one, "--merge")
    assert code == 1 and "no shards to merge" in one_line(err), err
