import pytest
import torch

from causalprune import prunable_parameters
from causalprune.cli import main
from causalprune.models import MODELS, create_model


@pytest.mark.parametrize(
    ("name", "n_params", "n_prunable"),
    [
        ("resnet20", 269_722, 268_336),
        ("resnet32", 464_154, 461_872),
        ("lenet5", 62_006, 450 + 2400 + 48_000 + 10_080 + 840),  # conv1, conv2, fc1, fc2, fc3
        ("resnet18", 11_173_962, None),
        ("vgg16", 14_724_042, None),
    ],
)
def test_parameter_counts_and_output_shape(name, n_params, n_prunable):
    model = create_model(name, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == n_params
    if n_prunable is not None:
        assert sum(p.numel() for p in prunable_parameters(model).values()) == n_prunable
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(("name", "n_params"), [("mobilenet_v1", 4_231_976), ("resnet50", 25_557_032)])
def test_imagenet_models(name, n_params):
    model = create_model(name, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="valid: " + ", ".join(sorted(MODELS))):
        create_model("vgg99")


def test_cli_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "cd" in out and "same_batch" in out and "cubic" in out


def test_cli_bad_value_is_one_line_exit_2(capsys):
    assert main(["run", "--set", "prune.sparsity=1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prune.sparsity" in err[0] and "[0, 1)" in err[0]
