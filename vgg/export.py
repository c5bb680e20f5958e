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
  reference evaluator.

Every format gives class scores (logits) for inputs prepared as the checkpoint's
``"preprocessing"`` records (``predict.py`` does that preparation), and carries that record
(class names, mean/std, image size, training scale S, resampling), so that ``predict.py`` and
``--init_from`` prepare inputs as the network was trained, and a ``vgg_provenance`` record
(vgg/provenance.py: the toolkit, commit and library versions of the export, and under
``checkpoint`` the checkpoint's own record of what trained it, its data's fingerprint
included): in the ``.pth`` state dict's ``_metadata[""]["vgg_preprocessing"]`` and
``["vgg_provenance"]`` (ignored by torchvision's strict loading), as the ``.pt2``'s extra
files ``vgg_preprocessing.json`` and ``vgg_provenance.json`` (``torch.export.load(path,
extra_files={"vgg_preprocessing.json": ""})``), in the ONNX model's ``metadata_props``.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from vgg.atomic import check_folder, check_free_space, replace_atomically
from vgg.checkpoint import run_checkpoint
from vgg.errors import UserError, run_cli
from vgg.model import TORCHVISION_NAMES, VGG, build_vgg
from vgg.pretrained import PREPROCESSING_KEY, model_from_weights, preprocessing_of, read_weights
from vgg.provenance import PROVENANCE_KEY, provenance

EXAMPLE_BATCH = 2
# Outputs of a re-traced program differ from eager ones by float reassociation only.
RELATIVE_TOLERANCE = 1e-4


class ExportError(UserError, RuntimeError):
    """An exported format that does not reproduce the network's outputs."""


def check_outputs(what: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max()) or 1.0
    error = float((got.float() - expected).abs().max())
    if not error <= RELATIVE_TOLERANCE * scale:  # also catches NaN
        raise ExportError(f"the exported {what} does not reproduce the network: its outputs "
                          f"differ by {error:.3g} (scores up to {scale:.3g}); nothing written")


def torchvision_name(model_args: dict) -> str | None:
    """torchvision's builder that takes these weights strictly, if any (its FC1 expects a
    7x7 map: 224px input; its widths are Table 1's and 4096; its input is RGB)."""
    name = TORCHVISION_NAMES.get(model_args["version"])
    if (name is None or model_args["image_size"] != 224 or model_args["in_channels"] != 3
            or model_args.get("fc_width", 4096) != 4096 or model_args.get("width", 1.0) != 1.0):
        return None
    return name + ("_bn" if model_args.get("batch_norm") else "")


def weights_file(model: VGG, model_args: dict, x: torch.Tensor, expected: torch.Tensor,
                 metadata: dict[str, dict]) -> tuple[bytes, str]:
    """The state dict, its records (``metadata``: preprocessing, provenance) in its
    ``_metadata`` (which torchvision's strict loading ignores), reloaded (weights only) into
    a fresh network and, where the shapes allow, into torchvision's own model."""
    state = model.state_dict()
    state._metadata[""] = {**state._metadata.get("", {}), **metadata}
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
                     metadata: dict[str, dict]) -> tuple[bytes, str]:
    """torch.export with a dynamic batch dimension and each record of ``metadata`` as the
    extra file ``<key>.json`` (``vgg_preprocessing.json``), saved and loaded back; checked
    at the example batch size and at another one."""
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={f"{key}.json": json.dumps(record)
                                                    for key, record in metadata.items()})
    loaded = torch.export.load(io.BytesIO(buffer.getvalue())).module()
    with torch.no_grad():
        check_outputs("torch.export program", loaded(x), expected)
        check_outputs("torch.export program (batch of 1)", loaded(x[:1]), expected[:1])
    return buffer.getvalue(), "torch.export.load(path).module(); any batch size"


def onnx_file(model: VGG, model_args: dict, x: torch.Tensor, expected: torch.Tensor,
              metadata: dict[str, dict]) -> tuple[bytes | None, str]:
    missing = [p for p in ("onnx", "onnxscript") if importlib.util.find_spec(p) is None]
    if missing:
        return None, f"skipped: pip install {' '.join(missing)} to export ONNX"
    import onnx

    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(model, (x,), input_names=["images"], output_names=["scores"],
                                dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    for key, record in metadata.items():
        entry = program.model_proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(record)
    data = program.model_proto.SerializeToString()
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        run, checker = (lambda a: session.run(None, {"images": a})[0]), "onnxruntime"
    else:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(onnx.load_model_from_string(data))
        run, checker = (lambda a: evaluator.run(None, {"images": a})[0]), "onnx's reference"
    check_outputs(f"ONNX model ({checker})", torch.from_numpy(run(x.numpy())), expected)
    return data, f"input 'images', output 'scores'; verified with {checker}"


FORMATS: dict[str, Callable[..., tuple[bytes | None, str]]] = {
    "_weights.pth": weights_file, ".pt2": exported_program, ".onnx": onnx_file}


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
    metadata = {PREPROCESSING_KEY: preprocessing} if preprocessing is not None else {}
    metadata[PROVENANCE_KEY] = provenance("cpu", None) | {"checkpoint": weights.provenance}
    out_dir = out_dir or (path.parent / "export" if path.is_file() else Path("export"))
    check_folder(out_dir, f"--out {out_dir}")
    # The three formats hold the weights once each, with room to spare.
    check_free_space(out_dir, 4 * sum(t.numel() * t.element_size() for t in
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
    written = []
    for suffix, make in FORMATS.items():
        data, note = make(model, weights.model_args, x, expected, metadata)
        if preprocessing is None:
            note += f"; no preprocessing record ({weights.source} holds none)"
        if data is None:
            written.append((None, note))
            continue
        with replace_atomically(out_dir / f"{stem}{suffix}", "wb") as f:
            f.write(data)
        written.append((out_dir / f"{stem}{suffix}", note))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgg.export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("source", metavar="RUN_OR_FILE",
                        help="a run directory (its best.pt), a checkpoint or a weights file")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (default: export/ beside the checkpoint)")
    args = parser.parse_args(argv)

    def run() -> int:
        for path, note in export(args.source, args.out):
            if path is None:
                print(f"onnx: {note}")
            else:
                print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB): {note}")
        return 0

    return run_cli(run, "python -m vgg.export")


if __name__ == "__main__":
    sys.exit(main())
