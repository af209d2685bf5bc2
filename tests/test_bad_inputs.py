"""Bad or unusual input gets an f8tvm error that names it, before any work; the caller's objects
come back as they were given."""

import hashlib
import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from conftest import make_small_net
from PIL import Image

import f8tvm
from f8tvm import build, data, run, runtime
from f8tvm.core.errors import F8TVMError, InputError, UnsupportedCPUError
from f8tvm.frontend.torch_import import export_program
from f8tvm.models import PickledObjectsError, load_state_dict_file
from f8tvm.targets import get_target

SIZE = 16


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    cm = f8tvm.compile(make_small_net(), torch.zeros(1, 3, SIZE, SIZE), target="x86",
                       calib=[torch.randn(2, 3, SIZE, SIZE)])
    so, _ = cm.export(str(tmp_path_factory.mktemp("small") / "small.so"))
    return cm, so


@pytest.mark.host
def test_run_refuses_nan_and_inf_unless_told(small):
    cm, so = small
    m = runtime.load(so)
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype("float32")
    x[0, 0, 0, :2] = np.nan
    x[0, 1, 0, 0] = np.inf
    for run_ in (m.run, cm.run):
        with pytest.raises(InputError, match="2 NaN and 1 infinite value"):
            run_(x)
    # told: NaN reads as 0, +inf as the largest value (clamped to the 8-bit range)
    same = x.copy()
    same[0, 0, 0, :2] = 0
    same[0, 1, 0, 0] = 3e38
    assert np.array_equal(m.run(x, allow_nonfinite=True), m.run(same))
    assert np.array_equal(cm.run(x, allow_nonfinite=True), m.run(same))


@pytest.mark.host
def test_run_cli_refuses_a_top_below_one(small, capsys):
    _, so = small
    for top in ("0", "-3"):
        with pytest.raises(SystemExit) as e:
            run.main([so, "--top", top])
        assert e.value.code == 2
        assert f"--top must be >= 1, got {top}" in capsys.readouterr().err


@pytest.mark.unit
def test_build_cli_refuses_an_input_size_below_one(capsys, tmp_path):
    for size in ("0", "-224"):
        with pytest.raises(SystemExit) as e:
            build.main(["--model", "resnet18", "--input-size", size,
                        "--output-dir", str(tmp_path / "out")])
        assert e.value.code == 2
        assert f"--input-size must be >= 1, got {size}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_an_unknown_target_is_an_f8tvm_error():
    with pytest.raises(F8TVMError, match="unknown target 'x86-future'; available: host, x86"):
        get_target("x86-future")
    with pytest.raises(InputError, match="unknown target 'riscv'"):
        f8tvm.compile(make_small_net(), torch.zeros(1, 3, SIZE, SIZE), target="riscv")


@pytest.mark.unit
def test_import_gives_back_the_callers_training_modes():
    net = make_small_net().train()
    net.bn1.eval()  # a mix, as a fine-tuning loop may leave it
    before = {name: m.training for name, m in net.named_modules()}
    export_program(net, torch.zeros(1, 3, SIZE, SIZE))
    assert {name: m.training for name, m in net.named_modules()} == before
    assert before[""] and not before["bn1"]


@pytest.fixture
def pair(small, tmp_path):
    """A fresh copy of the small module's .so + .json in ``tmp_path``."""
    _, so = small
    dst = tmp_path / "m.so"
    shutil.copy(so, dst)
    shutil.copy(runtime.metadata_path(so), tmp_path / "m.json")
    return dst, tmp_path / "m.json"


@pytest.mark.host
def test_the_json_names_its_library_and_load_checks_it(pair):
    so, js = pair
    meta = json.loads(js.read_text())
    rec = meta["library"]
    own = runtime.build_id(str(so))  # the linker's GNU build id note, read back from the ELF
    assert rec == {"file": "small.so", "size": so.stat().st_size,
                   "sha256": hashlib.sha256(so.read_bytes()).hexdigest(), "build_id": own}
    # the id is a digest of the module's metadata: the .so says which build it is
    del meta["library"]
    assert own == hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:40]
    runtime.load(str(so)).close()


@pytest.mark.host
def test_a_json_from_another_build_is_refused(pair):
    so, js = pair
    meta = json.loads(js.read_text())
    meta["library"]["sha256"] = "0" * 64  # what another build of the same size would have
    meta["library"]["build_id"] = "ab" * 20
    js.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"m\.so is not the library .*m\.json describes .*"
                                         r"build [0-9a-f]{12}\.\.\. where the \.json names "
                                         r"abababababab\.\.\."):
        runtime.load(str(so))


@pytest.mark.host
@pytest.mark.parametrize("keep", [0, 4096])
def test_a_truncated_library_is_refused_before_loading(pair, keep):
    """A truncated .so killed the process with SIGBUS (an empty one gave a raw traceback)."""
    so, _ = pair
    so.write_bytes(so.read_bytes()[:keep])
    with pytest.raises(InputError, match=f"{keep} bytes"):
        runtime.load(str(so))
    # and without the .json's record (a .json of an older f8tvm): the ELF header says it
    with pytest.raises(InputError, match="no ELF header" if keep < 64 else "truncated shared"):
        runtime.check_library(str(so), {}, "m.json")


@pytest.mark.host
def test_a_library_of_another_architecture_is_named(pair, monkeypatch):
    so, _ = pair
    monkeypatch.setattr(runtime.platform, "machine", lambda: "aarch64")
    with pytest.raises(UnsupportedCPUError,
                       match="is an x86_64 library and this machine is aarch64"):
        runtime.load(str(so))


@pytest.mark.host
def test_a_truncated_json_names_its_file(pair):
    so, js = pair
    js.write_text(js.read_text()[:200])
    with pytest.raises(InputError, match=r"m\.json is not valid JSON"):
        runtime.load(str(so))


@pytest.mark.unit
def test_calibration_data_is_checked_before_the_build():
    net, x = make_small_net(), torch.zeros(1, 3, SIZE, SIZE)
    good = np.zeros((2, 3, SIZE, SIZE), np.float32)
    inf = good.copy()
    inf[1, 2, 3, 4] = np.inf
    cases = [([], "no calibration data: calib is empty"),
             ([good, inf], "calibration batch 1 holds 1 NaN or infinite value"),
             ([good[:, :, :8, :8]], r"calibration batch 0 has shape \(2, 3, 8, 8\); the "
                                    r"model's input is N x 3 x 16 x 16"),
             ([good[0]], r"batch 0 has shape \(3, 16, 16\)"),
             ([["a"]], "calibration batch 0 is not an array of numbers")]
    for calib, message in cases:
        with pytest.raises(InputError, match=message):
            f8tvm.compile(net, x, target="x86", calib=calib)


@pytest.mark.unit
def test_weights_files_are_checked_by_name(tmp_path, capsys):
    text = tmp_path / "w.txt"
    text.write_text("101\n")
    with pytest.raises(InputError, match=r"w\.txt is not a weights file written by torch.save"):
        load_state_dict_file(text)
    sd = make_small_net().state_dict()
    sd["conv1.weight"][0, 0, 0, 0] = float("nan")
    sd["fc.bias"][1] = float("inf")
    nan = tmp_path / "nan.pth"
    torch.save(sd, nan)
    with pytest.raises(InputError, match="NaN or infinite values in conv1.weight, fc.bias"):
        load_state_dict_file(nan)
    torch.save({"meter": Meter()}, tmp_path / "objects.pth")
    with pytest.raises(PickledObjectsError, match="not loadable as plain tensors"):
        load_state_dict_file(tmp_path / "objects.pth")
    # the CLI: one line naming the file, exit 2, nothing written
    out = tmp_path / "out"
    assert build.main(["--model", "resnet18", "--weights", str(text), "--output-dir",
                       str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {text} is not a weights file written by torch.save"]
    assert not out.exists()


class Meter:  # a pickled Python object, as training checkpoints hold
    pass


@pytest.mark.unit
def test_output_folder_and_tuning_database_are_checked_before_the_build(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("")
    cases = [(["--output-dir", str(a_file)], f"--output-dir: output folder {a_file} is a file"),
             (["--output-dir", str(a_file / "sub")],
              f"output folder {a_file / 'sub'} cannot be made: {a_file} is a file")]
    db = tmp_path / "db"
    db.mkdir()
    (db / "database_workload.json").write_text('["ok"]\n{"broken": \n')
    cases.append((["--tuning-db", str(db)], r"--tuning-db: .*database_workload.json line 2 is "
                                            "not JSON"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            build.main(["--model", "resnet18", *argv])
        assert e.value.code == 2
        assert re.search(message, capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["db", "taken"]


@pytest.mark.unit
def test_a_full_disk_is_refused_before_the_build(tmp_path, capsys, monkeypatch):
    import f8tvm.api

    monkeypatch.setattr(f8tvm.api.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(2**30, 2**30 - 5 * 2**20, 5 * 2**20))
    with pytest.raises(SystemExit) as e:
        build.main(["--model", "resnet18", "--output-dir", str(tmp_path / "out")])
    assert e.value.code == 2
    assert re.search(r"--output-dir: output folder .*out: only 5 MiB free on its disk; a module "
                     r"needs about 64 MiB", capsys.readouterr().err)
    assert os.listdir(tmp_path) == []


@pytest.mark.host
def test_a_disk_that_fills_during_export_leaves_nothing(small, tmp_path, monkeypatch):
    cm, _ = small

    class Full:
        def export_library(self, path, **kwargs):
            with open(path, "wb") as f:
                f.write(b"\x7fELF partial")
            raise RuntimeError("ld: final link failed: No space left on device")

    monkeypatch.setattr(cm, "executable", Full())
    with pytest.raises(InputError, match=r"writing .*m\.so: no space left on the device of .* "
                                         r"nothing was written"):
        cm.export(str(tmp_path / "m.so"))
    assert os.listdir(tmp_path) == []


@pytest.mark.host
def test_export_into_a_file_is_refused_by_name(small, tmp_path):
    cm, _ = small
    (tmp_path / "taken").write_text("")
    with pytest.raises(InputError, match="output folder .*taken is a file"):
        cm.export(str(tmp_path / "taken" / "m.so"))


@pytest.mark.unit
def test_16_bit_and_float_images_are_scaled_or_refused(tmp_path):
    ramp = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    want = np.round(ramp * 255)
    sixteen = tmp_path / "ramp16.png"
    Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(sixteen)
    floats = tmp_path / "ramp.tiff"
    Image.fromarray(ramp.astype(np.float32), "F").save(floats)
    for path in (sixteen, floats):
        assert Image.open(path).mode in ("I;16", "I", "F")
        got = data.load_image_uint8(path, size=32, resample="nearest")[0]
        # 224/256 resize: compare the crop with the same crop of the 8-bit ramp
        ref = tmp_path / "ramp8.png"
        Image.fromarray(want.astype(np.uint8)).save(ref)
        expect = data.load_image_uint8(ref, size=32, resample="nearest")[0]
        assert np.abs(got.astype(int) - expect.astype(int)).max() <= 1, path
        assert got.max() > 200  # not all-0 (float) nor clipped to 255 everywhere (16-bit)
        assert got.min() < 50
    bright = tmp_path / "hdr.tiff"
    Image.fromarray((ramp * 1000).astype(np.float32), "F").save(bright)
    with pytest.raises(InputError, match=r"hdr\.tiff: a float image with values 0\.\.1000"):
        data.load_image_uint8(bright)


class _MeanNoKeepdim(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.unit
def test_a_global_pool_without_keepdim_says_how_to_write_it():
    with pytest.raises(F8TVMError, match=r"global average pool without keepdim \(write "
                                         r"x\.mean\(\(2, 3\), keepdim=True\)\.flatten\(1\)"):
        f8tvm.compile(_MeanNoKeepdim(), torch.zeros(1, 3, 8, 8), target="x86")


class _Reflect(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1,
                                                        padding_mode="reflect"))
        self.unused = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.body(x).mean((2, 3), keepdim=True), 1))


@pytest.mark.unit
def test_a_conv_padded_other_than_with_zeros_is_named():
    """It failed as 'f8tvm cannot quantize the operator relax.arange'."""
    with pytest.raises(F8TVMError, match=r"^Conv2d 'body.0' \(padding_mode='reflect'\): f8tvm "
                                         r"pads with zeros only"):
        f8tvm.compile(_Reflect(), torch.zeros(1, 3, 8, 8), target="x86")


@pytest.mark.unit
def test_calibration_that_saturates_most_values_warns():
    from f8tvm.api import import_model
    from f8tvm.calibrate import collect_stats, plan_fixed_point
    from f8tvm.core.errors import CalibrationWarning
    from f8tvm.core.graph import extract_graph

    torch.manual_seed(0)
    net = make_small_net()
    x = torch.randn(4, 3, SIZE, SIZE)
    graph = extract_graph(*import_model(net, x[:1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sound calibration warns nothing
        plan = plan_fixed_point(graph, collect_stats(graph, [x.numpy()]), "mse")
    assert plan.info["saturated"] == []
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1e6)
    graph = extract_graph(*import_model(net, x[:1]))
    with pytest.warns(CalibrationWarning, match=r"saturate on more than 10% of the calibration "
                                                r"values \(\w.* \d+%"):
        plan = plan_fixed_point(graph, collect_stats(graph, [x.numpy()]), "f8net")
    assert plan.info["saturated"][0]["fraction"] > 0.5


@pytest.mark.unit
def test_all_zero_weights_are_named_not_blamed_on_the_data():
    from f8tvm.api import import_model
    from f8tvm.calibrate import collect_stats, plan_fixed_point
    from f8tvm.core.errors import CalibrationWarning
    from f8tvm.core.graph import extract_graph

    net = make_small_net()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    x = torch.randn(2, 3, SIZE, SIZE)
    graph = extract_graph(*import_model(net, x[:1]))
    with pytest.warns(CalibrationWarning, match=r"4 layer\(s\) have all-zero weights and bias "
                                                r"\(conv1 \(Conv2d\), dw \(Conv2d\), grouped "
                                                r"\(Conv2d\), \.\.\.\): .*were the trained "
                                                r"weights loaded\?"):
        plan_fixed_point(graph, collect_stats(graph, [x.numpy()]), "mse")


@pytest.mark.unit
def test_a_calibration_folder_with_a_file_that_is_no_image_is_named(tmp_path, capsys):
    folder = tmp_path / "calib"
    folder.mkdir()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(folder / "a.png")
    (folder / "b.png").write_text("not a picture")
    Image.new("RGB", (40, 40)).save(folder / "c.jpg")
    (folder / "c.jpg").write_bytes((folder / "c.jpg").read_bytes()[:200])  # truncated
    for bad in (folder / "b.png", folder / "c.jpg"):
        with pytest.raises(InputError, match=re.escape(str(bad)) + " (is not an image Pillow "
                                             "can read|: the image cannot be decoded)"):
            data.load_image(bad, 32)
    assert build.main(["--model", "resnet18", "--input-size", "32", "--calib", str(folder),
                       "--output-dir", str(tmp_path / "out")]) == 2
    assert f"{folder / 'b.png'} is not an image Pillow can read" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
