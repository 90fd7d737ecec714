"""Data streamed from LitData's chunks, in a local directory or in object storage (s3://, gs://,
azure://): for data bigger than a disk, or read by many machines at once.

    python pack_data.py --format stream --output s3://bucket/data   # write data/ there
    python pytorch_script.py --data-format stream --data-dir s3://bucket/data

URL/train and URL/validation (and URL/test, for a test split) hold the samples as the project's
Dataset returns them (without random_augmentation, which runs on every read, as from the
files); URL/index holds partition.json, labels.json and classes.json, if any, written last: a
stream without it was not finished. Every rank
gets the same number of batches, and the loader's place goes into last.pt, so that --resume
goes on inside an epoch. LitData is an optional extra (pip install -e ".[stream]"): only
--data-format stream and --format stream import this module. Credentials and endpoints come
from the usual environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
~/.aws, ...).
"""

import contextlib
import functools
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from plumbing import distributed
from plumbing.data import CLASSES, SPLITS, class_names, digest, is_url, load_partition
from plumbing.errors import DataError, SetupError
from plumbing.seeding import epoch_seed, seed_reads

try:
    import botocore.config
    import litdata
    from litdata.streaming import downloader, item_loader, reader
    from litdata.streaming.serializers import _SERIALIZERS, Serializer
except ModuleNotFoundError:
    raise SetupError(
        'streamed data needs LitData, an optional extra: pip install -e ".[stream]"'
        ' (README.md, "Streaming from object storage")'
    ) from None

INDEX = "index"  # URL/index: partition.json, labels.json (and classes.json), one sample of text
INDEX_FILES = ("partition.json", "labels.json", CLASSES)  # classes.json only if data/ has one
CHUNK_BYTES = "64MB"  # per chunk: large reads from object storage, a few per worker in memory

# That view is cloned above, before anything could write to it
warnings.filterwarnings("ignore", "The given buffer is not writable", UserWarning)

SCRATCH = {"DATA_OPTIMIZER_CACHE_FOLDER": "chunks", "DATA_OPTIMIZER_DATA_CACHE_FOLDER": "data"}

# An S3-compatible server reached over http:// (on premises, or a test's): LitData's faster
# client (obstore) refuses it unless told, which boto3, its other one, does not.
downloader._OBSTORE_CLIENT_OPTIONS = {**downloader._OBSTORE_CLIENT_OPTIONS, "allow_http": "true"}

# A chunk that cannot be downloaded (the server stopped, the network went down) fails the read
# that waits for it, with the reason, which plumbing.loader.loader_failure says in one line:
# LitData's thread that downloads it need not print its traceback as well.
reader.PrepareChunksThread._report_crash = lambda self, exc: None


def _quiet_closed_loop(print_error: object) -> object:
    """When one download fails, LitData closes the event loop of the others, and each that
    finishes afterwards reports, through sys.excepthook, that the loop is closed: noise."""

    def excepthook(exc_type: type, exc: BaseException, tb: object) -> None:
        if not (
            exc_type is RuntimeError
            and str(exc) == "Event loop is closed"
            and tb is not None
            and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"
        ):
            print_error(exc_type, exc, tb)

    return excepthook


sys.excepthook = _quiet_closed_loop(sys.excepthook)


class Refused(Serializer):
    """What a stream written here never holds: pickle, and decoders of files, images, video...
    A chunk that names one is refused on read, as torch.load(..., weights_only=True) refuses
    code: a crafted chunk cannot run any."""

    def __init__(self, name: str) -> None:
        self.name = name

    def serialize(self, item: object) -> tuple[bytes, str | None]:
        raise DataError(f"streams written here hold tensors and integers only, not {item!r}")

    def deserialize(self, data: bytes) -> object:
        raise DataError(
            f"a chunk of this stream holds data in LitData's {self.name!r} format, which could"
            " run code or decode untrusted files: refused. Write the stream with"
            " `python pack_data.py --format stream`"
        )

    def can_serialize(self, item: object) -> bool:
        return False


WRITTEN = ("tensor", "no_header_tensor", "int", "str")  # what write() stores, and read reads
SAFE = {name: Refused(name) for name in _SERIALIZERS if name not in WRITTEN}


def options(url: str) -> dict:
    """LitData's storage_options for url. For S3, AWS_MAX_ATTEMPTS tries (5 by default) of each
    request, rather than LitData's 1,000, which keep a run waiting for hours on a server that is
    down or a bucket that is not there."""
    if not url.startswith("s3://"):
        return {}
    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", 5))
    retries = {"max_attempts": attempts, "mode": "standard"}
    return {"config": botocore.config.Config(retries=retries, connect_timeout=10)}


def location(data_dir: str | Path) -> str:
    """A URL as it is, a local path made absolute (LitData takes a local path as a URL)."""
    return str(data_dir) if is_url(data_dir) else str(Path(data_dir).resolve())


# Writing: pack_data.py --format stream


def sample(dataset: torch.utils.data.Dataset, index: int) -> dict:
    """One sample of the split as its Dataset returns it (no augmentation), and its index."""
    X, y = dataset[index]
    return {"X": X, "y": int(y), "index": index}


def index_sample(data_dir: Path, _: int) -> dict:
    return {
        name: (data_dir / name).read_text(encoding="utf-8")
        for name in INDEX_FILES
        if (data_dir / name).exists()
    }


def write(data_dir: Path, output: str, dataset_class: type, num_workers: int) -> None:
    """Write each split of data_dir, as dataset_class reads it, into LitData chunks at output
    (a directory or a URL), then the index: until it is written, the stream is unfinished.
    The samples go in a random order (the same every time): LitData shuffles chunks, and
    samples within a chunk, so a split listed by class would otherwise give batches of one
    class."""
    partition, labels = load_partition(data_dir)
    url = location(output)
    with reaching(output):
        for split, IDs in partition.items():  # the test split's too
            dataset = dataset_class(IDs, labels, data_dir)
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
            optimize(
                functools.partial(sample, dataset), order.tolist(), f"{url}/{split}", num_workers
            )
        optimize(functools.partial(index_sample, Path(data_dir)), [0], f"{url}/{INDEX}", 1)


@contextlib.contextmanager
def reaching(where: str | Path, missing: str = "") -> Iterator[None]:
    """Errors of object storage (no such bucket or key, credentials refused, no server) as one
    line that names where, rather than a client library's traceback; missing: what to say when
    where does not exist."""
    try:
        yield
    except Exception as err:
        library = type(err).__module__.split(".")[0]
        if library not in ("botocore", "boto3", "s3transfer", "obstore") and not isinstance(
            err, (FileNotFoundError, ConnectionError)
        ):
            raise
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        not_found = ("(404)", "NoSuchKey", "does not exist", "Not Found")
        if missing and (isinstance(err, FileNotFoundError) or any(n in reason for n in not_found)):
            if "NoSuchBucket" not in reason:
                raise DataError(f"{where}: {missing}") from None
        raise DataError(
            f"{where}: {reason or type(err).__name__}: check the URL, that its bucket exists,"
            " and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,"
            " ~/.aws, ...)"
        ) from None


def optimize(fn: functools.partial, inputs: list[int], output_dir: str, num_workers: int) -> None:
    """litdata.optimize, quiet and in order, with scratch directories of its own (by default,
    LitData's are /tmp/chunks and /tmp/data, which two packs at once would share)."""
    scratch = tempfile.mkdtemp(prefix="litdata-")
    before = {name: os.environ.get(name) for name in SCRATCH}
    os.environ.update({name: os.path.join(scratch, part) for name, part in SCRATCH.items()})
    try:
        litdata.optimize(
            fn=fn,
            inputs=inputs,
            output_dir=output_dir,
            storage_options=options(output_dir),
            chunk_bytes=CHUNK_BYTES,
            num_workers=max(1, min(num_workers, len(inputs))),
            mode="overwrite",
            keep_data_ordered=True,
            verbose=False,
            # Forked, its processes have the allow_http above; spawned, they would not.
            start_method="fork" if sys.platform == "linux" else None,
        )
        left = sorted(Path(scratch).rglob("chunk-*.bin"))
        if left:  # LitData reports a failed upload, and goes on
            raise DataError(
                f"{len(left)} chunks of {output_dir} could not be written there (LitData's"
                " messages above say why): check the URL, the bucket and its credentials"
            )
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(scratch, ignore_errors=True)


# Reading: pytorch_script.py --data-format stream


class PyTreeLoader(item_loader.PyTreeLoader):  # LitData checks the name against the stream's
    """LitData's reader of samples from a chunk file, reading one sample where one is read.
    For a chunk that two DataLoader workers share, which it does not memory-map, LitData's
    reads the whole file (64 MB) for every sample, to look for a compressed layout that the
    streams written here never have: 15 times slower with 2 workers, measured."""

    def _load_batched_item(self, chunk_index: int, chunk_filepath: str, table_idx: int) -> object:
        if self._mmap is None and not self._config.get("compression"):  # read the sample alone
            return item_loader._BATCH_SKIP
        return super()._load_batched_item(chunk_index, chunk_filepath, table_idx)


class StreamedSplit(litdata.StreamingDataset):
    """A split of the stream, each sample as (X, y) like the Dataset's, with the Dataset's
    random_augmentation on every read of a training sample (seeded by the seed, the epoch, the
    rank and the sample: a resumed epoch draws what it drew)."""

    def __init__(
        self,
        url: str,
        dataset: torch.utils.data.Dataset,
        shuffle: bool,
        seed: int,
        subsample: float = 1.0,  # this share of it (bench_loader.py --max-samples)
    ) -> None:
        super().__init__(
            url,
            shuffle=shuffle,
            seed=seed,
            subsample=subsample,
            # Each sample decoded when read: LitData's default decodes a window of samples
            # around it, which a shuffled read mostly discards (7 times slower, measured).
            batch_decode=0,
            item_loader=PyTreeLoader(),
            item_shuffle_window="full",  # rather than within blocks of 256 samples
            serializers=SAFE,
            storage_options=options(url),
        )
        self.dataset, self.url, self.seed = dataset, url, seed

    def __getitem__(self, index: object) -> tuple[torch.Tensor, int]:
        item = super().__getitem__(index)
        X = item["X"].clone()  # LitData's is a view of its read-only chunk
        if self.dataset.augment:
            seed_reads(epoch_seed(self.seed, self.current_epoch, part=1 + item["index"]))
            X = self.dataset.random_augmentation(X)
        return X, item["y"]


def read_index(url: str) -> tuple[dict, dict, str, list[str] | None]:
    """partition, labels and the class names from URL/index, and the digest of the first two
    (as plumbing.data.digest's)."""
    index = litdata.StreamingDataset(
        f"{url}/{INDEX}", serializers=SAFE, storage_options=options(url)
    )[0]
    with tempfile.TemporaryDirectory() as copy:  # checked and digested as the files are
        for name in INDEX_FILES:
            if name in index:
                (Path(copy) / name).write_text(index[name], encoding="utf-8")
        return *load_partition(copy), digest(copy), class_names(copy)


def open_splits(
    settings: object, dataset_class: type, splits: tuple[str, ...] = SPLITS
) -> tuple[dict, tuple]:
    """labels, and these splits of the stream at settings.data_dir, each with the digest of its
    index and the class names, as index_digest and class_names (plumbing/facts.py)."""
    data_dir = settings.data_dir
    url = location(data_dir)
    unfinished = (
        f"no finished stream there (no {INDEX}/, or no such bucket): write one with `python"
        f" pack_data.py --format stream --output {data_dir}`"
    )
    with reaching(data_dir, missing=unfinished):
        partition, labels, index_digest, names = read_index(url)
    opened = []
    for split in splits:
        if split not in partition:
            raise DataError(f"{data_dir}/{INDEX}: its partition.json has no {split!r} split")
        # The Dataset for its random_augmentation only: it reads no file
        dataset = dataset_class([], labels, data_dir, augment=split == "train")
        with reaching(f"{data_dir}/{split}"):
            opened.append(StreamedSplit(f"{url}/{split}", dataset, settings.shuffle, settings.seed))
        opened[-1].index_digest, opened[-1].class_names = index_digest, names
    distributed.say(f"data: {data_dir} (streamed)")
    return labels, tuple(opened)
