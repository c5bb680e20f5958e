"""vgg/export.py: every exported format reloaded the way its users load it (torch.load
with weights_only, torchvision's own VGG, torch.export.load, onnxruntime, safetensors) and
compared with the original network on a fresh batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import predict
from vgg.checkpoint import save_checkpoint
from vgg.export import ExportError, check_outputs, export, weights_file
from vgg.model import build_vgg
from vgg.pretrained import load_pretrained, model_from_weights, read_weights

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"version": "A", "num_classes": 3, "in_channels": 3, "image_size": 32,
         "batch_norm": True, "fc_width": 32, "dropout": 0.5}


# As the trainer records it (vgg.checkpoint.preprocessing_record) for SMALL's network.
RECORD = {"dataset": "ImageFolder", "classes": ["cat", "dog", "owl"], "in_channels": 3,
          "image_size": 32, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3],
          "train_scale": [36, 44], "resize": "bilinear"}


def trained_checkpoint(run: Path, model_args: dict, steps: int = 1) -> torch.nn.Module:
    """A checkpoint as the trainer writes it, with SGD momentum after a few real steps (the
    optimizer state that a weights-only export leaves out) and its preprocessing record."""
    torch.manual_seed(0)
    model = build_vgg(**model_args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        x = torch.randn(4, model_args["in_channels"], model.image_size, model.image_size)
        F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
        optimizer.step()
        optimizer.zero_grad()
    run.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "model_args": model_args, "config": {},
                     "optimizer": optimizer.state_dict(), "epoch": 1,
                     "preprocessing": RECORD if model_args == SMALL else None}, run / "best.pt")
    return model.eval()


def test_each_format_reloads_with_the_same_outputs(tmp_path):
    run = tmp_path / "run"
    model = trained_checkpoint(run, SMALL)
    skipped = [note for path, note in export(str(run)) if path is None]
    out = run / "export"
    x = torch.randn(5, 3, 32, 32)  # another batch size than the export's example
    with torch.no_grad():
        expected = model(x)

        state = torch.load(out / "best_weights.pth", weights_only=True)
        assert all(key.startswith(("features.", "classifier.")) for key in state)
        rebuilt = build_vgg(**SMALL, init=None).eval()
        rebuilt.load_state_dict(state, strict=True)
        assert torch.equal(rebuilt(x), expected)

        program = torch.export.load(out / "best.pt2").module()
        torch.testing.assert_close(program(x), expected, rtol=1e-5, atol=1e-5)
    # Weights only: about half a checkpoint that carries SGD momentum.
    assert (out / "best_weights.pth").stat().st_size < 0.55 * (run / "best.pt").stat().st_size
    if (out / "best.onnx").exists():
        onnxruntime = pytest.importorskip("onnxruntime")
        session = onnxruntime.InferenceSession(str(out / "best.onnx"))
        torch.testing.assert_close(torch.from_numpy(session.run(None, {"images": x.numpy()})[0]),
                                   expected, rtol=1e-4, atol=1e-4)
    else:
        assert any(note.startswith("best.onnx skipped: pip install") for note in skipped)


def test_torchvision_vgg11_loads_the_exported_weights_strictly(tmp_path):
    torch.manual_seed(0)
    args = {"version": "A", "num_classes": 3, "in_channels": 3, "image_size": 224,
            "batch_norm": False, "fc_width": 4096}
    model = build_vgg(**args).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        data, note = weights_file(model, args, x, model(x), {})
    assert note == "loads into torchvision.models.vgg11(num_classes=3)"
    (tmp_path / "w.pth").write_bytes(data)
    reference = torchvision.models.vgg11(num_classes=3).eval()
    reference.load_state_dict(torch.load(tmp_path / "w.pth", weights_only=True), strict=True)
    y = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(reference(y), model(y), rtol=1e-5, atol=1e-5)


def test_check_outputs_rejects_what_differs():
    expected = torch.tensor([[10.0, -2.0, 3.0]])
    check_outputs("copy", expected + 1e-4, expected)  # float reassociation: accepted
    for wrong in (expected + 0.1, expected.flip(1), torch.full_like(expected, float("nan"))):
        with pytest.raises(ExportError, match="does not reproduce"):
            check_outputs("copy", wrong, expected)


def test_a_diverged_network_is_not_exported(tmp_path):
    run = tmp_path / "run"
    model = build_vgg(**SMALL)
    state = model.state_dict()
    state["classifier.6.weight"].fill_(float("nan"))
    run.mkdir()
    save_checkpoint({"model": state, "model_args": SMALL}, run / "best.pt")
    result = subprocess.run([sys.executable, "-m", "vgg.export", str(run), "--out",
                             str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 2 and "non-finite" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a second full export, through a subprocess
def test_command_line(tmp_path):
    run = tmp_path / "run"
    trained_checkpoint(run, SMALL)
    result = subprocess.run([sys.executable, "-m", "vgg.export", str(run / "best.pt"),
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path / 'out' / 'best_weights.pth'} (" in result.stdout
    assert (tmp_path / "out" / "best.pt2").is_file()
    missing = subprocess.run([sys.executable, "-m", "vgg.export", str(tmp_path / "nothing")],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "no file or run directory" in missing.stderr


def test_exports_carry_the_preprocessing_that_predict_and_init_from_use(tmp_path):
    """Issue 24, item 3: the same network gives the same answers from its export as from
    its checkpoint: the run's class names, mean/std and test scale Q, not ImageNet's."""
    run = tmp_path / "run"
    trained_checkpoint(run, SMALL)
    export(str(run))
    pth, pt2 = run / "export" / "best_weights.pth", run / "export" / "best.pt2"
    assert read_weights(pth).preprocessing == RECORD  # what --init_from normalises with
    extra = {"vgg_preprocessing.json": ""}
    torch.export.load(pt2, extra_files=extra)
    assert json.loads(extra["vgg_preprocessing.json"]) == RECORD
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 52), (60, 45)]):
        cv2.imwrite(str(photos / f"{i}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    outputs = []
    for weights in (run / "best.pt", pth):
        out = tmp_path / f"{weights.stem}.json"
        assert predict.main([str(photos), "--checkpoint", str(weights), "--out", str(out),
                             "--progress", "false"]) == 0
        outputs.append(json.loads(out.read_text()))
    from_checkpoint, from_export = outputs
    assert from_export["scale"] == from_checkpoint["scale"] == 40  # Q of S = [36, 44]
    assert from_export["predictions"] == from_checkpoint["predictions"]
    assert {top["class"] for row in from_export["predictions"] for top in row["top_k"]} <= \
        set(RECORD["classes"])


def test_a_state_dict_without_a_record_is_refused_by_predict(tmp_path, capsys):
    """A bare state dict of another shape than torchvision's ImageNet VGGs has no known
    preprocessing: predict.py says so instead of using ImageNet's."""
    path = tmp_path / "bare.pth"
    torch.save(build_vgg(**SMALL).state_dict(), path)
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1])
    assert predict.main([str(tmp_path / "a.png"), "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "records neither its preprocessing" in err and "Traceback" not in err
    assert read_weights(path).preprocessing is None


def exported_metadata(model_args: dict) -> dict:
    """What every format of an export of SMALL's checkpoint carries, written out here."""
    return {"toolkit": "vgg-reproduced", "model_args": model_args, "vgg_preprocessing": RECORD}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export of SMALL's trained checkpoint, shared by the read-back tests below."""
    run = tmp_path_factory.mktemp("exported") / "run"
    model = trained_checkpoint(run, SMALL)
    export(str(run))
    return run, model


def test_safetensors_read_back_with_safetensors_own_api(exported):
    """Issue 22, item 4: the Hub folder's model.safetensors holds the state dict and, as JSON
    strings in its header, the metadata (class names, mean/std, S, ...); config.json the same."""
    safetensors = pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    run, model = exported
    folder = run / "export" / "best_hub"
    tensors = load_file(folder / "model.safetensors")
    state = model.state_dict()
    assert tensors.keys() == state.keys()
    assert all(torch.equal(tensors[key], state[key]) for key in state)
    with safetensors.safe_open(folder / "model.safetensors", "pt") as f:
        header = {key: json.loads(value) for key, value in f.metadata().items()}
    config = json.loads((folder / "config.json").read_text())
    for metadata in (header, config):
        assert metadata.pop("input").startswith("float32 NCHW; RGB")
        assert metadata.pop("vgg_provenance")["torch"] == str(torch.__version__)
        assert metadata == exported_metadata(SMALL)


def test_the_hub_folder_loads_back_by_path_with_the_same_logits(exported, tmp_path):
    pytest.importorskip("safetensors")
    run, model = exported
    folder = run / "export" / "best_hub"
    x = torch.randn(3, 3, 32, 32)
    for source in (folder, folder / "model.safetensors"):  # the folder, the file alone
        weights = read_weights(source)
        assert weights.preprocessing == RECORD and weights.source == str(source)
        with torch.no_grad():
            assert torch.equal(model_from_weights(weights).eval()(x), model(x))
    # What --init_from FOLDER does (train.py): every layer but the 5-class scores taken.
    report = load_pretrained(build_vgg(**{**SMALL, "num_classes": 5}), read_weights(folder))
    assert report.new == {"classifier.6": "5 classes here, 3 in the weights"}
    assert report.normalization == (RECORD["mean"], RECORD["std"])
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), np.random.default_rng(1).integers(
        0, 256, (45, 60, 3), dtype=np.uint8))
    outputs = []
    for checkpoint in (run / "best.pt", folder):
        out = tmp_path / f"{checkpoint.name}.json"
        assert predict.main([str(photos), "--checkpoint", str(checkpoint), "--out", str(out),
                             "--progress", "false", "--top_k", "3"]) == 0
        outputs.append(json.loads(out.read_text()))
    assert outputs[0]["predictions"] == outputs[1]["predictions"]
    assert outputs[1]["scale"] == 40


def damaged_copy(folder: Path, tmp_path: Path, damage: str) -> Path:
    copy = tmp_path / "hub"
    copy.mkdir()
    tensors = (folder / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(
        tensors[:len(tensors) // 2] if damage == "truncated tensors" else tensors)
    config = json.loads((folder / "config.json").read_text())
    if damage == "another version":
        config["model_args"]["version"] = "B"  # A's tensors, B's name
    elif damage == "another image size":
        config["model_args"]["image_size"] = 64
    elif damage == "not JSON":
        (copy / "config.json").write_text("{'model_args': ")
        return copy
    if damage != "no config.json":
        (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("damage, message", [
    ("no config.json", "it has no config.json"),
    ("another version", "model_args do not match its tensors: version 'B' (the tensors': 'A')"),
    ("another image size", "image_size 64 (the tensors': 32)"),
    ("not JSON", "config.json is not JSON"),
    ("truncated tensors", "model.safetensors is not a readable safetensors file"),
])
def test_a_damaged_hub_folder_is_a_clear_error(exported, tmp_path, capsys, damage, message):
    pytest.importorskip("safetensors")
    run, _ = exported
    folder = damaged_copy(run / "export" / "best_hub", tmp_path, damage)
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1])
    assert predict.main([str(tmp_path / "a.png"), "--checkpoint", str(folder)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_without_safetensors_the_other_formats_export(tmp_path, monkeypatch, capsys):
    """The GPU machines' stack has no safetensors: the Hub folder is skipped with a note,
    and reading one says what to install."""
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if not installed
    run = tmp_path / "run"
    trained_checkpoint(run, SMALL)
    written = export(str(run))
    assert (run / "export" / "best.pt2").is_file() and not (run / "export" / "best_hub").exists()
    assert any(path is None and note.startswith("best_hub skipped: pip install safetensors")
               for path, note in written)
    (run / "hub").mkdir()
    (run / "hub" / "config.json").write_text("{}")
    (run / "hub" / "model.safetensors").write_bytes(b"")
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1])
    assert predict.main([str(tmp_path / "a.png"), "--checkpoint", str(run / "hub")]) == 2
    assert "needs the safetensors package: pip install safetensors" in capsys.readouterr().err


def test_onnx_carries_the_metadata_and_the_dense_form_takes_any_size(exported):
    """Both ONNX models hold the metadata in metadata_props; the dense one takes any batch
    and any side >= 32 and gives the eager dense network's class-score map."""
    run, model = exported
    out = run / "export"
    if not (out / "best_dense.onnx").exists():
        pytest.skip("onnx/onnxscript not installed: ONNX export skipped")
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    for name in ("best.onnx", "best_dense.onnx"):
        props = {p.key: json.loads(p.value) for p in onnx.load(out / name).metadata_props}
        assert props.pop("input").startswith("float32 NCHW; RGB")
        assert props.pop("vgg_provenance")["torch"] == str(torch.__version__)
        assert props == exported_metadata(SMALL)
    session = onnxruntime.InferenceSession(str(out / "best_dense.onnx"))
    dense = model.to_dense().eval()
    for shape in [(1, 3, 32, 32), (3, 3, 45, 100), (2, 3, 64, 33)]:
        x = torch.randn(*shape)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        with torch.no_grad():
            torch.testing.assert_close(got, dense(x), rtol=1e-4, atol=1e-4)
