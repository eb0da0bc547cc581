"""unijax.configs: every table row by name, overrides, validation naming the argument."""

import dataclasses
import re

import pytest

from unijax import configs


def test_every_row_resolves_and_is_valid():
    names = configs.names()
    assert len(names) == 15 + 4 + 3 + 1
    for name in names:
        cfg = configs.get(name)
        assert cfg.name == name
        assert cfg.layer == cfg.depth // 2
        hash(cfg)  # frozen and hashable: usable as a static jit argument / cache key


@pytest.mark.parametrize(
    "name, expected",
    [
        ("default", dict(arch="mlp", nonlinearity="leaky_relu", gain=1.0, lr=0.005, epochs=6000,
                         width=500, depth=20, layer=10, optimizer="sgd", batch_size=None,
                         dataset="two_points", dx2=1.0, dy2=0.5, dtype="float32")),
        ("convolution", dict(arch="conv", gain=0.95, lr=0.002, depth=10, layer=5)),
        ("skip connections", dict(arch="skip", gain=0.1, lr=0.01, depth=20)),
        ("shallow", dict(gain=0.35, lr=0.01, depth=2, layer=1)),
        ("narrow", dict(width=50, gain=1.05)),
        ("dropout", dict(arch="dropout", dropout=0.1, depth=10)),
        ("linear", dict(nonlinearity="none", gain=0.85, lr=0.00125)),
        ("elu", dict(nonlinearity="elu", gain=0.95, lr=0.00045)),
        ("tanh", dict(nonlinearity="tanh", gain=0.85, lr=0.00125)),
        ("swish", dict(nonlinearity="swish", gain=1.7, lr=0.0025)),
        ("very high initial weights", dict(gain=1.4, lr=0.00025)),
        ("XOR low weights", dict(dataset="xor", gain=0.7, lr=0.015, epochs=1000)),
        ("xor_high_weights", dict(gain=2.0, lr=3e-9)),
        ("XOR 2 layers", dict(depth=1, layer=0, gain=0.0015, lr=0.03, epochs=40000)),
        ("Blobs_high_weights", dict(dataset="blobs", nonlinearity="tanh", width=100, depth=4,
                                    gain=2.0, lr=0.0015, epochs=750, batch_size=64)),
        ("blobs very low weights", dict(gain=0.275, lr=0.05, epochs=2000)),
        ("mnist", dict(dataset="mnist", width=100, depth=4, gain=0.5, lr=0.002, epochs=500,
                       batch_size=64)),
    ],
)
def test_table_values(name, expected):
    cfg = configs.get(name)
    for field, value in expected.items():
        assert getattr(cfg, field) == value, field


@pytest.mark.parametrize(
    "spelling", ["XOR low weights", "xor_low_weights", "Xor-Low-Weights", "  xor  low_weights "]
)
def test_names_forgive_case_spaces_underscores(spelling):
    assert configs.get(spelling) == configs.get("xor low weights")


def test_overrides_and_layer_follows_depth():
    cfg = configs.get("default", width=32, depth=4, epochs=100)
    assert (cfg.width, cfg.depth, cfg.epochs, cfg.layer) == (32, 4, 100, 2)
    assert configs.get("default", depth=6, layer=1).layer == 1
    assert cfg.replace(depth=8).layer == 4
    assert dataclasses.replace(cfg, lr=0.1).lr == 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.width = 3


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown config name") as err:
        configs.get("resnet")
    assert "default" in str(err.value) and "xor_low_weights" in str(err.value)


def test_unknown_override_lists_fields():
    with pytest.raises(ValueError, match="unknown config field") as err:
        configs.get("default", widht=3)
    assert "width" in str(err.value)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(width=0), ["width", ">= 1"]),
        (dict(depth=-1), ["depth", ">= 1"]),
        (dict(epochs=0), ["epochs"]),
        (dict(lr=0.0), ["lr", "(0.0, inf)"]),
        (dict(lr=float("nan")), ["lr"]),
        (dict(gain=-1.0), ["gain", "(0.0, inf)"]),
        (dict(depth=4, layer=4), ["layer", "[0, 3]"]),
        (dict(layer=-1), ["layer", "[0, 19]"]),
        (dict(arch="resnet"), ["arch", "mlp"]),
        (dict(nonlinearity="sigmoid"), ["nonlinearity", "tanh"]),
        (dict(optimizer="rmsprop"), ["optimizer", "adam"]),
        (dict(dataset="cifar"), ["dataset", "mnist"]),
        (dict(batch_size=0), ["batch_size"]),
        (dict(dropout=1.5), ["dropout", "[0, 1)"]),
        (dict(dtype="int32"), ["dtype", "float32"]),
        (dict(dy2=-0.1), ["dy2", "[0.0, inf)"]),
        (dict(dx2=0.0), ["dx2", "(0.0, inf)"]),
        (dict(arch="conv", width=50, depth=10), ["width", "90"]),
    ],
)
def test_invalid_values_name_the_argument(overrides, words):
    with pytest.raises(ValueError) as err:
        configs.get("default", **overrides)
    # unijax's one message format: NAME=VALUE is out of range: must be ...
    assert re.match(rf"{words[0]}=\S+ is out of range: must be ", str(err.value)), err.value
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_dropout_arch_needs_a_rate():
    with pytest.raises(ValueError, match="dropout"):
        configs.get("dropout", dropout=0.0)
