"""Trial lists: reading the VoxCeleb format, matching utterances to cache clips, generating lists."""

from collections import Counter

import pytest

from avbalance.errors import DataError
from avbalance.verification.trials import Trial, generate_trials, read_trials, resolve_trials, write_trials


def test_reads_the_official_format(tmp_path):
    path = tmp_path / "veri_test2.txt"
    path.write_text(
        "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\n\n"
        "0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav\n"
    )
    trials = read_trials(path)
    assert trials == [
        Trial(True, "id10270/x6uYqmx31kE/00001.wav", "id10270/8jEAjG6SegY/00008.wav"),
        Trial(False, "id10270/x6uYqmx31kE/00001.wav", "id10300/ize_eiCFEg0/00003.wav"),
    ]


@pytest.mark.parametrize("line", ["2 a.wav b.wav", "1 a.wav", "1 a.wav b.wav c.wav", "yes a b"])
def test_malformed_line_names_file_and_line(tmp_path, line):
    path = tmp_path / "trials.txt"
    path.write_text(f"1 a.wav b.wav\n{line}\n")
    with pytest.raises(DataError) as error:
        read_trials(path)
    assert str(error.value) == f"{path}: line 2 is not '<1|0> <enrol utterance> <test utterance>': {line!r}"


def test_empty_and_missing_lists(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match=r"empty\.txt: the trial list is empty"):
        read_trials(empty)
    with pytest.raises(DataError, match=r"absent\.txt: cannot read the trial list"):
        read_trials(tmp_path / "absent.txt")


def test_utterances_match_clip_ids_with_or_without_suffix(tmp_path):
    known = {"id1/v/00001", "id1/v/00002", "id2/w/00001", "clip.v2"}
    trials = [Trial(True, "id1/v/00001.wav", "id1/v/00002.mp4"), Trial(False, "clip.v2", "id2/w/00001")]
    resolved = resolve_trials(trials, known, tmp_path / "t.txt", tmp_path / "cache")
    assert resolved == [Trial(True, "id1/v/00001", "id1/v/00002"), Trial(False, "clip.v2", "id2/w/00001")]


def test_missing_utterances_are_counted_once(tmp_path):
    known = {"id1/v/00001", "id2/w/00001"}
    trials = [
        Trial(True, "id1/v/00001.wav", "id1/v/00009.wav"),
        Trial(False, "id1/v/00009.wav", "id3/x/1.wav"),
        Trial(False, "id1/v/00001.wav", "id2/w/00001.wav"),
    ]
    with pytest.raises(DataError) as error:
        resolve_trials(trials, known, tmp_path / "t.txt", tmp_path / "cache")
    assert str(error.value) == (
        f"{tmp_path / 't.txt'}: 2 utterance(s) of the trial list are not in the cache "
        f"{tmp_path / 'cache'} (first: id1/v/00009.wav)"
    )


def test_one_sided_list_is_refused(tmp_path):
    with pytest.raises(DataError, match="needs both target"):
        resolve_trials([Trial(True, "a", "b")], {"a", "b"}, tmp_path / "t.txt", tmp_path)


def balanced_ids(speakers: int, each: int):
    ids = [f"spk{s}/u{u}" for s in range(speakers) for u in range(each)]
    return ids, [clip.split("/")[0] for clip in ids]


@pytest.mark.parametrize("count", [5, 14, 15])  # 15 = every possible target pair: enumerated, not drawn
def test_generated_trials_are_balanced_distinct_and_seeded(count):
    ids, labels = balanced_ids(3, 4)  # 3 * C(4, 2) = 18 target pairs, 48 non-target pairs
    label_of = dict(zip(ids, labels))
    trials = generate_trials(ids, labels, count, seed=1)
    assert Counter(t.target for t in trials) == {True: count, False: count}
    assert all((label_of[t.enrol] == label_of[t.test]) == t.target for t in trials)
    assert all(t.enrol != t.test for t in trials)
    assert len({frozenset((t.enrol, t.test)) for t in trials}) == 2 * count
    assert generate_trials(ids, labels, count, seed=1) == trials
    assert generate_trials(ids, labels, count, seed=2) != trials


def test_generation_refuses_more_pairs_than_the_cache_has():
    ids, labels = balanced_ids(2, 3)  # 6 target pairs
    with pytest.raises(DataError, match="--trials-from-cache 7: the cache allows only 6 distinct target pairs"):
        generate_trials(ids, labels, 7)
    with pytest.raises(DataError, match="at least 1"):
        generate_trials(ids, labels, 0)


def test_written_list_reads_back(tmp_path):
    ids, labels = balanced_ids(3, 3)
    trials = generate_trials(ids, labels, 4, seed=0)
    write_trials(tmp_path / "trials.txt", trials)
    assert read_trials(tmp_path / "trials.txt") == trials
