"""partition.json and labels.json read straight into arrays (plumbing/index.py) give what
json.loads and the checks of plumbing/data.py give, or step aside for them: a test split or
none, and the labels of every ID, in a split or not."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
from plumbing.data import OPTIONAL, SPLITS, _checked, load_partition
from plumbing.errors import DataError
from plumbing.index import Labels, StringArray, plain_index


def write(data_dir: Path, partition: str | bytes, labels: str | bytes) -> Path:
    data_dir.mkdir(exist_ok=True)
    for name, text in (("partition.json", partition), ("labels.json", labels)):
        path = data_dir / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return data_dir


def as_json(data_dir: Path) -> tuple[dict[str, list[str]], dict[str, int]] | str:
    """What json.loads and load_partition's checks make of data_dir, or their error."""
    try:
        texts = [(data_dir / n).read_bytes().decode() for n in ("partition.json", "labels.json")]
        return _checked(data_dir, *(json.loads(text) for text in texts))
    except (ValueError, DataError) as err:
        return str(err)


def as_lists(index: tuple[dict[str, StringArray], Labels]) -> tuple[dict, dict]:
    """The splits as lists, in their order, and every label, each split's array checked
    against the mapping."""
    partition, labels = index
    lists = {split: list(IDs) for split, IDs in partition.items()}
    classes = {ID: int(c) for ID, c in labels.items()}
    assert len(classes) == len(labels)
    for split, IDs in lists.items():
        assert labels.of(partition[split]).tolist() == [classes[ID] for ID in IDs]
        assert [labels[ID] for ID in IDs] == [classes[ID] for ID in IDs]
    return lists, classes


def plain_data(rng: random.Random, num_ids: int = 40) -> tuple[dict, dict]:
    names = ["id-{}", "é{}", "日本-{}", "a b {}", "x.{}", "{}", "0{}", "-{}-"]
    IDs = rng.sample([rng.choice(names).format(i) for i in range(num_ids)], num_ids)
    cut = rng.randint(1, num_ids - 2)
    partition = {"train": IDs[:cut], "validation": IDs[cut:]}
    if rng.random() < 0.5:  # a test split, held out
        test = rng.randint(cut + 1, num_ids - 1)
        partition |= {"validation": IDs[cut:test], "test": IDs[test:]}
    if rng.random() < 0.5:  # in another order
        partition = dict(reversed(partition.items()))
    labels = {ID: rng.choice([0, 1, 7, 10, 123456789, 2**63 - 1]) for ID in IDs + ["unused"]}
    keys = list(labels)
    rng.shuffle(keys)
    return partition, {ID: labels[ID] for ID in keys}


@pytest.mark.parametrize("seed", range(6))
def test_the_plain_form_is_read_into_arrays_as_json_loads_reads_it(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    partition, labels = plain_data(rng)
    indent = [None, 1, 4][seed % 3]
    data_dir = write(
        tmp_path,
        json.dumps(partition, indent=indent, ensure_ascii=False),
        json.dumps(labels, indent=indent, ensure_ascii=False),
    )

    index = plain_index(data_dir, SPLITS, OPTIONAL)

    assert index is not None  # no escapes: read without json.loads
    assert as_lists(index) == as_json(data_dir)
    assert as_lists(load_partition(data_dir)) == as_json(data_dir)
    read_partition, read_labels = index
    assert list(read_partition) == [s for s in ("train", "validation", "test") if s in partition]
    ID = partition["validation"][-1]
    assert read_labels[ID] == labels[ID] and read_labels["unused"] == labels["unused"]
    assert len(read_labels) == len(labels) and sorted(read_labels.values()) == sorted(
        labels.values()
    )
    assert plain_index(data_dir, SPLITS) is None or "test" not in partition


# Each: text that json.loads reads otherwise than plainly (escapes), or not at all, or into
# something load_partition refuses. plain_index must step aside (None), and load_partition
# must then give json's result, or its error.
UNUSUAL_PARTITIONS = {
    "escaped ID": '{"train": ["a\\"b", "c"], "validation": ["d"]}',
    "ascii-escaped ID": '{"train": ["\\u00e9", "c"], "validation": ["d"]}',
    "empty ID": '{"train": ["", "c"], "validation": ["d"]}',
    "dot ID": '{"train": [".", "c"], "validation": ["d"]}',
    "dot-dot ID": '{"train": ["..", "c"], "validation": ["d"]}',
    "slash in ID": '{"train": ["x/y", "c"], "validation": ["d"]}',
    "duplicate ID": '{"train": ["c", "c"], "validation": ["d"]}',
    "ID in both splits": '{"train": ["c"], "validation": ["c"]}',
    "empty split": '{"train": [], "validation": ["d"]}',
    "one split": '{"train": ["c"]}',
    "a key not a split": '{"train": ["c"], "validation": ["d"], "tests": ["e"]}',
    "empty test split": '{"train": ["c"], "validation": ["d"], "test": []}',
    "test split twice": '{"train": ["c"], "test": ["e"], "validation": ["d"], "test": ["x/y"]}',
    "ID in train and test": '{"train": ["c"], "validation": ["d"], "test": ["c"]}',
    "only a test split": '{"test": ["c"]}',
    "split twice": '{"train": ["c"], "train": ["d"]}',
    "other key": '{"train": ["c"], "valid": ["d"]}',
    "number ID": '{"train": ["c", 1], "validation": ["d"]}',
    "nested list": '{"train": [["c"]], "validation": ["d"]}',
    "trailing comma": '{"train": ["c",], "validation": ["d"]}',
    "missing comma": '{"train": ["c" "e"], "validation": ["d"]}',
    "trailing text": '{"train": ["c"], "validation": ["d"]} x',
    "control character": '{"train": ["c\x01"], "validation": ["d"]}',
    "tab in ID": '{"train": ["c\t"], "validation": ["d"]}',
    "not UTF-8": b'{"train": ["c\xff"], "validation": ["d"]}',
    "byte order mark": '\ufeff{"train": ["c"], "validation": ["d"]}',
    "unclosed": '{"train": ["c"], "validation": ["d"]',
    "odd quotes": '{"train": ["c"], "validation": ["d]}',
    "list": '[["c"], ["d"]]',
    "lone surrogate": '{"train": ["\\ud800", "c"], "validation": ["d"]}',
}
UNUSUAL_LABELS = {
    "escaped key": '{"c": 1, "d": 2, "\\u0065": 3}',
    "key twice": '{"c": 1, "d": 2, "c": 3}',
    "ID without a label": '{"c": 1}',
    "an unlisted ID's label a string": '{"c": 1, "d": 2, "x": "cat"}',
    "an unlisted ID's label negative": '{"c": 1, "d": 2, "x": -1}',
    "no labels": "{}",
    "negative": '{"c": -1, "d": 2}',
    "float": '{"c": 1.0, "d": 2}',
    "exponent": '{"c": 1e3, "d": 2}',
    "leading zero": '{"c": 07, "d": 2}',
    "space in a number": '{"c": 1 2, "d": 2}',
    "2**63": '{"c": ' + str(2**63) + ', "d": 2}',
    "20 digits": '{"c": 12345678901234567890, "d": 2}',
    "string": '{"c": "1", "d": 2}',
    "true": '{"c": true, "d": 2}',
    "null": '{"c": null, "d": 2}',
    "list": '{"c": [1], "d": 2}',
    "missing colon": '{"c" 1, "d": 2}',
    "trailing comma": '{"c": 1, "d": 2,}',
    "form feed": '{"c": 1,\f"d": 2}',
    "nested": '{"c": 1, "d": {"e": 2}}',
    "4,301 digits": '{"c": 1, "d": 2, "e": 1' + "0" * 4300 + "}",
}


@pytest.mark.parametrize(
    ("partition", "labels"),
    [
        (text, '{"c": 1, "d": 2, "e": 3, "x/y": 4, "a\\"b": 5, "": 6}')
        for text in UNUSUAL_PARTITIONS.values()
    ]
    + [('{"train": ["c"], "validation": ["d"]}', text) for text in UNUSUAL_LABELS.values()],
    ids=[f"partition: {name}" for name in UNUSUAL_PARTITIONS]
    + [f"labels: {name}" for name in UNUSUAL_LABELS],
)
def test_anything_else_is_left_to_json_loads(tmp_path: Path, partition: str, labels: str) -> None:
    data_dir = write(tmp_path, partition, labels)
    assert plain_index(data_dir, SPLITS, OPTIONAL) is None
    expected = as_json(data_dir)
    if isinstance(expected, str):
        with pytest.raises(DataError) as error:
            load_partition(data_dir)
        assert expected in str(error.value)  # json's error, with the file named
    else:
        assert as_lists(load_partition(data_dir)) == expected


def test_changed_bytes_are_read_as_json_loads_reads_them_or_left_to_it(tmp_path: Path) -> None:
    """Plain files with a byte deleted, doubled or replaced, at random: whatever plain_index
    accepts, json.loads reads the same."""
    rng = random.Random(0)
    partition, labels = plain_data(rng, num_ids=6)
    texts = [json.dumps(partition, indent=1), json.dumps(labels)]
    accepted = 0
    for trial in range(400):
        changed = list(texts)
        which = trial % 2
        text, at = changed[which], rng.randrange(len(changed[which]))
        byte = rng.choice('"{}[]:, \n0123456789a-\\')
        changed[which] = rng.choice(
            [
                text[:at] + text[at + 1 :],
                text[:at] + text[at] + text[at:],
                text[:at] + byte + text[at + 1 :],
            ]
        )
        data_dir = write(tmp_path / str(trial), *changed)
        index = plain_index(data_dir, SPLITS, OPTIONAL)
        if index is not None:
            accepted += 1
            assert as_lists(index) == as_json(data_dir), changed
    assert 0 < accepted < 400  # some changes leave valid data (a digit for a digit), most not


@pytest.mark.slow
def test_a_million_ids_take_arrays_not_objects(tmp_path: Path) -> None:
    """The point of it all: 26 MB of arrays for a million IDs, not 170 MB of str and dict."""
    IDs = [f"id-{i}" for i in range(1, 1_000_001)]
    partition = {"train": IDs[:800_000], "validation": IDs[800_000:900_000]}
    partition["test"] = IDs[900_000:]
    labels = {ID: i % 10 for i, ID in enumerate(IDs)}
    data_dir = write(tmp_path, json.dumps(partition), json.dumps(labels))
    del IDs, labels

    read_partition, read_labels = plain_index(data_dir, SPLITS, OPTIONAL)

    arrays = [read_partition["train"].buffer, read_partition["train"].offsets] + list(
        read_labels.classes.values()
    )
    assert sum(a.nbytes for a in arrays) < 30e6
    assert read_partition["validation"][0] == "id-800001" and read_labels["id-800001"] == 0
    assert read_partition["test"][-1] == "id-1000000" and read_labels["id-1000000"] == 9
    assert np.array_equal(read_labels.of(read_partition["train"])[:12], [i % 10 for i in range(12)])
