"""`sdmvae prepare ... --shard I/N` and `--merge`: one preparation made by N machines (an array
job, each with the same arguments and its own I), then joined into what one machine makes.

Layout, beside the merged folder's usual files (:mod:`sdmvae_cli.data.prepare`)::

    OUT_DIR/shards/I-of-N/shard.json               written last: the shard is complete
    OUT_DIR/shards/I-of-N/<split>/frames.npy       the frames of the I-th of N blocks of the split
    OUT_DIR/shards/I-of-N/<split>/manifest.jsonl   its rows, frame offsets from 0
    OUT_DIR/shards/I-of-N/<split>/.done.json       its skip key, content entries and summary

Why contiguous blocks of each split's utterance list, in a one-machine prepare's order: its
``frames.npy`` is its utterances' frames one after the other, so the merge is a header and a copy
of the shards' data in order, byte for byte the same, without the split in memory. Each shard
draws the (deterministic) speaker split itself and records it; the merge draws it again and
refuses, naming every such shard in one line, shards made with other options, another split,
or audio that changed since (each block's skip key, with mtimes).

A merged folder is a one-machine preparation, every file identical (a later plain ``prepare``
is up to date), ``prepare.json``'s fingerprint included, but for one field of the run:
``merged_shards`` (N). A merge that finds OUT_DIR up to date writes nothing, even with no shards
left (a pipeline script re-runs whole). Manifest paths are those the merging machine reads (a
shard may see the corpus mounted elsewhere; skip keys hold no paths). The shards are kept unless
``--remove-shards``: they are the expensive part, a changed file needs only its shard re-run,
and a result is never deleted unless asked.

Locks (:mod:`sdmvae_cli.core.lock`): a shard holds its folder while it works (a requeued duplicate
is refused); a merge holds OUT_DIR and every shard folder, and checks them all before it writes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable, Sequence

from sdmvae_cli.core.atomic import write_json, write_text
from sdmvae_cli.core.errors import SdmvaeError, UsageError
from sdmvae_cli.core.lock import claim_folder, lock_scope
from sdmvae_cli.core.outputs import remove_stale_temporaries
from sdmvae_cli.core.version import __version__
from sdmvae_cli.data.corpus import SPLITS, Utterance
from sdmvae_cli.data.keys import content_key, split_key
from sdmvae_cli.data.prepare import (
    PREPARED,
    PrepareOptions,
    checked_paths,
    drop_empty_split,
    extract_frames,
    no_usable_audio,
    prepare,
    prepare_info,
    split_utterances,
    write_prepare_info,
)
from sdmvae_cli.data.shard_blocks import Block, check_block, concat_frames, concat_manifests, read_json

SHARDS = "shards"  # the folder of OUT_DIR that holds them
SHARD_DONE = "shard.json"
SHARD_FORMAT = 1
#: what a line naming several refused shards says of them, by their one reason (else each its own)
SAID = {
    "changed audio": "were made from audio that has changed since (or another corpus)",
    "another speaker split": "hold another speaker split than this corpus and these options draw",
    "damaged files": "hold damaged or unreadable files",
}
FIELDS_OF_THE_RUN = ("merged_shards",)  # the only fields of a merged prepare.json a one-machine prepare lacks


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` -> (I, N), 1 <= I <= N."""
    m = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", text)
    if m and 1 <= int(m[1]) <= int(m[2]):
        return int(m[1]), int(m[2])
    raise UsageError(f"--shard takes I/N, the I-th of N parts with 1 <= I <= N (e.g. 2/8), not {text!r}")


def shard_name(i: int, n: int) -> str:
    return f"{i}-of-{n}"


def block(n_items: int, i: int, n: int) -> tuple[int, int]:
    """The I-th of N contiguous blocks of ``n_items`` ([lo, hi), sizes differ by at most one;
    a block is empty where N exceeds the items)."""
    return (i - 1) * n_items // n, i * n_items // n


def prepare_in_parts(
    corpus: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    opts: PrepareOptions,
    shard: tuple[int, int] | None = None,
    merge: bool = False,
    remove_shards: bool = False,
    progress_factory=None,
) -> dict:
    """`sdmvae prepare`: the whole corpus (neither ``shard`` nor ``merge``), one shard, or the
    merge of all shards; returns what the run wrote (``prepare.json``, or a shard's summary)."""
    if shard is not None and merge:
        raise UsageError("--shard and --merge are two steps: prepare every shard, then merge them in one more run")
    if remove_shards and not merge:
        raise UsageError("--remove-shards goes with --merge (the shards are removed once merged)")
    if shard is not None:
        return prepare_shard(corpus, out_dir, opts, shard, progress_factory)
    if merge:
        return merge_shards(corpus, out_dir, opts, remove_shards)
    return prepare(corpus, out_dir, opts, progress_factory)


@lock_scope
def prepare_shard(corpus, out_dir: str | Path, opts: PrepareOptions, shard: tuple[int, int], progress_factory=None) -> dict:
    """Prepare the ``shard`` (I, N) block of every split into ``OUT_DIR/shards/I-of-N`` (and
    nowhere else); a re-run with the same inputs skips the splits already done. The shard folder
    stays locked until it returns: a requeued duplicate of the same array task, or a merge, is
    refused instead of removing the temporaries this one is writing."""
    i, n = shard
    inputs, out_dir = checked_paths(corpus, out_dir, opts, markers=(*PREPARED, SHARDS))
    shard_dir = out_dir / SHARDS / shard_name(i, n)
    claim_folder(shard_dir)  # one writer per shard folder (sdmvae_cli.core.lock), before it is touched
    split, per_split = split_utterances(inputs, opts)
    shard_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(shard_dir)
    (shard_dir / SHARD_DONE).unlink(missing_ok=True)  # incomplete until this run ends
    blocks = {name: block(len(utts), i, n) for name, utts in per_split.items() if utts}
    bar = progress_factory(sum(hi - lo for lo, hi in blocks.values())) if progress_factory else None
    summaries = {}
    try:
        for name, (lo, hi) in blocks.items():
            utts = per_split[name][lo:hi]
            summaries[name] = _shard_split(name, utts, shard_dir / name, opts, bar.update if bar else None)
            summaries[name]["block"] = [lo, hi, len(per_split[name])]
    finally:
        if bar is not None and hasattr(bar, "close"):
            bar.close()
    for name in set(SPLITS) - set(blocks):
        shutil.rmtree(shard_dir / name, ignore_errors=True)  # left by a run with other options
    info = {
        "format": SHARD_FORMAT,
        "shard": [i, n],
        "package_version": __version__,
        "corpus_inputs": [str(p) for p in inputs],
        "stft": opts.stft.to_dict(),
        "options": opts.key_dict(),
        "speaker_split": split,
        "splits": {k: {kk: vv for kk, vv in v.items() if kk != "skipped_run"} for k, v in summaries.items()},
    }
    write_json(shard_dir / SHARD_DONE, info)
    return info | {"shard_dir": str(shard_dir), "up_to_date": all(v.get("skipped_run") for v in summaries.values())}


def _shard_split(
    name: str, utts: Sequence[Utterance], split_dir: Path, opts: PrepareOptions, progress: Callable[[int], None] | None
) -> dict:
    """One split's block: its frames, manifest and done marker (with the content entries the
    merge makes the split's content key of); skipped when its skip key is unchanged."""
    split_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(split_dir)
    (split_dir / "frames.raw").unlink(missing_ok=True)
    key = split_key(utts, opts)
    done_file = split_dir / ".done.json"
    if not opts.force and (split_dir / "frames.npy").exists() and (split_dir / "manifest.jsonl").exists():
        done = read_json(done_file)
        if done.get("key") == key and isinstance(done.get("summary"), dict):
            if progress:
                progress(len(utts))
            return done["summary"] | {"skipped_run": True}
    done_file.unlink(missing_ok=True)
    got = extract_frames(name, utts, split_dir, opts, progress, allow_empty=True)
    write_text(split_dir / "manifest.jsonl", "".join(line + "\n" for line in got.manifest_lines))
    summary = {"speakers": len({u.speaker for u in utts}), "utterances": len(got.manifest_lines), "frames": got.n_rows}
    summary["skipped"] = got.skipped
    write_json(done_file, {"key": key, "files": got.files, "summary": summary})
    return summary


@lock_scope
def merge_shards(corpus, out_dir: str | Path, opts: PrepareOptions, remove_shards: bool = False) -> dict:
    """Join the N shards of ``OUT_DIR/shards`` into OUT_DIR, as a one-machine prepare of the same
    corpus with the same options writes it (see the module's docstring). OUT_DIR and every shard
    folder stay locked until it returns (no shard re-run under it, no second merge), and every
    shard is checked before anything is written. Returns ``prepare.json``."""
    inputs, out_dir = checked_paths(corpus, out_dir, opts, markers=(*PREPARED, SHARDS))
    claim_folder(out_dir)  # one merge at a time (sdmvae_cli.core.lock); the shards are claimed in find_shards
    n, parts = find_shards(out_dir)
    if not n:
        return _merged_already(inputs, out_dir, opts)
    split, per_split = split_utterances(inputs, opts)
    blocks = check_shards(parts, n, opts, split, per_split)  # every refusal is made here, before the first write
    remove_stale_temporaries(out_dir)
    if _json_form(read_json(out_dir / "splits.json")) != _json_form(split):
        write_json(out_dir / "splits.json", split)
    summaries = {}
    for name in SPLITS:
        if not per_split[name]:
            drop_empty_split(name, per_split, out_dir)
        else:
            summaries[name] = _merge_split(per_split[name], blocks[name], out_dir / name, opts)
    info = _unchanged_info(out_dir, inputs, opts, summaries)  # up to date: prepare.json stays as it is
    info = info or write_prepare_info(out_dir, inputs, opts, summaries, run={"merged_shards": n})
    if remove_shards:
        shutil.rmtree(out_dir / SHARDS)
    return info


def _merged_already(inputs: Sequence[Path], out_dir: Path, opts: PrepareOptions) -> dict:
    """No shards left (removed by an earlier ``--remove-shards``): ``prepare.json`` when OUT_DIR
    holds an up-to-date merge of these inputs and options, so that a re-run pipeline goes on."""
    if "merged_shards" in read_json(out_dir / "prepare.json") and not opts.force:
        split, per_split = split_utterances(inputs, opts)
        summaries = {name: _done_summary(out_dir / name, split_key(utts, opts)) for name, utts in per_split.items() if utts}
        absent = all(not (out_dir / name).exists() for name, utts in per_split.items() if not utts)
        if absent and None not in summaries.values() and read_json(out_dir / "splits.json") == _json_form(split):
            info = _unchanged_info(out_dir, inputs, opts, summaries)
            if info is not None:
                return info
    raise SdmvaeError(f"no shards to merge in {out_dir / SHARDS}: run `sdmvae prepare ... --shard I/N` for I = 1..N first")


def _unchanged_info(out_dir: Path, inputs: Sequence[Path], opts: PrepareOptions, summaries: dict) -> dict | None:
    """``prepare.json`` as it is, when every split was up to date and it already says what
    :func:`write_prepare_info` would (but for the fields of the run); None otherwise."""
    info = read_json(out_dir / "prepare.json")
    if not summaries or not all(v.get("skipped_run") for v in summaries.values()):
        return None
    dones = [read_json(out_dir / name / ".done.json") for name in summaries]
    want = prepare_info(inputs, opts, summaries, dones)
    same = all(_json_form(info.get(k)) == _json_form(v) for k, v in want.items())
    return info | {"up_to_date": True} if same else None


def _json_form(value):
    """``value`` as JSON reads it back (tuples as lists): what a file holds is compared so."""
    return json.loads(json.dumps(value))


def find_shards(out_dir: Path) -> tuple[int, list[Path]]:
    """N and the N complete shard folders, in order ((0, []) where there are none); one line
    naming what is missing otherwise."""
    root = out_dir / SHARDS
    found: dict[int, dict[int, Path]] = {}
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        m = re.fullmatch(r"([0-9]+)-of-([0-9]+)", p.name)
        if m and p.is_dir() and 1 <= int(m[1]) <= int(m[2]):
            found.setdefault(int(m[2]), {})[int(m[1])] = p
    if not found:
        return 0, []
    if len(found) > 1:
        raise SdmvaeError(
            f"{root} holds shards of {len(found)} plans (N = {', '.join(map(str, sorted(found)))}); "
            "remove the folders of the plan not wanted, then merge"
        )
    n, have = found.popitem()
    for i in sorted(have):  # a shard being written is refused naming its holder, and none starts under the merge
        claim_folder(have[i])
    missing = [shard_name(i, n) for i in range(1, n + 1) if i not in have]
    unfinished = [shard_name(i, n) for i in sorted(have) if not (have[i] / SHARD_DONE).exists()]
    if missing or unfinished:
        why = [f"missing {', '.join(missing)}"] if missing else []
        why += [f"unfinished (stopped before its {SHARD_DONE}; re-run it) {', '.join(unfinished)}"] if unfinished else []
        raise SdmvaeError(f"cannot merge {root}: {n - len(missing) - len(unfinished)} of {n} shards complete; {'; '.join(why)}")
    return n, [have[i] for i in range(1, n + 1)]


def check_shards(
    parts: Sequence[Path], n: int, opts: PrepareOptions, split: dict, per_split: dict[str, list[Utterance]]
) -> dict[str, list[Block]]:
    """Everything a merge can refuse, before it writes: each shard (:func:`check_shard`), one
    sdmvae version for all, usable audio in every split; returns each split's blocks in order."""
    checked, refused = [], []
    for i, part in enumerate(parts, 1):
        try:
            checked.append(check_shard(part, i, n, opts, split, per_split))
        except SdmvaeError as exc:
            refused.append((part.name, exc))
    if refused:
        raise refusal(refused)
    versions = {version for version, _ in checked}
    if len(versions) > 1:
        raise SdmvaeError(
            f"the shards were made by different sdmvae versions ({', '.join(sorted(versions))}); re-run them with one"
        )
    blocks = {name: [b[name] for _, b in checked] for name in SPLITS if per_split[name]}
    for name, parts_of_split in blocks.items():
        if sum(b.rows for b in parts_of_split) == 0:
            raise no_usable_audio(name, [s for b in parts_of_split for s in b.skipped])
    return blocks


class ShardRefused(SdmvaeError):
    """One shard a merge cannot use; ``why``: its reason in a few words, for a line naming them all."""

    def __init__(self, message: str, why: str):
        super().__init__(message)
        self.why = why


def refusal(refused: Sequence[tuple[str, SdmvaeError]]) -> SdmvaeError:
    """One line naming every refused shard (so that one more merge, not one per shard, follows
    their re-runs); a single shard keeps its own detailed line."""
    if len(refused) == 1:
        return refused[0][1]
    whys = [getattr(exc, "why", "damaged files") for _, exc in refused]
    if len(set(whys)) == 1:
        said = SAID.get(whys[0], f"cannot be merged ({whys[0]})")
        return SdmvaeError(f"shards {', '.join(name for name, _ in refused)} {said}; re-run them")
    named = ", ".join(f"{name} ({why})" for (name, _), why in zip(refused, whys))
    return SdmvaeError(f"cannot merge shards {named}; re-run them")


def check_shard(
    part: Path, i: int, n: int, opts: PrepareOptions, split: dict, per_split: dict[str, list[Utterance]]
) -> tuple[str, dict[str, Block]]:
    """Shard ``i`` of ``n`` was made with these options, this speaker split and the audio as it
    is now (each block's skip key), and its files hold what it recorded; returns the sdmvae
    version that made it and its block of each split."""
    try:
        info = json.loads((part / SHARD_DONE).read_text())
        options = dict(info["options"])
    except (OSError, ValueError, KeyError, TypeError):
        raise SdmvaeError(f"{part / SHARD_DONE}: unreadable; re-run shard {part.name}") from None
    want = opts.key_dict()
    differ = sorted(k for k in set(options) | set(want) if options.get(k) != want.get(k))
    if differ:
        raise ShardRefused(
            f"shard {part.name} was made with other options ({', '.join(differ)}) than this merge's; re-run it with these",
            f"other options: {', '.join(differ)}",
        )
    if info.get("speaker_split") != split:
        raise ShardRefused(f"shard {part.name} {SAID['another speaker split']}; re-run it", "another speaker split")
    blocks = {}
    for name, utts in ((k, v) for k, v in per_split.items() if v):
        lo, hi = block(len(utts), i, n)
        done = read_json(part / name / ".done.json")
        if done.get("key") != split_key(utts[lo:hi], opts):
            raise ShardRefused(
                f"shard {part.name}, {name} split: not made from the audio the corpus holds now "
                "(files changed since, or another corpus); re-run it",
                "changed audio",
            )
        blocks[name] = check_block(part / name, done, opts.stft.n_bins)
    return str(info.get("package_version")), blocks


def _merge_split(utts: Sequence[Utterance], blocks: Sequence[Block], split_dir: Path, opts: PrepareOptions) -> dict:
    """One split from its checked blocks, in order; skipped when its skip key is that of the
    split already there, as :func:`prepare_split` skips."""
    split_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(split_dir)
    key = split_key(utts, opts)
    done_file = split_dir / ".done.json"
    summary = None if opts.force else _done_summary(split_dir, key)
    if summary is not None:
        return summary
    done_file.unlink(missing_ok=True)
    rows = [b.rows for b in blocks]
    concat_frames([b.frames for b in blocks], rows, split_dir / "frames.npy", opts.stft.n_bins)
    paths = {u.utt_id: str(u.path) for u in utts}
    n_utts = concat_manifests([b.manifest for b in blocks], rows, split_dir / "manifest.jsonl", paths)
    speakers = sorted({u.speaker for u in utts})
    write_text(split_dir / "speakers.txt", "\n".join(speakers) + "\n")
    skipped = [s for b in blocks for s in b.skipped]
    summary = {"speakers": len(speakers), "utterances": n_utts, "frames": sum(rows), "skipped": skipped}
    files = [f for b in blocks for f in b.files]
    write_json(done_file, {"key": key, "content_key": content_key(files, opts), "summary": summary})
    return summary


def _done_summary(split_dir: Path, key: str) -> dict | None:
    """The merged split's summary (marked skipped) when its skip key is ``key``, as
    :func:`prepare_split` skips; None when it must be made."""
    done = read_json(split_dir / ".done.json")
    if (split_dir / "frames.npy").exists() and done.get("key") == key and "content_key" in done:
        if isinstance(done.get("summary"), dict):
            return done["summary"] | {"skipped_run": True}
    return None
