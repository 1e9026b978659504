"""The refusal of a crafted pickle names what it would run, as Python 3 calls it (torch.save writes Python 2 module
names: subprocess.call is pickled as commands.call, os.system as posix.system), for every place a payload can hide,
and the payload never runs."""

import argparse
import os
import pickle
import subprocess

import pytest
import torch

from semmae.errors import CheckpointError
from semmae.utils.safe_load import load_file, pickled_globals, readable_name


class System:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Call:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


class EvilTensor(torch.Tensor):
    """A tensor subclass: torch.save records the class, which unpickling would import and build."""


def optimizer_state(path, payload):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "optimizer_states": [{"state": {0: payload}}]}, path)


def dict_key(path, payload):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "loops": {payload: 1}}, path)


def tensor_subclass(path, payload):
    torch.save({"model": {"w": torch.zeros(2).as_subclass(EvilTensor)}, "extra": payload}, path)


def raw_pickle(path, payload):
    with open(path, "wb") as fh:
        pickle.dump({"model": {"w": [0.0]}, "x": payload}, fh, protocol=4)


def legacy_format(path, payload):
    torch.save({"model": {"w": torch.zeros(2)}, "x": payload}, path, _use_new_zipfile_serialization=False)


def official_args(path, payload):
    args = argparse.Namespace(model="mae_vit_base_patch16", output_dir=payload)
    torch.save({"model": {"w": torch.zeros(2)}, "args": args, "epoch": 799}, path)


class PersistentPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", obj.marker) if isinstance(obj, (System, Call)) else None


def persistent_id(path, payload):
    with open(path, "wb") as fh:
        PersistentPickler(fh, protocol=2).dump({"model": {}, "x": payload, "y": System(payload.marker)})


@pytest.mark.parametrize(
    "shape",
    [optimizer_state, dict_key, tensor_subclass, raw_pickle, legacy_format, official_args, persistent_id],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize("payload,name", [(System, "os.system"), (Call, "subprocess.call")])
def test_every_payload_shape_is_refused_naming_what_it_would_run(tmp_path, shape, payload, name):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    shape(path, payload(marker))
    with pytest.raises(CheckpointError) as err:
        load_file(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "trust_checkpoint=true" in message
    if shape is persistent_id:  # the payload became persistent ids, which name no function: not torch's format
        assert "is not a file torch.save wrote" in message
    elif shape is tensor_subclass:  # the first class it would build is the subclass
        assert "holds a reference to tests.utils.test_safe_load.EvilTensor," in message
    else:
        assert f"holds a reference to {name}," in message
    assert not marker.exists()


def test_python_2_names_are_read_as_python_3_names():
    assert readable_name("commands.call") == "subprocess.call" and readable_name("posix.system") == "os.system"
    assert readable_name("__builtin__.eval") == "builtins.eval" and readable_name("torch.Size") == "torch.Size"


def test_the_globals_of_a_pickle_are_read_without_running_it(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    raw_pickle(path, System(marker))
    assert "posix.system" in pickled_globals(path) and not marker.exists()
