"""`netc export` and `netc run --init-from` as a user runs them: files, warnings, errors."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file
from safetensors.torch import load_file as torch_load
from sklearn.datasets import load_digits

from conftest import cli_main

MLP = """\
network mlp
input  x : [64]
target y : class(10)
logits = x -> dense(32) -> relu -> dense(10)
loss cross_entropy(logits, y)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(spec, checkpoint folder, a folder for files) of the MLP after 60 training steps."""
    folder = tmp_path_factory.mktemp("export")
    spec = folder / "mlp.net"
    spec.write_text(MLP)
    result = cli_main("run", str(spec), "--steps", "60", "--lr", "0.3", "--quiet",
                      "--checkpoint", str(folder / "run"))
    assert result.returncode == 0, result.stderr
    return str(spec), str(folder / "run"), folder


def export(trained, to, name, *more):
    spec, checkpoint, folder = trained
    path = str(folder / name)
    return cli_main("export", spec, "--to", to, "-o", path, "--checkpoint", checkpoint,
                    *more), path


def test_onnx_reproduces_netdsls_predictions_and_accuracy(trained):
    spec, checkpoint, folder = trained
    result, path = export(trained, "onnx", "mlp.onnx")
    assert result.returncode == 0, result.stderr
    assert f"the weights of {checkpoint}/checkpoint.npz" in result.stderr
    assert result.stdout == ""  # the "wrote" line is a notice
    assert "warning" not in result.stderr
    x, y = load_digits(return_X_y=True)
    x = x / 16  # the pixels scaled to [0, 1], as the bundled data trained on them
    np.savez(folder / "digits.npz", x=x[:300])
    predicted = cli_main("predict", spec, "--checkpoint", checkpoint,
                         "--data", str(folder / "digits.npz"), "-o", str(folder / "pred.npz"))
    assert predicted.returncode == 0, predicted.stderr
    (logits,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"x": x[:300].astype(np.float32)})
    with np.load(folder / "pred.npz") as netdsl:
        np.testing.assert_allclose(logits, netdsl["logits"], rtol=1e-4, atol=1e-5)
        assert (logits.argmax(1) == netdsl["logits_class"]).all()
        accuracy = (netdsl["logits_class"] == y[:300]).mean()
    assert accuracy > 0.5  # trained: the comparison is of a network that learned
    assert (logits.argmax(1) == y[:300]).mean() == accuracy


def test_safetensors_holds_the_checkpoints_weights_by_name(trained):
    result, path = export(trained, "safetensors", "mlp.safetensors")
    assert result.returncode == 0, result.stderr
    tensors = load_file(path)
    assert sorted(tensors) == ["dense1.bias", "dense1.weight", "logits.bias", "logits.weight"]
    assert tensors["dense1.weight"].shape == (32, 64)
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask
    with safe_open(path, "np") as f:
        meta = f.metadata()
    assert meta["spec"] == "mlp" and len(meta["spec_sha256"]) == 64


def test_torch_writes_a_module_and_its_state_dict(trained):
    result, path = export(trained, "torch", "mlp_torch")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(path)) == ["model.py", "model.safetensors"]
    source = open(os.path.join(path, "model.py")).read()
    assert "nn.Linear(64, 32)" in source and "mlp.net:4" in source


def test_init_from_starts_training_from_the_file(trained):
    spec, _, folder = trained
    result, path = export(trained, "safetensors", "start.safetensors")
    assert result.returncode == 0, result.stderr
    run = cli_main("run", spec, "--steps", "1", "--quiet", "--lr", "1e-12",
                   "--init-from", path, "--checkpoint", str(folder / "again"))
    assert run.returncode == 0, run.stderr
    again = cli_main("export", spec, "--to", "safetensors", "-o", str(folder / "again.st"),
                     "--checkpoint", str(folder / "again"))
    assert again.returncode == 0, again.stderr
    before, after = load_file(path), load_file(str(folder / "again.st"))
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=1e-6)


def test_init_from_lists_what_does_not_fit(trained):
    spec, _, folder = trained
    result, path = export(trained, "safetensors", "fit.safetensors")
    other = folder / "wider.net"
    other.write_text(MLP.replace("dense(32)", "dense(48)").replace("dense(10)", "dense(10) -> relu"))
    run = cli_main("run", str(other), "--steps", "1", "--init-from", path,
                   "--checkpoint", str(folder / "wider"))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "shapes differ: dense1.weight (32, 64) (the network's: (48, 64))" in run.stderr


def test_without_a_checkpoint_the_initial_weights_with_a_warning(tmp_path):
    spec = tmp_path / "mlp.net"
    spec.write_text(MLP)
    result = cli_main("export", str(spec), "--to", "onnx", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "warning: no checkpoint in runs/mlp/" in result.stderr
    assert (tmp_path / "mlp.onnx").exists()


def test_a_missing_checkpoint_is_one_clear_error(tmp_path):
    spec = tmp_path / "mlp.net"
    spec.write_text(MLP)
    result = cli_main("export", str(spec), "--to", "onnx", "--checkpoint", str(tmp_path / "no"),
                      cwd=str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "there is no checkpoint there" in result.stderr.splitlines()[0]
    assert not (tmp_path / "mlp.onnx").exists()


@pytest.mark.parametrize("to", ["onnx", "torch"])
def test_an_op_without_a_counterpart_writes_nothing(tmp_path, to):
    spec = tmp_path / "unpool.net"
    spec.write_text("network unpool\ninput x : [1, 8, 8]\ntarget y : [1, 8, 8]\n"
                    "p = x -> maxpool(2)\nz = maxunpool(p, p, 2)\nloss mse(z, y)\n")
    result = cli_main("export", str(spec), "--to", to, "-o", str(tmp_path / "out"),
                      cwd=str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{spec}:5:") and "has no" in line for line in lines)
    assert any("MaxUnpool" in line for line in lines)
    assert not (tmp_path / "out").exists()


def test_a_place_that_cannot_be_written_is_one_clear_error(tmp_path):
    spec = tmp_path / "mlp.net"
    spec.write_text(MLP)
    (tmp_path / "file").write_text("")
    result = cli_main("export", str(spec), "--to", "onnx", "-o", str(tmp_path / "file" / "x.onnx"),
                      cwd=str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: cannot write {tmp_path / 'file' / 'x.onnx'}")


def test_torch_replaces_an_exported_folder_whole_under_the_umask(trained):
    _, _, folder = trained
    result, path = export(trained, "torch", "replaced")
    assert result.returncode == 0, result.stderr
    os.makedirs(os.path.join(path, "__pycache__"))  # what importing model.py leaves
    old = os.stat(os.path.join(path, "model.py")).st_ino
    mask = os.umask(0o027)  # the subprocess inherits it
    try:
        again, _ = export(trained, "torch", "replaced")
    finally:
        os.umask(mask)
    assert again.returncode == 0, again.stderr
    assert sorted(os.listdir(path)) == ["model.py", "model.safetensors"]
    assert os.stat(os.path.join(path, "model.py")).st_ino != old
    assert os.stat(path).st_mode & 0o777 == 0o750
    assert os.stat(os.path.join(path, "model.safetensors")).st_mode & 0o777 == 0o640
    assert not [n for n in os.listdir(folder) if n.startswith(".replaced.")]  # no temporaries


def test_torch_never_deletes_a_folder_holding_other_things(trained):
    _, _, folder = trained
    (folder / "mine").mkdir()
    (folder / "mine" / "notes.txt").write_text("keep me")
    result, path = export(trained, "torch", "mine")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "notes.txt" in result.stderr.splitlines()[0]
    assert os.listdir(path) == ["notes.txt"]


def test_a_folder_write_that_fails_leaves_the_old_folder(tmp_path):
    from netdsl.atomic import write_folder

    target = tmp_path / "out"
    write_folder(str(target), {"a": b"1", "b": b"2"})
    with pytest.raises(FileNotFoundError):  # the second file cannot be made
        write_folder(str(target), {"a": b"new", "missing/b": b"2"}, replaces={"b"})
    assert sorted(os.listdir(target)) == ["a", "b"] and (target / "a").read_bytes() == b"1"
    assert os.listdir(tmp_path) == ["out"]


def test_init_partial_loads_what_fits_and_says_so(trained):
    spec, _, folder = trained
    result, path = export(trained, "safetensors", "base.safetensors")
    assert result.returncode == 0, result.stderr
    headed = folder / "headed.net"  # a new hidden layer and head on the same first layer
    headed.write_text(MLP.replace("dense(10)", "dense(16) -> relu -> dense(10)"))
    run = cli_main("run", str(headed), "--steps", "1", "--quiet", "--lr", "1e-12",
                   "--init-from", path, "--init-partial", "--checkpoint", str(folder / "headed"))
    assert run.returncode == 0, run.stderr
    assert "loaded 3 tensors from" in run.stderr  # logits.bias (10,) fits the new head too
    assert "dense1.weight, dense1.bias, logits.bias" in run.stderr
    assert "left at their initial values: dense2.weight, dense2.bias, logits.weight" in run.stderr
    after = cli_main("export", str(headed), "--to", "safetensors", "-o", str(folder / "h.st"),
                     "--checkpoint", str(folder / "headed"))
    assert after.returncode == 0, after.stderr
    before, loaded = load_file(path), load_file(str(folder / "h.st"))
    np.testing.assert_allclose(loaded["dense1.weight"], before["dense1.weight"], atol=1e-6)
    np.testing.assert_allclose(loaded["logits.bias"], before["logits.bias"], atol=1e-6)
    assert loaded["logits.weight"].shape == (10, 16)
    strict = cli_main("run", str(headed), "--steps", "1", "--init-from", path,
                      "--checkpoint", str(folder / "strict"))
    assert strict.returncode == 1 and "--init-partial" in strict.stderr


def test_a_normalising_spec_exports_its_normalisation(tmp_path):
    spec = tmp_path / "norm.net"
    spec.write_text(MLP + "train sgd(lr=0.1), normalize=true\n")
    run = cli_main("run", str(spec), "--steps", "30", "--quiet", "--checkpoint",
                   str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr
    x = load_digits(return_X_y=True)[0][:100] / 16  # raw data, as netc predict takes it
    np.savez(tmp_path / "raw.npz", x=x)
    predicted = cli_main("predict", str(spec), "--checkpoint", str(tmp_path / "run"),
                         "--data", str(tmp_path / "raw.npz"), "-o", str(tmp_path / "pred.npz"))
    assert predicted.returncode == 0, predicted.stderr
    with np.load(tmp_path / "pred.npz") as netdsl:
        want = netdsl["logits"]
    for to in ("onnx", "torch", "safetensors"):
        result = cli_main("export", str(spec), "--to", to, "-o", str(tmp_path / f"out_{to}"),
                          "--checkpoint", str(tmp_path / "run"))
        assert result.returncode == 0, result.stderr
        assert "it standardises x as training did" in result.stderr
    model = onnx.load(str(tmp_path / "out_onnx"))
    assert [n.op_type for n in model.graph.node][:2] == ["Sub", "Div"]
    (logits,) = ort.InferenceSession(str(tmp_path / "out_onnx"),
                                     providers=["CPUExecutionProvider"]).run(
        None, {"x": x.astype(np.float32)})
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
    namespace = {}
    exec(open(tmp_path / "out_torch" / "model.py").read(), namespace)
    module = namespace["Model"]()
    module.load_state_dict(torch_load(str(tmp_path / "out_torch" / "model.safetensors")))
    with torch.no_grad():
        got = module.eval()(torch.as_tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    tensors = load_file(str(tmp_path / "out_safetensors"))
    assert tensors["normalize.x.mean"].shape == (64,) and "normalize.x.std" in tensors
    # the module loads the safetensors export as its state_dict, and --init-from reads it
    module.load_state_dict(torch_load(str(tmp_path / "out_safetensors")))
    again = cli_main("run", str(spec), "--steps", "1", "--quiet", "--init-from",
                     str(tmp_path / "out_safetensors"), "--checkpoint", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr


MIXED = """\
network mixed
import rnn
input  x : seq[3]
target y : seq class(4)
state  s : [4]
h = x -> gru_reset_after(5) -> elman(6)
s = tanh(dense(concat(h, s[t-1]), 4))
loss cross_entropy(s, y)
"""


def test_native_rnn_writes_the_cells_natively_and_says_which_stay_scans(tmp_path):
    spec = tmp_path / "mixed.net"
    spec.write_text(MIXED)
    result = cli_main("export", str(spec), "--to", "onnx", "--native-rnn", "-o",
                      str(tmp_path / "mixed.onnx"), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "--native-rnn" in line]
    assert notes == ["note: --native-rnn: 1 recurrence(s) stay Scans (of s): only the standard "
                     "library's lstm, gru_reset_after and elman cells have native ops"]
    types = [n.op_type for n in onnx.load(str(tmp_path / "mixed.onnx")).graph.node]
    assert types.count("GRU") == 1 and types.count("RNN") == 1 and types.count("Scan") == 1
