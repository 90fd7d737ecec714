"""The model exported for serving: torch.export's program in a .pt2 file, which runs without
my_classes.py (in Python with torch, or ahead-of-time compiled), with what a server needs in
its metadata (the input shape, the classes and their names); ONNX beside it with the onnx
extra (pip install -e ".[onnx]"). Each is checked against the model it came from, on a batch,
within TOLERANCE.

A .pt2 file is a program, not data: torch.export.load, which predict.py uses, unpickles parts
of it (weights_only=False where torch's own serializer says so), resolves any attribute of
torch named in its graph as an operation, and parses shape expressions with sympy. Load only
the files you exported, or trust as you would a Python file; a checkpoint, loaded with
weights_only=True, is what to share with people you do not."""

import contextlib
import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from plumbing.errors import DataError, SetupError
from plumbing.files import atomic_write

META = "meta.json"  # in the .pt2's extra files, and as ONNX metadata (each key a string)
# The largest difference allowed from the eager model, |exported - eager| <= atol + rtol *
# |eager|, each output of the check's batch: .pt2 runs the same kernels; ONNX Runtime its own.
TOLERANCE = {"pt2": {"rtol": 1e-5, "atol": 1e-5}, "onnx": {"rtol": 1e-4, "atol": 1e-4}}


def export(model: nn.Module, batch: torch.Tensor, path: Path, meta: dict) -> float:
    """model (in eval mode), exported for batches of any size of batch's samples, saved to path
    with meta; returns the largest difference from model's outputs on batch (checked)."""
    dynamic = ({0: torch.export.Dim("batch")},)  # any batch size: batch has at least 2 samples
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(model, (batch,), dynamic_shapes=dynamic)
        except Exception as err:  # an operation torch.export cannot trace
            reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            raise SetupError(
                f"torch.export cannot export {type(model).__qualname__} ({type(err).__name__}:"
                f" {reason}): see https://pytorch.org/docs/stable/export.html"
            ) from None
        difference = checked("pt2", program.module()(batch), model(batch))
        meta = meta | {"check": {"samples": len(batch), "max_abs_diff": difference,
                                 **TOLERANCE["pt2"]}}  # fmt: skip
        extra = {META: json.dumps(meta)}
        atomic_write(path, lambda f: torch.export.save(program, f, extra_files=extra))
    return difference


def checked(kind: str, exported: torch.Tensor, eager: torch.Tensor) -> float:
    """The largest absolute difference; SetupError if beyond TOLERANCE[kind]."""
    exported, eager = torch.as_tensor(exported).double(), eager.detach().double()
    if exported.shape != eager.shape:
        raise SetupError(
            f"the {kind} model gives {tuple(exported.shape)}, the eager one {tuple(eager.shape)}"
        )
    difference = (exported - eager).abs()
    bound = TOLERANCE[kind]["atol"] + TOLERANCE[kind]["rtol"] * eager.abs()
    if not bool((difference <= bound).all()):
        raise SetupError(
            f"the {kind} model's outputs differ from the eager model's by up to"
            f" {float(difference.max()):.3g}, beyond rtol {TOLERANCE[kind]['rtol']:g} and atol"
            f" {TOLERANCE[kind]['atol']:g}"
        )
    return float(difference.max())


def load(path: Path) -> tuple[object, dict]:
    """The program at path, as a module to call on a batch, and its metadata. A program you
    trust only (the module's docstring says why)."""
    extra = {META: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(path, extra_files=extra)
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    except Exception as err:
        raise DataError(f"{path} is not a program torch.export saved ({err})") from None
    try:
        meta = json.loads(extra[META])
        meta["input_shape"], meta["num_classes"]  # noqa: B018 (exported here, or refused)
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path} lacks export_model.py's {META}: export it with it") from None
    return program.module(), meta


def to_onnx(model: nn.Module, batch: torch.Tensor, path: Path, meta: dict) -> float | None:
    """model as ONNX at path, with meta as its metadata; returns the largest difference from
    model's outputs on batch, by ONNX Runtime (checked), or None without onnxruntime."""
    try:
        import onnxscript  # noqa: F401 (torch.onnx.export needs it, and onnx)
    except ModuleNotFoundError:
        raise SetupError(
            'ONNX needs the onnx extra: pip install -e ".[onnx]" (onnx, onnxscript, onnxruntime)'
        ) from None
    dynamic = ({0: torch.export.Dim("batch")},)
    output = io.StringIO()
    with contextlib.redirect_stdout(output), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (batch,), dynamo=True, dynamic_shapes=dynamic)
    for key, value in meta.items():
        program.model.metadata_props[key] = json.dumps(value)
    atomic_write(path, lambda f: f.write(program.model_proto.SerializeToString()))
    try:
        import onnxruntime
    except ModuleNotFoundError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (outputs,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    with torch.no_grad():
        return checked("onnx", torch.from_numpy(outputs), model(batch))
