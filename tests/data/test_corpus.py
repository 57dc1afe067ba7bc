"""Layout discovery and speaker splits (no audio decoding needed: files are only listed)."""

import json

import pytest

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.data.corpus import check_split, discover, fixed_split, load_split_file, random_split


def touch(root, *rels):
    for r in rels:
        p = root / r
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    return root


def test_librispeech_speaker_is_the_first_level(tmp_path):
    root = touch(tmp_path, "103/1240/103-1240-0000.flac", "103/1241/103-1241-0001.flac", "1034/121119/1034-121119-0000.flac")
    utts = discover(root, "librispeech")
    assert [u.speaker for u in utts] == ["103", "103", "1034"]
    assert utts[0].utt_id == "103/1240/103-1240-0000"


def test_vctk_keeps_mic1_only_and_parent_speaker(tmp_path):
    root = touch(
        tmp_path,
        "wav48_silence_trimmed/p225/p225_001_mic1.flac",
        "wav48_silence_trimmed/p225/p225_001_mic2.flac",
        "wav48_silence_trimmed/p226/p226_001_mic1.flac",
    )
    utts = discover(root, "vctk")
    assert [(u.speaker, u.path.name) for u in utts] == [("p225", "p225_001_mic1.flac"), ("p226", "p226_001_mic1.flac")]


def test_folder_speaker_is_the_relative_parent(tmp_path):
    root = touch(tmp_path, "a/spk1/x.wav", "b/spk1/y.wav", "loose.wav", "a/spk2/notes.txt")
    utts = discover(root, "folder")
    assert sorted(u.speaker for u in utts) == ["a/spk1", "b/spk1"]  # same folder name, different speakers


def test_tcd_timit_volunteers_and_optional_lipspeakers(tmp_path):
    root = touch(
        tmp_path,
        "volunteers/01M/straightcam/sa1.wav",
        "volunteers/09F/Clips/straightcam/sx2.wav",
        "lipspeakers/Lipspkr1/straightcam/sa1.wav",
    )
    assert [u.speaker for u in discover(root, "tcd-timit")] == ["01M", "09F"]
    assert {u.speaker for u in discover(root, "tcd-timit", include_lipspeakers=True)} == {"01M", "09F", "Lipspkr1"}


def test_duplicate_ids_are_refused(tmp_path):
    root = touch(tmp_path, "s/u.wav", "s/u.flac")
    with pytest.raises(SdmvaeError, match="not unique"):
        discover(root, "folder")


def _utts(tmp_path, n):
    return discover(touch(tmp_path, *[f"s{i:02d}/u.wav" for i in range(n)]), "folder")


def test_random_split_is_seeded_disjoint_and_honours_counts_fractions_lists(tmp_path):
    utts = _utts(tmp_path, 20)
    a = random_split(utts, "3", "0.25", seed=1)
    assert (len(a["train"]), len(a["validation"]), len(a["test"])) == (12, 3, 5)
    assert a == random_split(utts, "3", "0.25", seed=1) and a != random_split(utts, "3", "0.25", seed=2)
    assert set(a["train"]).isdisjoint(a["validation"]) and set(a["train"]).isdisjoint(a["test"])
    b = random_split(utts, "s00,s01", "0", seed=0)
    assert b["validation"] == ["s00", "s01"] and b["test"] == [] and len(b["train"]) == 18
    with pytest.raises(SdmvaeError, match="not in the corpus"):
        random_split(utts, "nobody", "1", seed=0)


def test_split_files(tmp_path):
    utts = _utts(tmp_path / "c", 5)
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"validation": ["s01"], "test": ["s02"]}))
    s = fixed_split(utts, load_split_file(f), strict=True)
    assert s == {"train": ["s00", "s03", "s04"], "validation": ["s01"], "test": ["s02"]}
    f.write_text(json.dumps({"validation": ["s01"]}))
    with pytest.raises(SdmvaeError, match="needs 'validation' and 'test'"):
        load_split_file(f)
    f.write_text("{not json")
    with pytest.raises(SdmvaeError, match="not valid JSON"):
        load_split_file(f)
    with pytest.raises(SdmvaeError, match="in both"):
        check_split({"train": ["a"], "validation": ["a"], "test": []})
    with pytest.raises(SdmvaeError, match="validation split has no speakers"):
        check_split({"train": ["a"], "validation": [], "test": ["b"]})
