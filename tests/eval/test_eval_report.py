"""pytest tests/eval/test_eval_report.py

Outputs: results.json, results.md and heatmap PNGs are written (PNG read back pixel by pixel), and
`megamid eval` runs end to end with a stand-in for the checkpoint loader.
"""

import json

import numpy as np
import pytest

from megamid.cli import main
from megamid.eval import evaluate
from megamid.eval.heatmap import accuracy_colors, plain_heatmap, read_png, write_png


def test_png_round_trip(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    write_png(str(tmp_path / "x.png"), img)
    assert np.array_equal(read_png(str(tmp_path / "x.png")), img)


def test_heatmap_cells_have_accuracy_colors(tmp_path):
    grid = np.array([[0.0, 0.5, 1.0], [1.0, np.nan, 0.25]])
    plain_heatmap(str(tmp_path / "h.png"), grid, cell_px=10)
    img = read_png(str(tmp_path / "h.png"))
    assert img.shape == (21, 31, 3)
    colors = accuracy_colors(grid)
    for r in range(2):
        for c in range(3):
            assert img[r * 10 + 5, c * 10 + 5].tolist() == colors[r, c].tolist()
    assert colors[0, 0][0] > colors[0, 0][1] and colors[0, 2][1] > colors[0, 2][0]  # red low, green high
    assert colors[1, 1].tolist() == [191, 191, 191]  # missing cell is grey


def test_evaluate_writes_json_markdown_png(oracle, tokenizer, tmp_path, make_documents, position_model):
    r = evaluate(oracle, tokenizer, ["passkey", "needle", "ruler"], [1024], str(tmp_path), depths=[0.0, 1.0], samples=1,
                 ruler_tasks=["niah_single"], use_matplotlib=False)
    files = r["files"]
    assert set(files) == {"passkey_heatmap", "needle_heatmap", "markdown", "json"}
    saved = json.load(open(files["json"]))
    assert saved["passkey"]["grid"]["accuracy"] == [[1.0], [1.0]] and saved["ruler"]["accuracy"] == 1.0
    md = open(files["markdown"]).read()
    assert "## passkey: accuracy by depth x length" in md and "| 100% | 1.00 |" in md and "| niah_single | 1.00 | 1.00 |" in md
    img = read_png(files["passkey_heatmap"])
    assert img.shape == (2 * 32 + 1, 32 + 1, 3) and img[16, 16].tolist() == accuracy_colors(np.array(1.0)).tolist()
    p = evaluate(position_model(), tokenizer, ["ppl", "short"], [32], str(tmp_path / "ppl"), documents=make_documents([40] * 2),
                 short_length=8, baseline=position_model(slope=0.0), use_matplotlib=False)
    md = open(p["files"]["markdown"]).read()
    assert "## Perplexity by position" in md and "| positions | loss | ppl | tokens |" in md and "ratio" in md


@pytest.fixture
def fake_loader(monkeypatch, oracle, tokenizer):
    """Stands in for megamid.load: the CLI's work around a model that needs no checkpoint."""
    import megamid

    monkeypatch.setattr(megamid, "load", lambda path, **kw: (oracle, tokenizer))


def test_cli_eval_end_to_end(fake_loader, tmp_path, capsys):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    ckpt.mkdir()
    code = main(["eval", str(ckpt), "--tasks", "passkey,needle", "--lengths", "512", "--depths", "0,0.5",
                 "--samples", "1", "--out", str(out)])
    assert code == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0]) == {"passkey": 1.0, "needle": 1.0}
    assert (out / "results.json").exists() and (out / "results.md").exists() and (out / "passkey_heatmap.png").exists()


def test_cli_eval_errors(monkeypatch, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nowhere"), "--tasks", "passkey"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--tasks", "passkey,lambada"]) == 2
    assert "unknown lambada" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--tasks", "ppl"]) == 2
    assert "need --documents" in capsys.readouterr().err


def test_matplotlib_figures_when_installed(tmp_path, oracle, tokenizer, position_model, make_documents):
    pytest.importorskip("matplotlib")
    r = evaluate(oracle, tokenizer, ["passkey"], [512, 768], str(tmp_path), depths=[0.0, 0.5, 1.0], samples=1)
    p = evaluate(position_model(), tokenizer, ["ppl"], [32, 64], str(tmp_path / "ppl"), documents=make_documents([64] * 2))
    for path in (r["files"]["passkey_heatmap"], p["files"]["ppl_plot"]):
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
