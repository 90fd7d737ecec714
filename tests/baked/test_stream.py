"""Streamed data (plumbing/stream.py): pack_data.py --format stream writes LitData chunks to a
directory or to object storage, here an S3 server on 127.0.0.1 (moto's), and
pytorch_script.py --data-format stream trains from them, resumes inside an epoch bit for bit,
refuses chunks that could run code, and says in one line what is wrong with a URL. They need
the extra and moto: pip install -e ".[stream]" "moto[server]" (README.md)."""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # a local S3 server: the full suite's (--full)
pytest.importorskip("litdata", reason='no stream extra: pip install -e ".[stream]"')
pytest.importorskip("moto.server", reason='moto is not installed: pip install "moto[server]"')

import litdata  # noqa: E402
import pack_data  # noqa: E402
from my_classes import Dataset  # noqa: E402
from plumbing import loader, preemption, stream  # noqa: E402
from plumbing.data import load_partition  # noqa: E402

from baked.helpers import read_rows, snapshot, train, weights  # noqa: E402


def start_s3_server(log: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """An S3 server on 127.0.0.1 (moto's) that checks credentials, with a bucket "bucket";
    returns its process and the environment that points boto3 at it, with a key it accepts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            # the 3 requests that make a user and its key go unchecked; the rest are checked
            env=os.environ | {"INITIAL_NO_AUTH_ACTION_COUNT": "3"},
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    address = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    import boto3

    anyone = {"aws_access_key_id": "anyone", "aws_secret_access_key": "anyone"}
    iam = boto3.client("iam", endpoint_url=address, region_name="us-east-1", **anyone)
    iam.create_user(UserName="trainer")
    may_use_s3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    iam.put_user_policy(
        UserName="trainer", PolicyName="s3",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [may_use_s3]}),
    )  # fmt: skip
    key = iam.create_access_key(UserName="trainer")["AccessKey"]
    env = {
        "AWS_ENDPOINT_URL": address, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
    }  # fmt: skip
    s3 = boto3.client("s3", endpoint_url=address, region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
    s3.create_bucket(Bucket="bucket")
    return server, env


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3 server for the module's tests, and the environment that points boto3 at it;
    yields its address. Stopped by its process id afterwards."""
    server, env = start_s3_server(tmp_path_factory.mktemp("moto") / "server.log")
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    for name, value in before.items():
        if value is None:
            os.environ.pop(name)
        else:
            os.environ[name] = value
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(autouse=True)
def cache_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LitData's cache of downloaded chunks, in this test's directory."""
    monkeypatch.setattr(
        "litdata.utilities.dataset_utilities._LITDATA_CACHE_DIR", str(tmp_path / "cache")
    )


def write(data_dir: Path, output: str) -> None:
    argv = ["--data-dir", str(data_dir), "--format", "stream", "--output", output]
    assert pack_data.main(argv) == 0


def test_a_stream_holds_what_the_dataset_reads(tiny_data: Path, tmp_path: Path, capsys) -> None:
    write(tiny_data, str(tmp_path / "stream"))
    assert f"Wrote {tiny_data} as a stream to {tmp_path / 'stream'}" in capsys.readouterr().out
    partition, labels = load_partition(tiny_data)
    for split in ("train", "validation"):
        dataset = Dataset(partition[split], labels, tiny_data)
        streamed = litdata.StreamingDataset(f"{tmp_path}/stream/{split}", serializers=stream.SAFE)
        assert len(streamed) == len(dataset)
        for i in range(len(streamed)):
            item = streamed[i]
            X, y = dataset[item["index"]]
            assert torch.equal(item["X"], X) and item["y"] == y


def test_a_split_listed_by_class_still_gives_batches_of_many_classes(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LitData shuffles chunks and samples within a chunk: written in the order partition.json
    lists them, by class here, each chunk (up to 48 samples), and so most batches, would hold
    one class."""
    partition, labels = load_partition(tiny_data)
    partition = {split: sorted(IDs, key=labels.__getitem__) for split, IDs in partition.items()}
    (tiny_data / "partition.json").write_text(json.dumps(partition))
    monkeypatch.setattr(stream, "CHUNK_BYTES", "14kB")  # 48 samples of 1x8x8
    write(tiny_data, str(tmp_path / "stream"))
    args = argparse.Namespace(data_dir=tmp_path / "stream", shuffle=True, seed=0,
                              prefetch_factor=2, loader_timeout=0)  # fmt: skip
    labels, (training_set, _) = stream.open_splits(args, Dataset)
    assert len(training_set.subsampled_files) >= 4  # chunks of 48 samples or fewer
    training_generator = loader.make(
        training_set, {"batch_size": 16, "shuffle": True, "num_workers": 0}, args,
        torch.device("cpu"),
    )  # fmt: skip
    decoded, deserialize = [], litdata.streaming.serializers.TensorSerializer.deserialize

    def counted(self: object, data: bytes) -> torch.Tensor:
        decoded.append(1)
        return deserialize(self, data)

    monkeypatch.setattr(litdata.streaming.serializers.TensorSerializer, "deserialize", counted)
    classes = [len(set(local_labels.tolist())) for _, local_labels in training_generator]
    assert len(classes) == 12 and min(classes) >= 2, classes
    assert len(decoded) == 192  # each sample decoded once, when read: not a window around it


def test_a_chunk_not_memory_mapped_is_read_a_sample_at_a_time(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LitData does not memory-map a chunk that two DataLoader workers share (as here, every
    chunk): each sample is then read alone, not with the whole chunk file (LitData's own)."""
    write(tiny_data, str(tmp_path / "stream"))
    item_loader = litdata.streaming.item_loader
    monkeypatch.setattr(item_loader.PyTreeLoader, "set_mmap_allowed_chunks", lambda *_: None)
    opened, read = [], open

    def counted(path: str, mode: str = "r", *args: object, **kwargs: object) -> object:
        opened.append(path)
        return read(path, mode, *args, **kwargs)

    monkeypatch.setattr(item_loader, "open", counted, raising=False)
    args = argparse.Namespace(data_dir=tmp_path / "stream", shuffle=True, seed=0,
                              prefetch_factor=2, loader_timeout=0)  # fmt: skip
    _, (training_set, _) = stream.open_splits(args, Dataset)
    training_generator = loader.make(
        training_set, {"batch_size": 16, "shuffle": True, "num_workers": 0}, args,
        torch.device("cpu"),
    )  # fmt: skip
    assert sum(len(local_labels) for _, local_labels in training_generator) == 192
    assert training_set.cache._reader._item_loader._mmap is None  # read as a shared chunk is
    assert len(opened) < 10, opened  # a few chunk files, each opened once or twice: not 192


def flip(self: Dataset, X: torch.Tensor) -> torch.Tensor:
    """A random augmentation, as a user writes one."""
    return X.flip(-1) if torch.rand(()) < 0.5 else X


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_training_from_object_storage_resumes_inside_an_epoch_bit_for_bit(
    tiny_data: Path, tmp_path: Path, s3_server: str, num_workers: str,
    monkeypatch: pytest.MonkeyPatch, capsys,
) -> None:  # fmt: skip
    """Written to s3://, trained from it with a random augmentation; stopped by SIGTERM after
    batch 5 of epoch 2 and resumed, the run ends as one never stopped."""
    url = f"s3://bucket/{tmp_path.name}"
    write(tiny_data, url)
    monkeypatch.setattr(Dataset, "random_augmentation", flip)
    flags = ["--data-format", "stream", "--data-dir", url, "--num-workers", num_workers]
    flags += ["--max-epochs", "3", "--batch-size", "16"]  # 12 batches an epoch
    assert train(tiny_data, tmp_path / "runs" / "whole", *flags) == 0
    out = capsys.readouterr().out
    assert f"data: {url} (streamed)" in out and "192 train and 64 validation samples" in out

    requested, batches = preemption.StopSignals.requested, []

    def signalled(self: preemption.StopSignals) -> bool:
        batches.append(1)
        if len(batches) == 12 + 5:
            signal.raise_signal(signal.SIGTERM)
        return requested(self)

    monkeypatch.setattr(preemption.StopSignals, "requested", signalled)
    run_dir = tmp_path / "runs" / "halves"
    assert train(tiny_data, run_dir, *flags) == 75
    assert "stopped by SIGTERM after batch 5 of epoch 2" in capsys.readouterr().err
    monkeypatch.setattr(preemption.StopSignals, "requested", requested)
    assert train(tiny_data, run_dir, *flags, "--resume") == 0
    out = capsys.readouterr().out
    assert f"resuming {run_dir} after batch 5 of epoch 2" in out
    assert "was started with" not in out  # the same --data-dir, a URL

    whole, halves = weights(tmp_path / "runs" / "whole"), weights(run_dir)
    assert all(torch.equal(whole[k], halves[k]) for k in whole)
    columns = ("epoch", "train_loss", "val_loss", "val_accuracy")  # data_wait is a time
    whole, halves = (read_rows(d / "metrics.csv") for d in (tmp_path / "runs" / "whole", run_dir))
    assert [[r[c] for c in columns] for r in whole] == [[r[c] for c in columns] for r in halves]


class Exploit:
    """What a crafted chunk could hold: an object whose unpickling runs a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def crafted(marker: Path, index: int) -> dict:
    return {"X": Exploit(marker), "y": 0, "index": index}


def test_a_chunk_that_could_run_code_is_refused(tiny_data: Path, tmp_path: Path, capsys) -> None:
    """A stream whose samples LitData stored with pickle (a crafted one): the run stops in one
    line before anything unpickles, and the command in it never runs."""
    url = tmp_path / "stream"
    write(tiny_data, str(url))
    marker = tmp_path / "code-ran"
    litdata.optimize(
        fn=stream.functools.partial(crafted, marker), inputs=list(range(4)),
        output_dir=str(url / "train"), chunk_bytes="1MB", num_workers=1, mode="overwrite",
        verbose=False, start_method="fork",
    )  # fmt: skip
    capsys.readouterr()
    flags = ["--data-format", "stream", "--data-dir", str(url), "--num-workers", "0"]
    assert train(tiny_data, tmp_path / "runs" / "run-1", *flags) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: a chunk of this stream holds data in LitData's 'pickle' format")
    assert len(err.splitlines()) == 1 and not marker.exists()


def test_bad_places_are_one_line_and_write_nothing(
    tiny_data: Path, tmp_path: Path, s3_server: str, capsys
) -> None:
    runs = tmp_path / "runs"
    for where in ["s3://no-such-bucket/data", "s3://bucket/never-written", tmp_path / "nowhere"]:
        flags = ["--data-format", "stream", "--data-dir", str(where)]
        assert train(tiny_data, runs / "run-1", *flags) == 1
        assert capsys.readouterr().err == (
            f"error: {where}: no finished stream there (no index/, or no such bucket): write one"
            f" with `python pack_data.py --format stream --output {where}`\n"
        )
    assert not runs.exists()

    with socket.socket() as s:  # a port where no server listens
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    os.environ["AWS_ENDPOINT_URL"] = closed
    try:
        assert train(tiny_data, runs / "run-1", *flags[:3], "s3://bucket/data") == 1
    finally:
        os.environ["AWS_ENDPOINT_URL"] = s3_server
    assert capsys.readouterr().err == (
        f'error: s3://bucket/data: Could not connect to the endpoint URL: "{closed}/bucket/data/'
        'index/index.json": check the URL, that its bucket exists, and the credentials'
        " (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ~/.aws, ...)\n"
    )
    assert not runs.exists()

    before = snapshot(tiny_data)
    assert pack_data.main(["--data-dir", str(tiny_data), "--format", "stream", "--output",
                           "s3://no-such-bucket/data"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("error: s3://no-such-bucket/data: ") and "NoSuchBucket" in err
    assert snapshot(tiny_data) == before


def test_wrong_credentials_are_one_line_and_write_nothing(
    tiny_data: Path, tmp_path: Path, s3_server: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    url = f"s3://bucket/{tmp_path.name}"
    write(tiny_data, url)
    capsys.readouterr()
    runs, before = tmp_path / "runs", snapshot(tiny_data)
    flags = ["--data-format", "stream", "--data-dir", url]
    for name, wrong in [("AWS_SECRET_ACCESS_KEY", "wrong"), ("AWS_ACCESS_KEY_ID", "AKIAWRONG")]:
        monkeypatch.setenv(name, wrong)
        assert train(tiny_data, runs / "run-1", *flags) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {url}: ") and err.count("\n") == 1
        assert "(403)" in err and err.endswith(
            "and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,"
            " ~/.aws, ...)\n"
        )
        assert pack_data.main(["--data-dir", str(tiny_data), "--format", "stream", "--output",
                               f"{url}-again"]) == 1  # fmt: skip
        err = capsys.readouterr().err
        refused = {"AWS_SECRET_ACCESS_KEY": "SignatureDoesNotMatch", "AWS_ACCESS_KEY_ID":
                   "InvalidAccessKeyId"}[name]  # fmt: skip
        assert err.startswith(f"error: {url}-again: ") and refused in err
        assert err.count("\n") == 1
        monkeypatch.undo()
    assert not runs.exists() and snapshot(tiny_data) == before


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_a_server_that_stops_inside_an_epoch_is_one_line_and_loses_nothing(
    tiny_data: Path, tmp_path: Path, num_workers: str, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """The S3 server stops after batch 2 of epoch 2, with most of the stream's chunks still to
    download: the run stops inside the epoch (the batches already downloaded are trained on) in
    one line, with its checkpoints and metrics as epoch 1 left them."""
    server, env = start_s3_server(tmp_path / "server.log")
    try:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        # A sample a chunk: LitData downloads up to 32 chunks ahead, of 96 for each worker
        monkeypatch.setattr(stream, "CHUNK_BYTES", "300B")
        url = "s3://bucket/data"
        write(tiny_data, url)
        flags = ["--data-format", "stream", "--data-dir", url, "--num-workers", num_workers]
        run_dir = tmp_path / "runs" / "run-1"
        assert train(tiny_data, run_dir, *flags, "--max-epochs", "1", "--batch-size", "16") == 0
        before = {path.name: path.read_bytes() for path in run_dir.iterdir()}
        assert {"last.pt", "best.pt", "metrics.csv"} <= before.keys()
        capfd.readouterr()

        requested, batches = preemption.StopSignals.requested, []

        def server_stops(self: preemption.StopSignals) -> bool:
            batches.append(1)
            if len(batches) == 2:
                server.kill()
                server.wait()
            return requested(self)

        monkeypatch.setattr(preemption.StopSignals, "requested", server_stops)
        shutil.rmtree(tmp_path / "cache")  # every chunk from the server again
        flags += ["--max-epochs", "2", "--batch-size", "16", "--resume"]
        assert train(tiny_data, run_dir, *flags) == 1
        err = capfd.readouterr().err
        assert err.startswith(f"error: {url}: a chunk of the stream could not be downloaded (")
        assert err.endswith("): check that the server is up and reachable; --resume run-1 goes on"
                            " from its last epoch\n")  # fmt: skip
        assert err.count("\n") == 1 and 2 <= len(batches) < 12  # inside epoch 2: 12 batches
        assert {path.name: path.read_bytes() for path in run_dir.iterdir()} == before
    finally:
        server.kill()
        server.wait()


COUNT_BATCHES = """
import argparse, json, sys
import torch.distributed as dist
from my_classes import Dataset
from plumbing import distributed, loader, stream

args = argparse.Namespace(data_dir=sys.argv[1], shuffle=True, seed=0, prefetch_factor=2,
                          loader_timeout=0)
distributed.setup(distributed.get_device("cpu"))
labels, (training_set, _) = stream.open_splits(args, Dataset)
params = {"batch_size": 7, "shuffle": True, "num_workers": 1}
training_generator = loader.make(training_set, params, args, distributed.get_device("cpu"))
counts = [None, None]
dist.all_gather_object(counts, [len(training_generator), sum(1 for _ in training_generator)])
if dist.get_rank() == 0:
    print(json.dumps(counts))
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="finds rank 1's process in Linux's /proc")
def test_under_torchrun_every_rank_gets_as_many_batches_and_resumes_bit_for_bit(
    tiny_data: Path, tmp_path: Path, s3_server: str
) -> None:
    """192 training samples on 2 ranks in batches of 7: as many whole batches on each (a rank
    with one more would wait for the other for ever). Rank 1 alone gets SIGUSR1 inside an
    epoch; resumed, the run ends as one never stopped."""
    from baked.helpers import GLOO_ABORT_AT_EXIT, edited_project
    from baked.test_preemption import finished, launch, rank_1, same_run, stop_inside_an_epoch

    url = f"s3://bucket/{tmp_path.name}"
    write(tiny_data, url)
    project = Path(pack_data.__file__).parent
    script = tmp_path / "count_batches.py"
    script.write_text(COUNT_BATCHES)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = os.environ | {"PYTHONPATH": str(project), "LITDATA_CACHE_DIR": str(tmp_path / "c")}
    counted = subprocess.run(
        [*command, str(script), url], cwd=project, capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert counted.returncode == 0 or GLOO_ABORT_AT_EXIT in counted.stderr, counted.stderr
    assert counted.stdout.strip().splitlines()[-1] == "[[13, 13], [13, 13]]"  # 96 // 7 each

    copy = edited_project(tmp_path)  # its runs/ in tmp_path
    os.environ["LITDATA_CACHE_DIR"] = str(tmp_path / "cache")
    try:
        flags = ["--data-format", "stream", "--data-dir", url, "--num-workers", "1"]
        flags += ["--batch-size", "4"]  # 24 batches an epoch on each rank
        whole = finished(launch(copy, tiny_data, *flags, "--run-name", "whole", ranks=2))
        assert whole.returncode == 0 or GLOO_ABORT_AT_EXIT in whole.stderr, whole.stderr

        def send(torchrun: subprocess.Popen) -> None:
            os.kill(rank_1(torchrun), signal.SIGUSR1)

        _, result, stopped = stop_inside_an_epoch(copy, tiny_data, flags, send, 2, 0.05)
        assert stopped[1] == "a signal of another rank"
        resumed = finished(launch(copy, tiny_data, *flags, "--resume", "halves", ranks=2))
        assert resumed.returncode == 0 or GLOO_ABORT_AT_EXIT in resumed.stderr, resumed.stderr
        assert f"after batch {stopped[2]} of epoch {stopped[3]}" in resumed.stdout
        same_run(copy)
    finally:
        os.environ.pop("LITDATA_CACHE_DIR")


@pytest.mark.parametrize("where", ["directory", "s3"])
def test_bench_loader_measures_a_stream(
    tiny_data: Path, tmp_path: Path, s3_server: str, where: str,
    monkeypatch: pytest.MonkeyPatch, capsys,
) -> None:  # fmt: skip
    """One setting as JSON, then the sweep with the stream beside files and packed, from a
    directory and from the S3 server."""
    import bench_loader

    monkeypatch.setattr(bench_loader, "usable_cpus", lambda: 2)  # the sweep: 0, 1 and 2 workers
    url = str(tmp_path / "stream") if where == "directory" else f"s3://bucket/{tmp_path.name}"
    write(tiny_data, url)
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    capsys.readouterr()
    small = ["--repeats", "1", "--epochs", "1", "--batch-size", "16", "--stream", url]
    argv = ["--data-dir", str(tiny_data), *small]
    assert bench_loader.main([*argv, "--format", "stream", "--num-workers", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "stream" and result["samples"] == 192
    assert (result["num_workers"], result["persistent_workers"]) == (1, False)
    assert result["samples_per_s"] > 0

    assert bench_loader.main([*argv, "--max-samples", "96"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "96 files, 96 packed, 96 stream samples x 1 epochs, median of 1"
    rows = [line.split() for line in lines if line.split()[:1] == ["stream"]]
    assert {(row[1], row[3]) for row in rows} == {("0", "False"), ("1", "False"), ("2", "False")}
    assert all(float(row[6].replace(",", "")) > 0 for row in rows)

    # The stream alone, with no data/ here: what training's data-bound hint suggests
    args = argparse.Namespace(data_dir=url, shuffle=True, seed=0, prefetch_factor=2,
                              loader_timeout=0)  # fmt: skip
    _, (training_set, _) = stream.open_splits(args, Dataset)
    params = {"batch_size": 16, "shuffle": True, "num_workers": 0}
    hint = loader.data_bound_hint(url, loader.make(training_set, params, args, torch.device("cpu")))
    assert hint == f"`python bench_loader.py --stream {url}` finds faster loader settings."
    capsys.readouterr()
    assert bench_loader.main(["--data-dir", str(tmp_path / "nowhere"), *small]) == 0
    lines = capsys.readouterr().out.splitlines()
    formats = {line.split()[0] for line in lines if line.split()[:1] in (["files"], ["stream"])}
    assert formats == {"stream"} and lines[0].endswith("stream samples x 1 epochs, median of 1")
    assert f"--data-format stream --batch-size 16 --data-dir {url} --num-workers" in lines[-1]
