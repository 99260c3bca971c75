"""UCL-TIG training: configuration, split, patch sampling, loss, a short training and the checkpoint folder."""

from __future__ import annotations

import json

import nibabel
import numpy as np
import pytest
import torch

from gliomaseg.data.cases import discover_cases
from gliomaseg.data.labels import CORE, EDEMA, ENHANCING
from gliomaseg.data.preprocessing import preprocess_case
from gliomaseg.data.synthetic import make_synthetic_dataset
from gliomaseg.inference.cascade import (
    CASCADE_FILE,
    is_cascade_checkpoint,
    load_cascade,
    predict_case_with_cascade,
    predict_cases_with_cascade,
)
from gliomaseg.models.ucltig import UclTigNet
from gliomaseg.training.config import merge
from gliomaseg.training.datasets import split_cases
from gliomaseg.training.ucltig import (
    PatchSampler,
    build_loss,
    load_ucltig_config,
    sampling_box,
    stage_target,
    train_cascade,
    train_cascade_from_config,
    train_network,
)

CHANNELS = ("flair", "t1", "t1c", "t2")
TINY = {
    "model": {"params": {"width": 4}},
    "cascade": {"patch_sizes": {"wnet": [11, 24, 24], "tnet": [11, 16, 16], "enet": [11, 16, 16]}},
    "patches": {"batch_size": 2},
    "training": {"iterations": 2, "device": "cpu", "log_every": 1},
}


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Run torch on one thread: tiny tensors on a shared, loaded CPU are many times faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("ucltig_data"), 3, shape=(48, 48, 32), seed=7)


@pytest.fixture(scope="module")
def cases(dataset):
    return [preprocess_case(case, CHANNELS) for case in discover_cases(dataset)]


def tiny_config(**changes):
    return merge(load_ucltig_config(TINY), changes)


# --- configuration and split ---------------------------------------------------------------------


def test_shipped_config_has_reference_settings() -> None:
    config = load_ucltig_config()
    assert config["model"]["name"] == "ucltig"
    assert config["cascade"]["patch_sizes"]["wnet"] == [19, 144, 144]
    assert config["cascade"]["views"] == ["axial", "sagittal", "coronal"]
    assert config["patches"]["batch_size"] == 5
    assert config["optimizer"]["lr"] == pytest.approx(1e-3)


def test_config_overrides_parse_yaml_values(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  iterations: 7\n")

    config = load_ucltig_config(path, ["cascade.views=[axial]", "loss.name=dice_ce"])

    assert config["training"]["iterations"] == 7
    assert config["cascade"]["views"] == ["axial"]
    assert config["loss"]["name"] == "dice_ce"
    assert config["training"]["log_every"] == 100


def test_config_rejects_malformed_override() -> None:
    with pytest.raises(ValueError, match="key=value"):
        load_ucltig_config(None, ["training.iterations"])


def test_config_rejects_unknown_key() -> None:
    with pytest.raises(ValueError, match="unknown configuration key 'training.epochs'"):
        load_ucltig_config(None, ["training.epochs=3"])


def test_config_by_shipped_name() -> None:
    assert load_ucltig_config("ucltig") == load_ucltig_config()


# --- targets and patches -------------------------------------------------------------------------


def test_stage_target_regions() -> None:
    classes = np.array([0, CORE, EDEMA, ENHANCING], dtype=np.uint8)
    assert stage_target(classes, "wnet").tolist() == [0, 1, 1, 1]
    assert stage_target(classes, "tnet").tolist() == [0, 1, 0, 1]
    assert stage_target(classes, "enet").tolist() == [0, 0, 0, 1]


def test_sampling_box_contains_reference_region(cases) -> None:
    case = cases[0]
    for stage, region in (("tnet", "wnet"), ("enet", "tnet")):
        box = sampling_box(case, stage, margin=2)
        mask = stage_target(case.label, region).astype(bool)
        inside = np.zeros(mask.shape, dtype=bool)
        inside[box] = True
        assert mask.any()
        assert not np.any(mask & ~inside)
    assert sampling_box(case, "wnet", margin=2) == tuple(slice(0, n) for n in case.label.shape)


def test_sampling_box_without_tumor_is_none(cases) -> None:
    case = cases[0]
    empty = type(case)(case.case_id, case.image, np.zeros_like(case.label), case.brain_mask, case.channels, case.geometry)
    assert sampling_box(empty, "tnet", margin=5) is None


@pytest.mark.parametrize("view", ["axial", "sagittal", "coronal"])
def test_patch_sampler_shapes(cases, view: str) -> None:
    sampler = PatchSampler(cases, "tnet", view, (11, 20, 12), margin=3, seed=0)

    images, labels = sampler.batch(3)

    assert tuple(images.shape) == (3, 4, 11, 20, 12)
    assert images.dtype == torch.float32
    assert tuple(labels.shape) == (3, 1, 3, 20, 12)
    assert labels.dtype == torch.int64
    assert labels.any()


def test_patch_sampler_labels_match_images(cases) -> None:
    # A label patch taken from the flair channel's own region must line up with the image patch:
    # where the target is foreground, the image patch is inside the brain (non-zero).
    sampler = PatchSampler(cases, "wnet", "axial", (11, 24, 24), seed=1)
    for _ in range(5):
        images, labels = sampler.batch(2)
        central = images[:, :, 4:-4]
        foreground = labels[:, 0].bool()
        assert torch.all(central.abs().sum(1)[foreground] > 0)


def test_patch_sampler_rejects_cases_without_region(cases) -> None:
    case = cases[0]
    empty = type(case)(case.case_id, case.image, np.zeros_like(case.label), case.brain_mask, case.channels, case.geometry)
    with pytest.raises(ValueError, match="no training case contains"):
        PatchSampler([empty], "enet", "axial", (11, 16, 16))


# --- loss ----------------------------------------------------------------------------------------


def test_dice_loss_matches_reference_formula() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 3, 4, 4)
    target = (torch.rand(2, 1, 3, 4, 4) > 0.6).long()

    value = build_loss("dice")(logits, target)

    probabilities = torch.softmax(logits, dim=1)
    one_hot = torch.cat([1 - target, target], dim=1).float()
    dims = (0, 2, 3, 4)
    per_class = 2 * (probabilities * one_hot).sum(dims) / ((probabilities**2).sum(dims) + one_hot.sum(dims) + 1e-5)
    assert value.item() == pytest.approx(1 - per_class.mean().item(), abs=1e-5)


def test_dice_loss_near_zero_when_correct() -> None:
    target = torch.zeros(1, 1, 2, 4, 4, dtype=torch.long)
    target[..., :2, :] = 1
    foreground = 20.0 * (2 * target.float() - 1)
    logits = torch.cat([-foreground, foreground], dim=1)
    assert build_loss("dice")(logits, target).item() < 1e-3


def test_unknown_loss_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown UCL-TIG loss"):
        build_loss("focal")


# --- training ------------------------------------------------------------------------------------


def test_short_training_reduces_loss(cases) -> None:
    torch.manual_seed(0)
    network = UclTigNet("wnet", "axial", width=8)
    sampler = PatchSampler(cases, "wnet", "axial", (11, 24, 24), seed=0)

    history = train_network(network, sampler, iterations=25, batch_size=4, log_every=5, device="cpu", progress=False)

    assert history.iterations == 25
    assert history.fixed_batch_loss["after"] < history.fixed_batch_loss["before"]
    assert history.losses[-1][1] < history.losses[0][1]
    assert not network.training


def test_training_stops_at_time_budget(cases) -> None:
    network = UclTigNet("enet", "coronal", width=4)
    sampler = PatchSampler(cases, "enet", "coronal", (11, 16, 16), seed=0)

    history = train_network(network, sampler, iterations=10_000, batch_size=1, max_seconds=0.5, device="cpu", progress=False)

    assert 1 <= history.iterations < 10_000


def test_train_cascade_writes_loadable_folder(cases, tmp_path) -> None:
    config = tiny_config(cascade={"views": ["axial", "coronal"]})

    manifest = train_cascade(cases, tmp_path, config, progress=False)

    assert is_cascade_checkpoint(tmp_path)
    assert json.loads((tmp_path / CASCADE_FILE).read_text()) == json.loads(json.dumps(manifest))
    for stage in ("wnet", "tnet", "enet"):
        assert sorted(manifest["networks"][stage]) == ["axial", "coronal"]
        for name in manifest["networks"][stage].values():
            assert (tmp_path / name).is_file()

    cascade = load_cascade(tmp_path)
    assert cascade.channels == CHANNELS
    assert cascade.in_plane_sizes["tnet"] == (16, 16)
    loaded = cascade.networks["tnet"]["coronal"]
    assert loaded.net.width == 4
    assert not loaded.training


def test_checkpoint_round_trip_keeps_predictions(cases, tmp_path) -> None:
    config = tiny_config(cascade={"stages": ["wnet", "tnet", "enet"], "views": ["sagittal"]})
    train_cascade(cases, tmp_path, config, progress=False)
    cascade = load_cascade(tmp_path)
    from gliomaseg.models.checkpoint import load_checkpoint

    network, metadata = load_checkpoint(tmp_path / "wnet_sagittal.safetensors")
    image = torch.from_numpy(cases[1].image[None, :, :16, :16, :16].copy())

    with torch.no_grad():
        assert torch.equal(network(image), cascade.networks["wnet"]["sagittal"](image))
    assert metadata["channels"] == list(CHANNELS)
    assert metadata["extra"]["stage"] == "wnet"


def test_train_cascade_adds_named_network_to_existing_folder(cases, tmp_path) -> None:
    train_cascade(cases, tmp_path, tiny_config(cascade={"views": ["axial"]}), progress=False)

    manifest = train_cascade(cases, tmp_path, tiny_config(), stages=["enet"], views=["sagittal"], progress=False)

    assert manifest["networks"]["enet"] == {"axial": "enet_axial.safetensors", "sagittal": "enet_sagittal.safetensors"}
    assert manifest["networks"]["wnet"] == {"axial": "wnet_axial.safetensors"}


def test_train_cascade_resume_skips_trained_networks(cases, tmp_path) -> None:
    first = train_cascade(cases, tmp_path, tiny_config(cascade={"stages": ["wnet"], "views": ["axial"]}), progress=False)
    written = (tmp_path / "wnet_axial.safetensors").stat().st_mtime_ns

    manifest = train_cascade(cases, tmp_path, tiny_config(cascade={"views": ["axial"]}), resume=True, progress=False)

    assert (tmp_path / "wnet_axial.safetensors").stat().st_mtime_ns == written
    assert manifest["history"]["wnet_axial"] == json.loads(json.dumps(first["history"]["wnet_axial"]))
    assert sorted(manifest["networks"]) == ["enet", "tnet", "wnet"]


def test_train_from_config_splits_by_patient_and_predicts(dataset, tmp_path) -> None:
    config = tiny_config(data={"dataset": str(dataset), "validation_fraction": 0.34}, cascade={"views": ["axial"]})

    manifest = train_cascade_from_config(config, tmp_path / "run", progress=False)

    split = json.loads((tmp_path / "run" / "split.json").read_text())
    expected = split_cases([c.case_id for c in discover_cases(dataset)], 0.34, seed=config["seed"])
    assert split == expected.to_json()
    assert len(split["validation"]) == 1
    assert manifest["training_cases"] == split["train"]
    assert load_ucltig_config(tmp_path / "run" / "config.yaml") == config

    case = next(c for c in discover_cases(dataset) if c.case_id == split["validation"][0])
    classes, _, preprocessed = predict_case_with_cascade(tmp_path / "run", case)
    assert classes.shape == preprocessed.geometry.file_shape
    assert set(np.unique(classes)) <= {0, 1, 2, 3}


def test_predict_cases_with_cascade_writes_outputs(dataset, tmp_path) -> None:
    from gliomaseg.data.io import load_volume
    from gliomaseg.inference.predict import PredictionSettings

    config = tiny_config(data={"dataset": str(dataset)}, cascade={"views": ["axial"]})
    train_cascade_from_config(config, tmp_path / "run", progress=False)
    settings = PredictionSettings(device="cpu", save_probabilities=True)

    summary = predict_cases_with_cascade(tmp_path / "run", dataset, tmp_path / "out", settings, progress=False)
    again = predict_cases_with_cascade(tmp_path / "run", dataset, tmp_path / "out", settings, progress=False)

    assert len(summary.done) == 3
    assert summary.ok
    assert len(again.skipped) == 3
    case = discover_cases(dataset)[0]
    written = load_volume(tmp_path / "out" / f"{case.case_id}.nii.gz")
    reference = load_volume(case.images["flair"].path)
    assert written.shape == reference.shape
    assert np.allclose(written.affine, reference.affine)
    assert set(np.unique(written.array)) <= {0, 1, 2, 4}
    probabilities = np.asarray(nibabel.load(tmp_path / "out" / f"{case.case_id}_probabilities.nii.gz").dataobj)
    assert probabilities.shape == (*reference.shape, 4)
    assert np.allclose(probabilities.sum(-1), 1, atol=1e-5)
    report = json.loads((tmp_path / "out" / f"{case.case_id}.json").read_text())
    assert report["checkpoint"]["model"] == "ucltig"


def test_train_from_config_rejects_missing_dataset(tmp_path) -> None:
    with pytest.raises(ValueError, match="data.dataset"):
        train_cascade_from_config(tiny_config(data={"dataset": ""}), tmp_path)
