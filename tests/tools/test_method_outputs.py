"""tests/tools/method_outputs.py (issue #13's acceptance tool): two records of the same library compare
bit-identical, a perturbed leaf or a missing method is reported and fails the comparison."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("method_outputs.py")
CHEAP = "finetune,ssd"  # two of the quickest programs to compile


def _load_script():
    spec = importlib.util.spec_from_file_location("method_outputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mo = _load_script()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("records")
    metas = [mo.record(tmp / f"{n}.npz", CHEAP, log=lambda *_: None) for n in ("a", "b")]
    return tmp, metas


def test_two_records_are_bit_identical(records):
    tmp, (meta_a, meta_b) = records
    assert {n: m["status"] for n, m in meta_a["methods"].items()} == {"finetune": "ok", "ssd": "ok"}
    assert meta_a["methods"]["finetune"]["hyper"]["epochs"] == 2  # the TINY override, on top of the defaults
    assert json.loads((tmp / "a.json").read_text()) == meta_a
    assert meta_a["methods"]["ssd"]["sha256"] == meta_b["methods"]["ssd"]["sha256"]
    with np.load(tmp / "a.npz") as z:
        kernel = z["finetune/variables/params/fc/kernel"]
        assert kernel.shape[0] == 2 and kernel.dtype == np.float32 and not np.array_equal(kernel[0], kernel[1])
        assert z["finetune/metrics/loss"].shape == (2, 2)  # seeds x epochs
    lines, code = mo.compare(tmp / "a.npz", tmp / "b.npz")
    assert code == 0, lines
    assert [line.split()[:2] for line in lines[2:]] == [
        ["bit-identical", "(start"], ["bit-identical", "finetune"], ["bit-identical", "ssd"], ["summary:", "2"]]


def _rewrite(src: Path, dst: Path, change):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(dst, **arrays)


def test_a_perturbed_leaf_fails_the_comparison(records):
    tmp, _ = records

    def perturb(arrays):
        k = "ssd/variables/params/fc/kernel"
        arrays[k] = arrays[k].copy()
        arrays[k][1, 0, 0] = np.nextafter(arrays[k][1, 0, 0], np.float32(np.inf))  # one ulp

    _rewrite(tmp / "a.npz", tmp / "perturbed.npz", perturb)
    lines, code = mo.compare(tmp / "a.npz", tmp / "perturbed.npz")
    assert code == 1
    (ssd,) = [line for line in lines if " ssd " in line]
    assert ssd.startswith("differs") and "1/" in ssd and "params/fc/kernel: max |diff|" in ssd
    assert any(line.startswith("bit-identical") and " finetune " in line for line in lines)


def test_methods_missing_on_one_side(records):
    tmp, _ = records
    meta = mo.record(tmp / "none.npz", "no-such-method", log=lambda *_: None)  # nothing to compile
    assert meta["methods"] == {"no-such-method": {"status": "not registered"}}
    out = subprocess.run([sys.executable, str(SCRIPT), "compare", str(tmp / "none.npz"), str(tmp / "a.npz")],
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    status = {line.split()[1]: line for line in out.stdout.splitlines()[3:-1]}
    assert status["finetune"].split()[0] == "missing" and "not recorded in OLD" in status["finetune"]
    assert status["no-such-method"].split()[0] == "missing" and "not registered in OLD" in status["no-such-method"]
    assert out.stdout.splitlines()[2].startswith("bit-identical  (start variables)")


def test_not_a_record(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"junk")
    with pytest.raises(SystemExit, match="x.npz: not a method_outputs record"):
        mo.compare(tmp_path / "x.npz", tmp_path / "x.npz")
