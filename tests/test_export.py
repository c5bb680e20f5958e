"""vgg/export.py: every exported format reloaded the way its users load it (torch.load
with weights_only, torchvision's own VGG, torch.export.load, onnxruntime) and compared with
the original network on a fresh batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from vgg.checkpoint import save_checkpoint
from vgg.export import ExportError, check_outputs, export, weights_file
from vgg.model import build_vgg

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"version": "A", "num_classes": 3, "in_channels": 3, "image_size": 32,
         "batch_norm": True, "fc_width": 32, "dropout": 0.5}


def trained_checkpoint(run: Path, model_args: dict, steps: int = 1) -> torch.nn.Module:
    """A checkpoint as the trainer writes it, with SGD momentum after a few real steps (the
    optimizer state that a weights-only export leaves out)."""
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
                     "optimizer": optimizer.state_dict(), "epoch": 1}, run / "best.pt")
    return model.eval()


def test_each_format_reloads_with_the_same_outputs(tmp_path):
    run = tmp_path / "run"
    model = trained_checkpoint(run, SMALL)
    written = dict(((path.name if path else "onnx"), note) for path, note in export(str(run)))
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
        assert "skipped: pip install" in written["onnx"]


def test_torchvision_vgg11_loads_the_exported_weights_strictly(tmp_path):
    torch.manual_seed(0)
    args = {"version": "A", "num_classes": 3, "in_channels": 3, "image_size": 224,
            "batch_norm": False, "fc_width": 4096}
    model = build_vgg(**args).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        data, note = weights_file(model, args, x, model(x))
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
