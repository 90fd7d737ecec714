"""The article's loader against a generated project's per-file and packed loaders, on the same data.

    python benchmarks/loaders.py                 # bakes a project into a temporary directory
    python benchmarks/loaders.py --repeats 5 --small 20000 --large 2000

For each sample shape (3x32x32 and 3x224x224, float32) it writes the data with the project's
make_sample_data.py, packs it with pack_data.py, writes it as a stream (pack_data.py --format
stream) to a directory and to an S3 server on 127.0.0.1 (moto's, started here), reads it once to
warm the page cache, then times one epoch of the training split per loader, --repeats times,
and prints medians and ratios measured in this one run. A stream from S3 is timed cold (a new
chunk cache each epoch: every chunk downloaded) and cached (LitData's cache warm). Then it
measures DataLoader worker memory: private memory of two workers after a million samples drawn
from 1,000 or from 1,000,000 IDs.
"""

import argparse
import contextlib
import gc
import json
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from cookiecutter.main import cookiecutter

ROOT = Path(__file__).resolve().parents[1]


class ArticleDataset(torch.utils.data.Dataset):
    """The article's Dataset, exactly as the article wrote it."""

    def __init__(self, list_IDs, labels):
        "Initialization"
        self.labels = labels
        self.list_IDs = list_IDs

    def __len__(self):
        "Denotes the total number of samples"
        return len(self.list_IDs)

    def __getitem__(self, index):
        "Generates one sample of data"
        # Select sample
        ID = self.list_IDs[index]

        # Load data and get label
        X = torch.load("data/" + ID + ".pt")
        y = self.labels[ID]

        return X, y


def epoch_rate(loader: torch.utils.data.DataLoader) -> float:
    """Samples per second over one epoch, worker start-up included."""
    start = time.perf_counter()
    num_samples = sum(len(y) for _X, y in loader)
    return num_samples / (time.perf_counter() - start)


def gather_rate(gather: Callable[[np.ndarray], torch.Tensor], num_samples: int) -> float:
    """Samples per second of random 64-row gathers from the memory map, and nothing else."""
    order = np.random.default_rng(0).permutation(num_samples)
    start = time.perf_counter()
    for i in range(0, num_samples, 64):
        gather(order[i : i + 64])
    return num_samples / (time.perf_counter() - start)


@contextlib.contextmanager
def s3_server(log: Path) -> Iterator[None]:
    """An S3 server on 127.0.0.1 (moto's) with a bucket "bucket", and this process's environment
    pointing boto3, LitData and the scripts it starts at it; stopped afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(300):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            time.sleep(0.1)
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
        import boto3

        boto3.client("s3").create_bucket(Bucket="bucket")
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


def streamed(url: str, cache: Path | None = None) -> torch.utils.data.Dataset:
    """The stream's training split, as pytorch_script.py --data-format stream reads it, with
    LitData's chunk cache in cache (a URL's; a directory is read where it is)."""
    import litdata.utilities.dataset_utilities as cache_of
    from my_classes import Dataset
    from plumbing import loader

    if cache is not None:
        cache_of._LITDATA_CACHE_DIR = str(cache)
    args = argparse.Namespace(data_dir=url, shuffle=True, seed=0)
    with contextlib.redirect_stdout(None):  # its "data: URL (streamed)"
        return loader.open_stream(args, Dataset)[1][0]


def measure_shape(project: Path, shape: str, num_samples: int, repeats: int) -> dict[str, float]:
    """Median samples/s of each loader on num_samples samples of this shape."""
    workdir = project.parent / f"data-{shape.replace(',', 'x')}"
    workdir.mkdir()
    data = workdir / "data"
    run = [sys.executable]
    subprocess.run(
        [*run, "make_sample_data.py", "--data-dir", str(data), "--shape", shape]
        + ["--num-samples", str(num_samples)],
        cwd=project,
        check=True,
    )
    subprocess.run([*run, "pack_data.py", "--data-dir", str(data)], cwd=project, check=True)
    bucket = f"s3://bucket/{workdir.name}"
    for output in (workdir / "stream", bucket):
        pack = [*run, "pack_data.py", "--data-dir", str(data), "--format", "stream"]
        subprocess.run([*pack, "--output", str(output)], cwd=project, check=True)

    import argparse

    from my_classes import Dataset
    from plumbing import loader
    from plumbing.data import load_partition
    from plumbing.loader import usable_cpus
    from plumbing.packed import PACKED, PackedDataset

    os.chdir(workdir)  # the article's loader reads data/<ID>.pt from the working directory
    partition, labels = load_partition("data")
    cpus = usable_cpus()
    args = argparse.Namespace(seed=0, prefetch_factor=2, loader_timeout=0)

    def generator(dataset: torch.utils.data.Dataset | Callable, num_workers: int):
        """As pytorch_script.py makes its training_generator, the article's params completed;
        dataset: or what makes a new one for each epoch."""
        params = {"batch_size": 64, "shuffle": True, "num_workers": num_workers}
        return lambda: loader.make(
            dataset() if callable(dataset) else dataset, params, args, torch.device("cpu")
        )

    cold = iter(range(10**9))  # each cold epoch: a new, empty chunk cache

    def downloaded() -> torch.utils.data.Dataset:
        shutil.rmtree(workdir / "cache", ignore_errors=True)
        return streamed(bucket, workdir / "cache" / str(next(cold)))

    # The training set, as training reads it: the user's Dataset, augmentation on (a no-op
    # until you write one), or the packed copy of what it reads.
    files = Dataset(partition["train"], labels, "data", augment=True)
    packed = PackedDataset(files, Path("data") / PACKED / "train")
    article_params = {"batch_size": 64, "shuffle": True, "num_workers": 6}  # the article's
    loaders = {
        "article, 6 workers": lambda: torch.utils.data.DataLoader(
            ArticleDataset(partition["train"], labels), **article_params
        ),
        "files, 0 workers": generator(files, 0),
        f"files, {cpus} workers": generator(files, cpus),
        "packed, 0 workers": generator(packed, 0),
        f"packed, {cpus} workers": generator(packed, cpus),
        "stream, directory, 0 workers": generator(streamed(str(workdir / "stream")), 0),
        f"stream, directory, {cpus} workers": generator(streamed(str(workdir / "stream")), cpus),
        "stream, S3, cold, 0 workers": generator(downloaded, 0),
        f"stream, S3, cold, {cpus} workers": generator(downloaded, cpus),
        "stream, S3, cached, 0 workers": generator(streamed(bucket, workdir / "cached"), 0),
        f"stream, S3, cached, {cpus} workers": generator(
            streamed(bucket, workdir / "cached"), cpus
        ),
    }
    # Warm the page cache (every file read once), and the S3 stream's chunk cache
    for name in ("files, 0 workers", "packed, 0 workers", "stream, directory, 0 workers"):
        epoch_rate(loaders[name]())
    epoch_rate(loaders["stream, S3, cached, 0 workers"]())
    results = {}
    for name, make in loaders.items():
        results[name] = statistics.median(epoch_rate(make()) for _ in range(repeats))
    X = np.load(Path("data") / PACKED / "train" / "X.npy", mmap_mode="r")
    gathers = {
        "limit: NumPy gathers, 1 thread": lambda rows: torch.from_numpy(X[rows]),
        "limit: torch gathers, all threads": lambda rows: packed.X.index_select(
            0, torch.from_numpy(rows)
        ),
    }
    for name, gather in gathers.items():
        results[name] = statistics.median(gather_rate(gather, len(X)) for _ in range(repeats))
    os.chdir(project)
    shutil.rmtree(workdir / "cache", ignore_errors=True)
    return results


def worker_memory(storage: str, num_IDs: int, freeze: bool) -> float:
    """Mean private memory (MB) of two workers after a million samples from num_IDs IDs, without
    reading files: what the Dataset keeps per ID, and what the workers' garbage collector
    copies, are what differ."""
    import my_classes

    my_classes.load_sample = lambda path, ID: torch.zeros(())  # no files: the bookkeeping only

    class Article(ArticleDataset):  # the article's storage: a list of str and a dict
        def __getitem__(self, index):
            ID = self.list_IDs[index]
            return my_classes.load_sample(None, ID), self.labels[ID]

    IDs = [f"id-{i + 1}" for i in range(num_IDs)]
    labels = {ID: i % 10 for i, ID in enumerate(IDs)}
    dataset = (Article if storage == "article" else my_classes.Dataset)(IDs, labels)
    generator = torch.utils.data.DataLoader(
        dataset,
        batch_size=4096,
        sampler=[i % num_IDs for i in range(1_000_000)],
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context="fork",
    )
    if freeze:
        gc.freeze()
    for _ in generator:
        pass
    usage = []
    for worker in generator._iterator._workers:
        fields = {}
        for line in Path(f"/proc/{worker.pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, value = line.split(":")
            fields[name] = int(value.split()[0])
        usage.append((fields["Private_Clean"] + fields["Private_Dirty"]) / 1024)
    return statistics.mean(usage)


def in_new_python(project: Path, *args: object) -> float:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        1, mp_context=spawn, initializer=sys.path.insert, initargs=(0, str(project))
    ) as pool:
        return pool.submit(worker_memory, *args).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="epochs timed per loader")
    parser.add_argument("--small", type=int, default=20_000, help="samples of 3x32x32")
    parser.add_argument("--large", type=int, default=2_000, help="samples of 3x224x224 (0: none)")
    parser.add_argument("--no-memory", action="store_true", help="skip the worker memory part")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "cookiecutter.yaml"  # replays stay in tmp, not in ~
        config.write_text(f"replay_dir: {json.dumps(tmp)}\n")
        project = Path(
            cookiecutter(
                str(ROOT),
                no_input=True,
                output_dir=tmp,
                config_file=str(config),
                extra_context={"_create_sample_data": False, "_run_smoke_test": False},
            )
        )
        sys.path.insert(0, str(project))
        print(
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
            f" torch {torch.__version__}; batch 64, one epoch of the training split,"
            f" median of {args.repeats}"
        )
        with s3_server(Path(tmp) / "moto.log"):
            shapes = [("3,32,32", args.small), ("3,224,224", args.large)]
            shapes = [(shape, n) for shape, n in shapes if n]  # 0 leaves a shape out
            by_shape = {
                shape: measure_shape(project, shape, n, args.repeats) for shape, n in shapes
            }
        for shape, num_samples in shapes:
            results = by_shape[shape]
            article = results["article, 6 workers"]
            numpy_limit = results["limit: NumPy gathers, 1 thread"]
            torch_limit = results["limit: torch gathers, all threads"]
            print(f"\n{shape.replace(',', 'x')}, {num_samples} samples (80% train):")
            header = ["loader", "samples/s", "x article", "of NumPy", "of torch"]
            print("  {:34} {:>10} {:>9} {:>8} {:>8}".format(*header))
            for name, rate in results.items():
                print(
                    f"  {name:34} {rate:10,.0f} {rate / article:9.1f}"
                    f" {rate / numpy_limit:8.0%} {rate / torch_limit:8.0%}"
                )

        if sys.platform.startswith("linux") and not args.no_memory:
            print("\nworker private memory (MB, mean of 2) after 1,000,000 samples drawn from:")
            print(f"  {'Dataset storage':44} {'1,000 IDs':>9} {'10**6 IDs':>9} {'growth':>7}")
            for storage, freeze in [("article", False), ("project", False), ("project", True)]:
                few, many = (in_new_python(project, storage, n, freeze) for n in (1_000, 10**6))
                name = {
                    "article": "article: list of str, dict",
                    "project": "project: byte buffer + offsets, label array",
                }[storage]
                name += ", gc.freeze()" if freeze else ""
                print(f"  {name:44} {few:9.1f} {many:9.1f} {many - few:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
