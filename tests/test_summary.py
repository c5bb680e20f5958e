"""python -m vgg.summary: the per-layer table through the shared configuration system."""

from vgg import summary


def test_summary_cli_prints_the_papers_parameter_count(capsys):
    assert summary.main(["--model_version", "D"]) == 0
    out = capsys.readouterr().out
    assert "total params 138,357,544 = 138.4M  (paper Table 2: 138M" in out


def test_summary_cli_bad_input_is_one_paragraph(capsys):
    assert summary.main(["--image_size", "33"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert summary.main(["--batch_norm", "yes please"]) == 2
    assert "--batch_norm: expected bool" in capsys.readouterr().err
