"""Turn whatever the user has into an ONNX file: the hub every target converts from.

Accepted: an `.onnx` path; a Keras model or `.keras`/`.h5`/SavedModel path (tf2onnx, run in the
tensorflow toolchain); a PyTorch `nn.Module` (torch.onnx export in the caller's environment,
which has torch since it holds the module). Framework objects are recognised by their class's
module, so torch and tensorflow are never imported unless the user passed one of their objects.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx.external_data_helper import uses_external_data

from edgekit.errors import EdgekitError, InvalidModelError
from edgekit.trust.artifact import sha256_file

log = logging.getLogger(__name__)

SAMPLE_PREFIX = "sample:"
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "edgekit" / "samples"
SAMPLES = {"digits": "digits_cnn"}


@dataclass
class Source:
    onnx_path: Path  # a private copy inside the work dir
    format: str  # "onnx" | "torch" | "keras"
    origin: str  # what the user gave, for the model card
    sha256: str  # of the original file (or of the exported ONNX for live objects)
    name: str
    sample: str | None = None  # bundled sample name, when MODEL was sample:NAME

    def sample_file(self, suffix: str) -> Path:
        """A file that ships with the bundled sample: its card metadata, calibration, eval set."""
        assert self.sample is not None
        return SAMPLES_DIR / {"card": f"{SAMPLES[self.sample]}.json"}.get(
            suffix, f"{self.sample}_{suffix}.npz"
        )


def _class_modules(obj: Any) -> list[str]:
    return [c.__module__ for c in type(obj).__mro__]


def is_torch_module(obj: Any) -> bool:
    return any(m.startswith("torch.nn") for m in _class_modules(obj))


def is_keras_model(obj: Any) -> bool:
    return any(m.startswith(("keras", "tf_keras", "tensorflow.python.keras")) for m in _class_modules(obj))


def external_data_files(path: Path) -> list[str]:
    """The external data files an .onnx names (locations relative to its folder), in first-use order."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []
    locations: list[str] = []
    for t in _tensors(model.graph):
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            if loc not in locations:
                locations.append(loc)
    return locations


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    yield from (sp.values for sp in graph.sparse_initializer)
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _tensors(g)


def check_onnx(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file, turning protobuf/checker failures into one clear error."""
    if not path.exists():
        raise InvalidModelError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path))  # external data is read from locations relative to `path`
    except Exception as e:  # DecodeError for truncated files, others for garbage
        external = external_data_files(path)
        if external:  # a readable graph whose weights file is missing, unreadable or outside its folder
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InvalidModelError(
                f"{path.name} keeps its weights in external data {external} (relative to "
                f"{path.parent}), which cannot be read: {first}",
                hint="keep the data file(s) next to the .onnx, where the model was saved with them",
            ) from e
        raise InvalidModelError(
            f"{path.name} is not a readable ONNX model (truncated or not ONNX): {type(e).__name__}: {e}"
        ) from e
    if not model.graph.node:
        raise InvalidModelError(f"{path.name} has an empty graph (truncated or not an ONNX model)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise InvalidModelError(f"{path.name} fails the ONNX checker: {first}") from e
    return model


def _private_copy(path: Path, model: onnx.ModelProto, dest: Path) -> None:
    """`dest` as a self-contained copy of `path`. External data files live next to the model at
    relative locations, so copying the .onnx alone loses them: the weights (already read into
    `model`) are written inline, or, past protobuf's 2 GB, into one `<dest>.data` beside it."""
    if not external_data_files(path):
        shutil.copyfile(path, dest)
    elif model.ByteSize() < onnx.checker.MAXIMUM_PROTOBUF:
        onnx.save(model, str(dest))
    else:
        onnx.save(
            model,
            str(dest),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{dest.name}.data",
        )


def load_source(
    model: Any,
    work_dir: Path,
    example_inputs: Any = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
) -> Source:
    work_dir.mkdir(parents=True, exist_ok=True)
    dest = work_dir / "source.onnx"
    if isinstance(model, str) and model.startswith(SAMPLE_PREFIX):
        stem = SAMPLES.get(model[len(SAMPLE_PREFIX) :])
        if stem is None:
            raise EdgekitError(f"unknown sample {model!r}", hint=f"choose from {', '.join(SAMPLES)}")
        src = load_source(SAMPLES_DIR / f"{stem}.onnx", work_dir)
        src.origin, src.sample = model, model[len(SAMPLE_PREFIX) :]
        return src
    if isinstance(model, str | Path):
        path = Path(model)
        if path.suffix == ".onnx":
            _private_copy(path, check_onnx(path), dest)
            return Source(dest, "onnx", str(path), sha256_file(path), path.stem)
        if path.suffix in (".keras", ".h5") or (path.is_dir() and (path / "saved_model.pb").exists()):
            from converters.keras_source import keras_to_onnx

            keras_to_onnx(path, dest)
            digest = sha256_file(path) if path.is_file() else sha256_file(path / "saved_model.pb")
            return Source(dest, "keras", str(path), digest, path.stem)
        if not path.exists():
            raise InvalidModelError(f"model file not found: {path}")
        raise InvalidModelError(
            f"cannot tell what {path.name} is",
            hint="give an .onnx file, a .keras/.h5 file or SavedModel dir, or use the Python API for nn.Modules",
        )
    if is_torch_module(model):
        _torch_to_onnx(model, example_inputs, dest, input_names, output_names)
        return Source(dest, "torch", type(model).__name__, sha256_file(dest), type(model).__name__.lower())
    if is_keras_model(model):
        from converters.keras_source import keras_to_onnx

        keras_to_onnx(model, dest)
        return Source(dest, "keras", type(model).__name__, sha256_file(dest), getattr(model, "name", "keras"))
    raise InvalidModelError(f"unsupported model object of type {type(model).__name__}")


def _torch_to_onnx(module, example_inputs, dest: Path, input_names, output_names) -> None:
    import torch

    if example_inputs is None:
        raise EdgekitError("a PyTorch module needs example_inputs (a tensor or a tuple of tensors)")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    names = input_names or (["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))])
    module.eval()
    with torch.no_grad():
        probe = module(*args)
    n_out = len(probe) if isinstance(probe, tuple | list) else 1
    outs = output_names or (["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)])
    axes = {n: {0: "batch"} for n in [*names, *outs]}
    # The TorchScript exporter (dynamo=False) needs no onnxscript and handles every model here;
    # its deprecation warning is noise for our users.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(dest),
            dynamo=False,
            input_names=names,
            output_names=outs,
            dynamic_axes=axes,
            opset_version=17,
        )
    check_onnx(dest)
