"""The model factory and the ``conv='auto'`` table: resolution per platform, recorded lowering."""
import jax
import jax.numpy as jnp
import pytest

from jax_unlearn.models import (AUTO_LOWERING, CONV_CHOICES, CONV_LOWERINGS, ResNet, arch_name, architecture,
                                lowering_of, make_model, parse_arch, resolve_conv)


def test_auto_resolves_per_platform_from_one_table():
    assert resolve_conv("auto", "cpu") == "canonical"  # measured fastest inside lax.scan on XLA:CPU
    assert resolve_conv("auto", "gpu") == "xla"   # GPU keeps XLA's convolution until measured otherwise
    assert resolve_conv("auto", "some-new-backend") == "xla"
    assert resolve_conv("auto") == AUTO_LOWERING[jax.devices()[0].platform]
    assert set(AUTO_LOWERING.values()) <= set(CONV_LOWERINGS)
    for name in CONV_LOWERINGS:  # explicit names are never changed by the platform
        assert resolve_conv(name, "cpu") == resolve_conv(name, "gpu") == name


def test_unknown_lowering_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: auto, xla, gemm, gemm-body"):
        resolve_conv("winograd")
    with pytest.raises(ValueError, match="unknown dtype"):
        make_model(10, dtype="float16")


@pytest.mark.parametrize("conv", CONV_CHOICES)
def test_make_model_records_its_resolved_lowering(conv):
    model = make_model(10, conv=conv)
    assert lowering_of(model) == resolve_conv(conv)
    assert model.num_classes == 10 and model.dtype == jnp.float32


def test_lowering_of_a_custom_model():
    assert lowering_of(ResNet(stage_sizes=(1,), width=4)) == "xla"
    assert lowering_of(ResNet(stage_sizes=(1,), width=4, conv_impl="gemm", stem_conv_impl="gemm")) == "gemm"
    assert lowering_of(ResNet(stage_sizes=(1,), width=4, conv_impl="xla", stem_conv_impl="gemm")) == "xla+stem-gemm"


def test_architecture_round_trips_a_smaller_resnet():
    assert architecture(make_model(10)) is None  # ResNet-18: nothing to record
    tiny = ResNet(stage_sizes=(1, 1), num_classes=4, width=4)
    arch = architecture(tiny)
    assert arch == {"stage_sizes": [1, 1], "width": 4}
    rebuilt = make_model(4, arch=arch, conv="xla")
    x = jnp.zeros((1, 32, 32, 3))
    assert jax.tree_util.tree_structure(rebuilt.init(jax.random.key(0), x)) == jax.tree_util.tree_structure(
        tiny.init(jax.random.key(0), x))


def test_parse_arch_names_resnet18_or_a_smaller_resnet_and_round_trips():
    assert parse_arch("resnet18") is None and parse_arch("resnet:2,2,2,2:64") is None  # ResNet-18 either way
    assert parse_arch("resnet:1,1:8") == {"stage_sizes": [1, 1], "width": 8}
    for spec in ("resnet18", "resnet:1,1:8", "resnet:1,2,1:16"):
        assert arch_name(parse_arch(spec)) == spec
    assert architecture(make_model(10, arch=parse_arch("resnet:1,1:8"))) == parse_arch("resnet:1,1:8")
    for bad in ("resnet34", "resnet:1,1", "resnet:a:8", "resnet::8", "vgg:1:8"):
        with pytest.raises(ValueError, match="valid: resnet18, or resnet:STAGES:WIDTH"):
            parse_arch(bad)
    for bad in ("resnet:0,1:8", "resnet:1,1:0", "resnet:1,1,1,1,1:8"):
        with pytest.raises(ValueError, match="1 to 4 stages"):
            parse_arch(bad)
