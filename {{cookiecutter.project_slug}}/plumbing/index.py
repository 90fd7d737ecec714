"""The data's index, partition.json and labels.json, kept as arrays rather than Python objects.

A million IDs as a list of str and a dict take about 170 MB, and json.loads makes them all
before anything can be dropped; as arrays they take 26 MB. plain_index() reads the two files
straight into arrays when they are in the form the project's tools write (no escapes in the
strings, labels plain integers), and returns None for anything else, which plumbing/data.py
then reads with json.loads: the same result, or the error that names what is wrong.
"""

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

QUOTE, BACKSLASH, SLASH = ord('"'), ord("\\"), ord("/")
FNV_PRIME = np.uint64(0x100000001B3)
BLOCK = 1 << 18  # strings at a time: the temporary arrays stay a few MB


class StringArray(Sequence):
    """The IDs as one UTF-8 buffer and the offsets into it: memory follows their total length,
    not the longest ID times their number (as NumPy's fixed-width str arrays do). Two arrays,
    not a list of str: a DataLoader worker that reads a Python object writes its reference
    count, which copies the page holding it into the worker (about 62 MB per million IDs and
    worker over an epoch)."""

    def __init__(self, strings: Sequence[str]) -> None:
        if isinstance(strings, StringArray):  # shared, not copied
            self.offsets, self.buffer = strings.offsets, strings.buffer
            return
        encoded = [s.encode("utf-8") for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    @classmethod
    def of(cls, buffer: np.ndarray, offsets: np.ndarray) -> "StringArray":
        strings = cls.__new__(cls)
        strings.buffer, strings.offsets = buffer, offsets
        return strings

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self, rows: np.ndarray) -> "StringArray":
        """The strings at rows, in their order, in a buffer of their own."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return StringArray.of(self.buffer[positions], offsets)

    def __getitem__(self, index: int | slice) -> str | list[str]:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return self.buffer[self.offsets[index] : self.offsets[index + 1]].tobytes().decode()

    def __iter__(self) -> Iterator[str]:
        data, offsets = self.buffer.tobytes(), self.offsets.tolist()
        return (data[a:b].decode() for a, b in itertools.pairwise(offsets))

    def hashes(self, rows: np.ndarray | None = None) -> np.ndarray:
        """64-bit FNV-1a of the bytes of each string (of rows), a byte position at a time for
        a block of strings at once."""
        rows = np.arange(len(self)) if rows is None else rows
        h = np.full(len(rows), 0xCBF29CE484222325, dtype=np.uint64)
        for block in range(0, len(rows), BLOCK):
            starts = self.offsets[rows[block : block + BLOCK]]
            lengths = self.offsets[rows[block : block + BLOCK] + 1] - starts
            part = h[block : block + BLOCK]
            for k in range(int(lengths.max(initial=0))):
                longer = np.flatnonzero(lengths > k)
                part[longer] = (part[longer] ^ self.buffer[starts[longer] + k]) * FNV_PRIME
        return h

    def same(self, rows: np.ndarray, other: "StringArray", other_rows: np.ndarray) -> np.ndarray:
        """Whether self[rows[i]] == other[other_rows[i]], for each i."""
        same = np.zeros(len(rows), dtype=bool)
        for block in range(0, len(rows), BLOCK):
            mine, theirs = rows[block : block + BLOCK], other_rows[block : block + BLOCK]
            starts, other_starts = self.offsets[mine], other.offsets[theirs]
            lengths = self.offsets[mine + 1] - starts
            part = same[block : block + BLOCK]
            part[:] = lengths == other.offsets[theirs + 1] - other_starts
            for k in range(int(lengths.max(initial=0))):
                both = np.flatnonzero(part & (lengths > k))
                byte = self.buffer[starts[both] + k]
                part[both] = byte == other.buffer[other_starts[both] + k]
        return same


class Labels(Mapping):
    """labels.json's {ID: class}: each split's classes in the order of its IDs, then those of
    the IDs in no split (kept, not dropped). labels[ID] works as on a dict (the first one
    hashes every ID, once); a Dataset given partition[split] itself takes that split's array
    (labels_of)."""

    def __init__(
        self,
        partition: dict[str, StringArray],
        classes: dict[str, np.ndarray],
        unlisted: tuple[StringArray, np.ndarray] | None = None,
    ) -> None:
        self.partition = partition
        # Each group of IDs and its classes: the splits, then "" for the IDs in none
        self.groups, self.classes = dict(partition), dict(classes)
        if unlisted is not None and len(unlisted[0]):
            self.groups[""], self.classes[""] = unlisted
        self._index: tuple[np.ndarray, np.ndarray] | None = None

    def of(self, list_IDs: Sequence[str]) -> np.ndarray:
        """The class of each ID of list_IDs, in its order."""
        for split, IDs in self.partition.items():
            if list_IDs is IDs:
                return self.classes[split]
        return np.fromiter((self[ID] for ID in list_IDs), np.int64, len(list_IDs))

    def __getitem__(self, ID: str) -> int:
        if self._index is None:
            hashes = np.concatenate([IDs.hashes() for IDs in self.groups.values()])
            order = np.argsort(hashes, kind="stable")
            self._index = hashes[order], order
        hashes, order = self._index
        (h,) = StringArray([ID]).hashes() if isinstance(ID, str) else (None,)
        if h is not None:
            for row in order[np.searchsorted(hashes, h) : np.searchsorted(hashes, h, "right")]:
                group, i = self._locate(int(row))
                if self.groups[group][i] == ID:
                    return int(self.classes[group][i])
        raise KeyError(ID)

    def _locate(self, row: int) -> tuple[str, int]:
        for group, IDs in self.groups.items():
            if row < len(IDs):
                return group, row
            row -= len(IDs)
        raise IndexError(row)

    def __iter__(self) -> Iterator[str]:
        for IDs in self.groups.values():
            yield from IDs

    def __len__(self) -> int:
        return sum(len(IDs) for IDs in self.groups.values())

    def values(self) -> list[int]:  # type: ignore[override]
        return np.concatenate(list(self.classes.values())).tolist()

    def items(self) -> Iterable[tuple[str, int]]:  # type: ignore[override]
        return zip(self, self.values(), strict=True)


def plain_index(
    data_dir: Path, splits: tuple[str, ...], optional: tuple[str, ...] = ()
) -> tuple[dict[str, StringArray], Labels] | None:
    """data_dir's partition.json (each of splits, and those of optional it holds) and
    labels.json read into arrays, with every check of plumbing.data.load_partition passed; or
    None where they are not in the plain form, or a check fails (json.loads then reads them,
    and says what is wrong). One file at a time, and little kept of each: the peak memory is
    about what the arrays need."""
    found = _partition(data_dir / "partition.json", splits, optional)
    labels_found = found and _labels(data_dir / "labels.json")
    if not labels_found:
        return None
    (IDs, rows), (keys, numbers) = found, labels_found
    listed = np.concatenate([np.arange(*rows[split]) for split in rows])
    # Where each listed ID is in labels.json: both sorted by hash, and the bytes compared
    key_hashes = keys.hashes()
    key_order = np.argsort(key_hashes, kind="stable")
    key_hashes = key_hashes[key_order]
    if (key_hashes[1:] == key_hashes[:-1]).any():  # a key twice (the last counts), or alike
        return None
    ID_hashes = IDs.hashes(listed)
    ID_order = np.argsort(ID_hashes, kind="stable")
    ID_hashes = ID_hashes[ID_order]
    if (ID_hashes[1:] == ID_hashes[:-1]).any():  # an ID twice: json.loads names it
        return None
    at = np.minimum(np.searchsorted(key_hashes, ID_hashes), len(key_order) - 1)
    del key_hashes, ID_hashes
    key_rows = np.empty_like(ID_order)
    key_rows[ID_order] = key_order[at]
    del key_order, ID_order, at
    if not IDs.same(listed, keys, key_rows).all():  # an ID without a label
        return None

    partition, classes, start = {}, {}, 0
    for split, (first, stop) in rows.items():
        partition[split] = StringArray.of(IDs.buffer, IDs.offsets[first : stop + 1])
        classes[split] = numbers[key_rows[start : start + stop - first]]
        start += stop - first
    unlisted = np.ones(len(keys), dtype=bool)  # labels of IDs in no split: kept too
    unlisted[key_rows] = False
    unlisted = np.flatnonzero(unlisted)
    return partition, Labels(partition, classes, (keys.take(unlisted), numbers[unlisted]))


def _partition(
    path: Path, splits: tuple[str, ...], optional: tuple[str, ...]
) -> tuple[StringArray, dict[str, tuple[int, int]]] | None:
    """partition.json's strings, and the rows of each split's IDs among them, in the order of
    splits, then optional."""
    found = _strings(path)
    if found is None:
        return None
    IDs, tokens = found
    # {"train": ["id-1", ...], "validation": [...]}, each string now a lone quote: each list
    # ends at a "]", and its key is the string after the list before it.
    ends = np.searchsorted(np.flatnonzero(tokens == QUOTE), np.flatnonzero(tokens == ord("]")))
    keys = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    lengths = ends - keys - 1
    if len(ends) == 0 or lengths.min() < 1:
        return None
    expected = b"{" + b",".join(b'":[' + _list(int(n)) + b"]" for n in lengths) + b"}"
    if tokens.tobytes() != expected:
        return None
    found_rows = {IDs[int(k)]: (int(k) + 1, int(end)) for k, end in zip(keys, ends, strict=True)}
    allowed = (*splits, *optional)
    if len(found_rows) != len(ends) or not set(splits) <= set(found_rows) <= set(allowed):
        return None
    rows = {split: found_rows[split] for split in allowed if split in found_rows}
    lengths = np.diff(IDs.offsets)
    short = np.flatnonzero(lengths <= 2)  # "", "." and ".." are not file names
    if (lengths == 0).any() or any(IDs[int(row)] in (".", "..") for row in short):
        return None
    if (IDs.buffer == SLASH).any():  # json.loads looks closer
        return None
    return IDs, rows


def _labels(path: Path) -> tuple[StringArray, np.ndarray] | None:
    """labels.json's keys, and their labels."""
    found = _strings(path)
    if found is None or len(found[0]) == 0:
        return None
    keys, tokens = found
    numbers = _numbers(tokens, len(keys))
    return None if numbers is None else (keys, numbers)


def _strings(path: Path) -> tuple[StringArray, np.ndarray] | None:
    """Every JSON string in the file, as a StringArray, and what lies between them without
    whitespace, each string a lone quote; None if the file is missing or not UTF-8, a string
    has an escape or a control character, or whitespace splits a number in two."""
    try:
        text = path.read_bytes()
        text.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    data = np.frombuffer(text, dtype=np.uint8)
    if (data == BACKSLASH).any():
        return None
    quotes = np.flatnonzero(data == QUOTE)
    if len(quotes) % 2:
        return None
    opening, closing = quotes[0::2], quotes[1::2]
    inside = np.zeros(len(data), dtype=np.int8)
    inside[opening[closing > opening + 1] + 1] = 1  # not for an empty string
    inside[closing[closing > opening + 1]] = -1
    inside = np.cumsum(inside, dtype=np.int8, out=inside).view(bool)  # between a pair of quotes
    buffer = data[inside]
    if (buffer < 0x20).any():  # JSON does not allow them unescaped
        return None
    inside[closing] = True
    tokens = data[np.logical_not(inside, out=inside)]
    del inside, data, text
    numbers = len(_digit_runs(tokens)[0])
    tokens = tokens[(tokens != 32) & (tokens != 10) & (tokens != 13) & (tokens != 9)]
    if len(_digit_runs(tokens)[0]) != numbers:  # whitespace in a number: "1 2" is not 12
        return None
    offsets = np.zeros(len(opening) + 1, dtype=np.int64)
    np.cumsum(closing - opening - 1, out=offsets[1:])
    return StringArray.of(buffer, offsets), tokens


def _list(length: int) -> bytes:
    return b'"' + b',"' * (length - 1)


def _digit_runs(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of digits starts in tokens, and its length."""
    digit = ((tokens >= ord("0")) & (tokens <= ord("9"))).view(np.int8)
    step = np.diff(digit, prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(step == 1)
    return starts, np.flatnonzero(step == -1) - starts


def _numbers(tokens: np.ndarray, count: int) -> np.ndarray | None:
    """The labels of {"id-1": 3, ...}, each key a lone quote in tokens; None if tokens has
    another form, or a label is not an integer 0 to 2**63 - 1 as JSON writes it."""
    starts, lengths = _digit_runs(tokens)
    if len(starts) != count or (lengths > 19).any():  # 19 digits fit in 64 bits
        return None
    if (tokens[starts[lengths > 1]] == ord("0")).any():  # 07 is not JSON
        return None
    digit = (tokens >= ord("0")) & (tokens <= ord("9"))
    shape = np.where(digit, np.uint8(ord("n")), tokens)
    digit[starts] = False  # each number one n
    if shape[~digit].tobytes() != b"{" + b'":n,' * (count - 1) + b'":n}':
        return None
    numbers = np.zeros(count, dtype=np.uint64)
    for k in range(int(lengths.max(initial=0))):
        longer = np.flatnonzero(lengths > k)
        numbers[longer] = numbers[longer] * np.uint64(10) + (tokens[starts[longer] + k] - ord("0"))
    if (numbers >= 2**63).any():  # what the int64 labels cannot hold
        return None
    return numbers.astype(np.int64)
