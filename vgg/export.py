"""Exporting a trained network for use outside this toolkit, each format verified against
the original network's outputs on a random batch before it is written (atomically).

    python -m vgg.export runs/my-run                  # its best.pt, into runs/my-run/export/
    python -m vgg.export runs/my-run/last.pt --out exported/

- ``<stem>_weights.pth``: the weights alone, a state dict with torchvision's keys (no
  optimizer state: about half a training checkpoint). At 224px, FC width 4096 and RGB
  input it loads into ``torchvision.models.vgg16(num_classes=N)`` (vgg11/13/19, ``_bn``)
  with ``strict=True``, which the export checks too; any size loads back with
  ``--init_from``/``--checkpoint`` of this toolkit.
- ``<stem>.pt2``: a ``torch.export`` program of the network in eval mode, any batch size:
  ``torch.export.load(path).module()(images)`` needs no code of this toolkit.
- ``<stem>.onnx``: when the ``onnx`` and ``onnxscript`` packages are installed (otherwise
  skipped with a note); verified with onnxruntime when installed, else with onnx's
  reference evaluator. Any batch size; the image size is the network's (its FC1 takes a
  fixed feature map).
- ``<stem>_dense.onnx``: the fully-convolutional form (Sec. 3.2, ``VGG.to_dense``): any
  batch size and any image side >= the network's image size, giving a class-score map
  ``(N, classes, h, w)`` whose spatial mean is the dense protocol's score.
- ``<stem>_hub/``: a Hub-style folder, ``config.json`` (the metadata below) beside
  ``model.safetensors`` (the state dict, the metadata in its own header too); it loads back
  by path (``--init_from``, ``predict.py --checkpoint``), and ``safetensors.torch.load_file``
  reads the tensors without this toolkit. Needs the ``safetensors`` package (otherwise
  skipped with a note).

Every format gives class scores (logits) for inputs prepared as the checkpoint's
``"preprocessing"`` records (``predict.py`` does that preparation), and carries the same
metadata (:func:`export_metadata`): the toolkit, ``model_args`` (the network's
:func:`vgg.model.build_vgg` arguments), ``input`` (the input convention in words), the
preprocessing record ``vgg_preprocessing`` (class names, mean/std, image size, training
scale S, resampling), so that ``predict.py`` and ``--init_from`` prepare inputs as the
network was trained, and ``vgg_provenance`` (vgg/provenance.py: the toolkit, commit and
library versions of the export, and under ``checkpoint`` the checkpoint's own record of what
trained it, its data's fingerprint included): in the ``.pth`` state dict's
``_metadata[""]`` (ignored by torchvision's strict loading); as the ``.pt2``'s extra files
``<key>.json`` (``torch.export.load(path, extra_files={"vgg_preprocessing.json": ""})``);
as JSON strings in the ONNX models' ``metadata_props`` and the safetensors header; as
``config.json``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vgg import configuration
from vgg.atomic import check_folder, check_free_space, replace_atomically
from vgg.checkpoint import run_checkpoint
from vgg.errors import UserError, run_cli
from vgg.model import DOWNSAMPLING, TORCHVISION_NAMES, VGG, build_vgg
from vgg.pretrained import (
    HUB_CONFIG,
    HUB_WEIGHTS,
    PREPROCESSING_KEY,
    PretrainedWeights,
    described_weights,
    model_from_weights,
    preprocessing_of,
    read_weights,
)
from vgg.provenance import PROVENANCE_KEY, provenance

EXAMPLE_BATCH = 2
# Outputs of a re-traced program differ from eager ones by float reassociation only.
RELATIVE_TOLERANCE = 1e-4
TOOLKIT = "vgg-reproduced"  # pyproject.toml's name
INPUT_CONVENTION = (
    "float32 NCHW; RGB (grey for 1 channel) pixel values / 255, minus mean, divided by std, "
    "per channel; resized as vgg_preprocessing's resize, at Q = the middle of its train_scale "
    "S, then centre-cropped to image_size (the dense ONNX takes the whole resized image)")


class ExportError(UserError, RuntimeError):
    """An exported format that does not reproduce the network's outputs."""


def check_outputs(what: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max()) or 1.0
    error = float((got.float() - expected).abs().max())
    if not error <= RELATIVE_TOLERANCE * scale:  # also catches NaN
        raise ExportError(f"the exported {what} does not reproduce the network: its outputs "
                          f"differ by {error:.3g} (scores up to {scale:.3g}); nothing written")


def export_metadata(weights: PretrainedWeights, preprocessing: dict | None) -> dict[str, Any]:
    """What every exported format carries beside the weights, built here only: the toolkit,
    the network's build arguments, the input convention, the preprocessing record (none when
    the source records none) and the export's provenance, with the checkpoint's own under
    ``checkpoint``. Each value is JSON; :func:`metadata_strings` gives the str -> str form of
    safetensors' and ONNX's metadata."""
    metadata: dict[str, Any] = {"toolkit": TOOLKIT, "model_args": weights.model_args,
                                "input": INPUT_CONVENTION}
    if preprocessing is not None:
        metadata[PREPROCESSING_KEY] = preprocessing
    metadata[PROVENANCE_KEY] = provenance("cpu", None) | {"checkpoint": weights.provenance}
    return metadata


def metadata_strings(metadata: dict[str, Any]) -> dict[str, str]:
    return {key: json.dumps(value) for key, value in metadata.items()}


def torchvision_name(model_args: dict) -> str | None:
    """torchvision's builder that takes these weights strictly, if any (its FC1 expects a
    7x7 map: 224px input; its widths are Table 1's and 4096; its input is RGB)."""
    name = TORCHVISION_NAMES.get(model_args["version"])
    if (name is None or model_args["image_size"] != 224 or model_args["in_channels"] != 3
            or model_args.get("fc_width", 4096) != 4096 or model_args.get("width", 1.0) != 1.0):
        return None
    return name + ("_bn" if model_args.get("batch_norm") else "")


def weights_file(model: VGG, model_args: dict, x: torch.Tensor, expected: torch.Tensor,
                 metadata: dict[str, Any]) -> tuple[bytes, str]:
    """The state dict, the metadata in its ``_metadata`` (which torchvision's strict
    loading ignores), reloaded (weights only) into a fresh network and, where the shapes
    allow, into torchvision's own model."""
    state = model.state_dict()
    # state_dict() is an OrderedDict with _metadata; its annotation says dict[str, Any].
    state._metadata[""] = {**state._metadata.get("", {}), **metadata}  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    rebuilt = build_vgg(**model_args, init=None).eval()
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        check_outputs("state dict", rebuilt(x), expected)
    name = torchvision_name(model_args)
    if name is None:
        return buffer.getvalue(), "torchvision keys; no torchvision builder takes these shapes"
    import torchvision

    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(num_classes=model_args["num_classes"])
    reference.load_state_dict(state, strict=True, assign=True)
    with torch.no_grad():
        check_outputs(f"state dict in torchvision's {name}", reference.eval()(x), expected)
    return buffer.getvalue(), (f"loads into torchvision.models.{name}(num_classes="
                               f"{model_args['num_classes']})")


def exported_program(model: VGG, model_args: dict, x: torch.Tensor, expected: torch.Tensor,
                     metadata: dict[str, Any]) -> tuple[bytes, str]:
    """torch.export with a dynamic batch dimension and the metadata as extra files
    (``vgg_preprocessing.json``, ...), saved and loaded back; checked at the example batch
    size and at another one."""
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={
        f"{key}.json": value for key, value in metadata_strings(metadata).items()})
    loaded = torch.export.load(io.BytesIO(buffer.getvalue())).module()
    with torch.no_grad():
        check_outputs("torch.export program", loaded(x), expected)
        check_outputs("torch.export program (batch of 1)", loaded(x[:1]), expected[:1])
    return buffer.getvalue(), "torch.export.load(path).module(); any batch size"


def onnx_model(module: torch.nn.Module, x: torch.Tensor, dynamic: dict[int, Any],
               metadata: dict[str, Any]) -> tuple[bytes | None, Callable, str]:
    """``module`` as ONNX (input ``images``, output ``scores``) with the dimensions
    ``dynamic`` and the metadata in its ``metadata_props``, and a function that runs the
    serialised model (onnxruntime when installed, else onnx's reference evaluator); None
    and the note to install them where onnx or onnxscript is missing."""
    missing = [p for p in ("onnx", "onnxscript") if importlib.util.find_spec(p) is None]
    if missing:
        return None, lambda a: None, f"skipped: pip install {' '.join(missing)} to export ONNX"
    import onnx
    from torch.fx.experimental import _config as symbolic_shapes_config

    # Without it, tracing at one size specialises a class-score map side of 1 against > 1
    # and the spatial dimensions cannot stay dynamic.
    # torch's config modules get patch() at import (install_config_module): no stub has it.
    with symbolic_shapes_config.patch(backed_size_oblivious=True):  # type: ignore[attr-defined]
        program = torch.onnx.export(module, (x,), input_names=["images"],
                                    output_names=["scores"], dynamic_shapes=(dynamic,),
                                    dynamo=True, verbose=False)
    assert program is not None  # dynamo=True always returns the ONNXProgram
    # model_proto serialises the program afresh at each access: edit one copy.
    proto = program.model_proto
    for key, value in metadata_strings(metadata).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        return data, lambda a: session.run(None, {"images": a})[0], "onnxruntime"
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load_model_from_string(data))
    return data, lambda a: evaluator.run(None, {"images": a})[0], "onnx's reference"


def onnx_file(model: VGG, model_args: dict, x: torch.Tensor, expected: torch.Tensor,
              metadata: dict[str, Any]) -> tuple[bytes | None, str]:
    data, run, checker = onnx_model(model, x, {0: torch.export.Dim("batch", min=1)}, metadata)
    if data is None:
        return None, checker
    check_outputs(f"ONNX model ({checker})", torch.from_numpy(run(x.numpy())), expected)
    return data, f"input 'images', output 'scores'; verified with {checker}"


def dense_onnx_file(model: VGG, model_args: dict, x: torch.Tensor, expected: torch.Tensor,
                    metadata: dict[str, Any]) -> tuple[bytes | None, str]:
    """The fully-convolutional form, dynamic in batch, height and width (>= image_size);
    traced at a larger size than the network's, checked there against the eager dense
    network and at the network's size against its scores (a 1x1 map)."""
    dense = model.to_dense().eval()
    side = model.image_size
    dynamic = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("height", min=side),
               3: torch.export.Dim("width", min=side)}
    larger = torch.randn(1, x.shape[1], side + DOWNSAMPLING, side + 2 * DOWNSAMPLING,
                         generator=torch.Generator().manual_seed(1))
    data, run, checker = onnx_model(dense, larger, dynamic, metadata)
    if data is None:
        return None, checker
    with torch.no_grad():
        check_outputs(f"dense ONNX model ({checker}) on larger images",
                      torch.from_numpy(run(larger.numpy())), dense(larger))
    check_outputs(f"dense ONNX model ({checker})", torch.from_numpy(run(x.numpy()))[:, :, 0, 0],
                  expected)
    return data, (f"input 'images' of any side >= {side}, output 'scores' (N, classes, h, w); "
                  f"verified with {checker}")


def hub_folder(model: VGG, model_args: dict, x: torch.Tensor, expected: torch.Tensor,
               metadata: dict[str, Any]) -> tuple[dict[str, bytes] | None, str]:
    """``config.json`` (the metadata) and ``model.safetensors`` (the state dict, with the
    metadata as its header's), read back as ``read_weights`` reads the folder."""
    if importlib.util.find_spec("safetensors") is None:
        return None, (f"skipped: pip install safetensors to export the Hub-style folder "
                      f"({HUB_CONFIG} + {HUB_WEIGHTS})")
    import safetensors.torch

    tensors = safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items()},
                                     metadata=metadata_strings(metadata))
    config = json.dumps(metadata, indent=2).encode()
    rebuilt = model_from_weights(described_weights(
        json.loads(config), safetensors.torch.load(tensors), "the Hub-style folder")).eval()
    with torch.no_grad():
        check_outputs("Hub-style folder", rebuilt(x), expected)
    # The tensors first: the folder is recognised by its config.json.
    return {HUB_WEIGHTS: tensors, HUB_CONFIG: config}, (
        "loads back by path (--init_from, predict.py --checkpoint); "
        "safetensors.torch.load_file reads the tensors")


FORMATS: dict[str, Callable[..., tuple[bytes | dict[str, bytes] | None, str]]] = {
    "_weights.pth": weights_file, ".pt2": exported_program, ".onnx": onnx_file,
    "_dense.onnx": dense_onnx_file, "_hub": hub_folder}


def export(source: str, out_dir: Path | None = None) -> list[tuple[Path | None, str]]:
    """Export the network of ``source`` (run directory, checkpoint, weights file or name) in
    every format; returns (path written, or None when skipped; a note) per format."""
    path = Path(source)
    if path.is_dir():
        path = run_checkpoint(path)
    weights = read_weights(path if path.is_file() else source)
    model = model_from_weights(weights).eval()
    # What predict.py and --init_from need; a file that records none exports none.
    preprocessing = preprocessing_of(weights) if weights.preprocessing is not None else None
    out_dir = out_dir or (path.parent / "export" if path.is_file() else Path("export"))
    check_folder(out_dir, f"--out {out_dir}")
    # The five formats hold the weights once each, with room to spare.
    check_free_space(out_dir, 6 * sum(t.numel() * t.element_size() for t in
                                      model.state_dict().values()), "the export")
    stem = path.stem if path.is_file() else str(source)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(EXAMPLE_BATCH, weights.model_args["in_channels"], model.image_size,
                    model.image_size, generator=generator)
    with torch.no_grad():
        expected = model(x)
    if not torch.isfinite(expected).all():
        raise ExportError(f"{weights.source} gives non-finite scores (a diverged run?): "
                          "nothing exported")
    metadata = export_metadata(weights, preprocessing)
    written: list[tuple[Path | None, str]] = []
    for suffix, make in FORMATS.items():
        data, note = make(model, weights.model_args, x, expected, metadata)
        if preprocessing is None:
            note += f"; no preprocessing record ({weights.source} holds none)"
        target = out_dir / f"{stem}{suffix}"
        if data is None:
            written.append((None, f"{target.name} {note}"))
            continue
        if isinstance(data, dict):  # a folder of files
            target.mkdir(exist_ok=True)
            for name, content in data.items():
                with replace_atomically(target / name, "wb") as f:
                    f.write(content)
        else:
            with replace_atomically(target, "wb") as f:
                f.write(data)
        written.append((target, note))
    return written


@dataclass
class ExportConfig:
    """The options of ``python -m vgg.export`` (vgg/configuration.py: flags and YAML)."""
    # --- what to export ---
    source: str | None = configuration.positional(
        "RUN_OR_FILE", help="a run directory (its best.pt), a checkpoint or a weights file")
    # --- output ---
    out: str | None = field(default=None, metadata={
        "metavar": "DIR", "help": "output folder; none = export/ beside the checkpoint"})


def run(argv: list[str] | None) -> int:
    cfg = configuration.command_config(ExportConfig, argv, __doc__, "python -m vgg.export")
    if cfg is None:  # --print_config
        return 0
    for path, note in export(cfg.source, None if cfg.out is None else Path(cfg.out)):
        if path is None:
            print(note)
        else:
            size = sum(f.stat().st_size for f in [path, *path.glob("*")] if f.is_file())
            print(f"{path} ({size / 2**20:.1f} MiB): {note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: run(argv), "python -m vgg.export")


if __name__ == "__main__":
    sys.exit(main())
