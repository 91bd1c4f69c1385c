"""`squeezefit sparsify` end to end at toy size: a new checkpoint a study can name, its record, bad input."""

from search.checkpoint import load_baseline
from search.embedded.baseline import BaselineRecord
from spaces.pruning import pruning_units
from tests.conftest import run_cli


def test_sparsify_writes_a_checkpoint_a_study_can_use(tmp_path, baseline_model):
    out = tmp_path / "sparse.pt"
    result = run_cli(["sparsify", "studies/smoke.yaml", "--epochs", "1", "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "channels with a weight norm under 10% of the median" in result.stdout
    model = load_baseline(out)  # what a study's `model:` loads
    assert [u.name for u in pruning_units(model)] == [u.name for u in pruning_units(baseline_model)]
    record = BaselineRecord.load(out)  # `data: embedded` reads it
    assert record.checkpoint == str(out) and record.imgsz == 192 and record.epochs == 1 and 0 <= record.map50_95 <= 1

    again = run_cli(["sparsify", "studies/smoke.yaml", "--epochs", "1", "--out", str(out)], tmp_path, timeout=120)
    bad = run_cli(
        ["sparsify", "studies/smoke.yaml", "--reg", "0", "--out", str(tmp_path / "x.pt")], tmp_path, timeout=120
    )
    assert (again.returncode, bad.returncode) == (2, 2)
    assert "must be a new .pt file" in again.stderr and "must be positive" in bad.stderr
    assert not (tmp_path / "x.pt").exists()
