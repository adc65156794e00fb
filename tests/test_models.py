"""The model zoo: registry, shapes, weights from local files only, fine-tuning levels."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benzarr.errors import DownloadRequiredError, InvalidArgumentError  # noqa: E402
from benzarr.models import (  # noqa: E402
    WeightsMismatchWarning,
    create_model,
    default_bands,
    list_models,
    load_weights,
    model_info,
)

EXPECTED_MODELS = {"shortcnn-rgb", "shortcnn-all", "inception-v1", "inception-v3", "resnet18", "resnet50",
                   "convnext-tiny", "efficientnet-b0", "vit-s8"}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # The machine's cores are shared; small single-threaded passes keep the suite predictable.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_registry_lists_every_family() -> None:
    assert EXPECTED_MODELS <= set(list_models())
    assert list_models() == sorted(list_models())


def test_shortcnn_rgb_has_the_study_parameter_count() -> None:
    model = create_model("shortcnn-rgb", num_classes=43)
    assert sum(p.numel() for p in model.parameters()) == 2_523_403
    assert model_info("shortcnn-rgb").num_params == 2_523_403


def test_model_info_and_default_bands() -> None:
    info = model_info("shortcnn-rgb")
    assert info.default_bands == "rgb" and info.in_channels == 3
    assert info.bands == ("B04", "B03", "B02")
    for name in list_models():
        expected = "rgb" if name.endswith("-rgb") else "all"
        assert default_bands(name) == expected
        assert model_info(name).in_channels == (3 if expected == "rgb" else 12)


def test_in_channels_none_means_default_bands() -> None:
    assert create_model("shortcnn-rgb").conv1.in_channels == 3
    assert create_model("shortcnn-all").conv1.in_channels == 12
    assert create_model("resnet18").conv1.in_channels == 12


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
@pytest.mark.parametrize("channels", [3, 12])
def test_forward_at_120_pixels_gives_logits_per_class(name: str, channels: int) -> None:
    model = create_model(name, in_channels=channels, num_classes=19).eval()
    x = torch.randn(2, channels, 120, 120)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 19) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["inception-v1", "inception-v3"])
def test_inception_returns_a_tensor_in_training_mode(name: str) -> None:
    # No auxiliary heads: training mode returns plain logits, not a namedtuple.
    model = create_model(name, in_channels=3, num_classes=5).train()
    out = model(torch.randn(2, 3, 120, 120))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)


def test_one_optimisation_step_lowers_the_loss() -> None:
    torch.manual_seed(0)
    model = create_model("shortcnn-rgb", num_classes=43)
    x = torch.randn(4, 3, 120, 120)
    y = (torch.rand(4, 43) < 0.2).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = loss_fn(model(x), y)
    optimiser.zero_grad()
    before.backward()
    optimiser.step()
    with torch.no_grad():
        after = loss_fn(model(x), y)
    assert after.item() < before.item()


@pytest.mark.parametrize("weights", ["imagenet", "IMAGENET1K_V1"])
def test_named_weights_are_refused_never_downloaded(weights: str) -> None:
    with pytest.raises(DownloadRequiredError, match="never downloads"):
        create_model("resnet18", weights=weights)


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="not found"):
        create_model("shortcnn-rgb", weights=tmp_path / "nope.pt")
    # a folder (a run, a store) that exists: "not found" sent users looking for a typo
    (tmp_path / "run").mkdir()
    with pytest.raises(InvalidArgumentError, match="is a folder; give the weights file itself"):
        create_model("shortcnn-rgb", weights=tmp_path / "run")


def test_an_unreadable_weights_file_is_one_line_that_says_why(tmp_path: Path) -> None:
    """torch's own message was empty (a 0-byte file), an errno (a file cut short) or twelve
    lines on loading without weights_only (any file that is no torch file at all)."""
    import fractions

    from benzarr.checkpoint import load_checkpoint

    model = create_model("shortcnn-rgb", num_classes=3)
    good = tmp_path / "good.pt"
    torch.save({"model": model.state_dict()}, good)
    cases = {"empty.pt": b"", "cut.pt": good.read_bytes()[:4000], "zarr.json": b'{"zarr_format": 3}'}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"model": model.state_dict(), "note": fractions.Fraction(1, 3)}, tmp_path / "objects.pt")
    why = {"empty.pt": "an empty file (0 bytes)", "cut.pt": "a torch.save file that is damaged or cut short (4,000 bytes)",
           "zarr.json": "not a file written by torch.save", "objects.pt": "it holds Python objects besides tensors"}
    for name, reason in why.items():
        with pytest.raises(InvalidArgumentError) as raised:
            load_weights(create_model("shortcnn-rgb", num_classes=3), tmp_path / name)
        assert str(raised.value).startswith(f"cannot read weights from {tmp_path / name}: {reason}")
        assert "\n" not in str(raised.value)
        with pytest.raises(InvalidArgumentError, match=re.escape(f"cannot read the checkpoint ({reason}")):
            load_checkpoint(tmp_path / name)


def test_weights_round_trip_gives_the_same_outputs(tmp_path: Path) -> None:
    source = create_model("shortcnn-rgb", num_classes=43).eval()
    path = tmp_path / "shortcnn.pt"
    torch.save(source.state_dict(), path)
    loaded = create_model("shortcnn-rgb", num_classes=43, weights=str(path)).eval()
    x = torch.randn(2, 3, 120, 120)
    with torch.no_grad():
        assert torch.equal(source(x), loaded(x))


def test_weights_from_a_benzarr_checkpoint_dict(tmp_path: Path) -> None:
    source = create_model("resnet18", in_channels=12, num_classes=19).eval()
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": source.state_dict(), "step": 10, "config": {"lr": 1e-3}}, path)
    loaded = create_model("resnet18", in_channels=12, num_classes=19, weights=path).eval()
    x = torch.randn(1, 12, 120, 120)
    with torch.no_grad():
        assert torch.equal(source(x), loaded(x))


def test_mismatched_first_conv_and_head_are_skipped_and_reported(tmp_path: Path) -> None:
    rgb = create_model("resnet18", in_channels=3, num_classes=43)
    path = tmp_path / "rgb43.pt"
    torch.save(rgb.state_dict(), path)
    with pytest.warns(WeightsMismatchWarning, match="conv1.weight"):
        model = create_model("resnet18", in_channels=12, num_classes=19, weights=path)
    assert torch.equal(model.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)
    assert model.conv1.weight.shape[1] == 12

    report = load_weights(create_model("resnet18", in_channels=12, num_classes=19), path)
    assert set(report.skipped_shape) == {"conv1.weight", "fc.weight", "fc.bias"}
    assert report.skipped_shape["conv1.weight"] == ((64, 3, 7, 7), (64, 12, 7, 7))
    assert "layer4.1.bn2.running_mean" in report.loaded


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "shortcnn.pt"
    torch.save(create_model("shortcnn-rgb").state_dict(), path)
    with pytest.raises(InvalidArgumentError, match="no tensor"):
        create_model("inception-v1", weights=path)


@pytest.mark.parametrize(
    ("name", "head", "last_block"),
    [
        ("shortcnn-rgb", "classifier.", "conv3."),
        ("resnet18", "fc.", "layer4."),
        ("inception-v1", "fc.", "inception5b."),
        ("inception-v3", "fc.", "Mixed_7c."),
        ("convnext-tiny", "classifier.", "features.7."),
        ("efficientnet-b0", "classifier.", ("features.7.", "features.8.")),
        ("vit-s8", "heads.", ("encoder.layers.encoder_layer_11.", "encoder.ln.")),
    ],
)
def test_finetune_levels_freeze_the_right_parameters(name: str, head: str, last_block: str | tuple[str, ...]) -> None:
    everything = {n for n, _ in create_model(name, finetune=0).named_parameters()}
    assert _trainable(create_model(name, finetune=0)) == everything

    level1 = _trainable(create_model(name, finetune=1))
    assert level1 == {n for n in everything if n.startswith(head)} and level1

    level2 = _trainable(create_model(name, finetune=2))
    blocks = (last_block,) if isinstance(last_block, str) else last_block
    expected = {n for n in everything if n.startswith((head, *blocks))}
    assert level2 == expected and len(level2) > len(level1)


def test_frozen_batchnorm_keeps_running_statistics() -> None:
    model = create_model("resnet18", in_channels=3, num_classes=5, finetune=1).train()
    before = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 120, 120) + 3.0)
    assert torch.equal(model.bn1.running_mean, before)


def test_finetune_must_be_a_known_level() -> None:
    with pytest.raises(InvalidArgumentError, match="finetune"):
        create_model("shortcnn-rgb", finetune=3)
    with pytest.raises(InvalidArgumentError, match=r"not True$"):
        create_model("shortcnn-rgb", finetune=True)  # was level 1: a frozen backbone nobody asked for


@pytest.mark.parametrize("changes, message", [
    ({"in_channels": 2.7}, r"^in_channels must be a whole number, got 2\.7$"),  # was 2 channels, silently
    ({"in_channels": "abc"}, r"^in_channels must be a whole number, got 'abc'$"),
    ({"num_classes": None}, r"^num_classes must be a whole number, got None$"),
    ({"num_classes": 0}, r"^num_classes must be 1 or more, got 0$"),
    ({"foo": 1}, r"^shortcnn-rgb takes no such option: .*'foo'$"),
])
def test_bad_counts_and_options_are_one_line(changes: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        create_model("shortcnn-rgb", **changes)
    assert create_model("shortcnn-rgb", in_channels=np.int64(4)).benzarr_in_channels == 4  # numpy integers pass


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(InvalidArgumentError, match="shortcnn-rgb") as info:
        create_model("vgg16")
    assert "resnet50" in str(info.value) and "vgg16" in str(info.value)


def test_models_command_lists_names_parameters_and_bands() -> None:
    import typer
    from typer.testing import CliRunner

    from benzarr_cli.models import command

    # A one-command app: this test does not depend on the other commands' modules.
    app = typer.Typer()
    app.command("models")(command)
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0, result.output
    table, presets = result.output.split("\n\n", 1)  # the model table, then the band presets
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
    assert set(rows) == set(list_models())
    assert "2,523,403" in rows["shortcnn-rgb"] and "B04,B03,B02" in rows["shortcnn-rgb"]
    assert "all 12" in rows["resnet50"]
    from benzarr.bands import BAND_PRESETS

    listed = dict(line.split() for line in presets.splitlines()[1:] if line.strip())
    assert listed == {name: ",".join(bands) for name, bands in BAND_PRESETS.items()}


def test_torchvision_is_imported_only_for_its_models() -> None:
    """torchvision takes about 2 s to import (its ops pull in dynamo): ``benzarr evaluate`` of a
    ShortCNN run took 4.2 s with it, 2.3 s without. The torchvision families import it when
    they build a model, not when benzarr.models registers them."""
    import subprocess
    import sys

    probe = ("import sys; from benzarr.models import create_model, list_models; "
             "create_model('shortcnn-all', in_channels=12, num_classes=43); print('torchvision' in sys.modules); "
             "create_model('resnet18', in_channels=12, num_classes=43); print('torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"], done.stderr
