"""gie_classification (SSL4GIE Hyperkvasir classification): the frozen split (prepare_hyperkvasir on a tiny tree,
checked against scikit-learn's train_test_split as the source calls it), the encoder hand-off from the 2D pretraining
bundles' exports, the classifier (frozen trunk, normalisation saved with the weights), the writers, and bad input.
Its metrics, class weights and loss: tests/metrics/test_classification_metrics.py."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import ROOT, read_bundle_config
from monai_ssl_ext.encoders import EncoderLoadError, export_encoder, pretrained_backbone
from monai_ssl_ext.gie import hyperkvasir_split_file, prepare_hyperkvasir, split_class_names
from monai_ssl_ext.handlers import ClassPredictionWriter, ConfusionMatrixWriter, key_metric_value
from monai_ssl_ext.metrics import ClassificationScore
from monai_ssl_ext.networks import BackboneClassifier, build_backbone

BUNDLE = ROOT / "bundles" / "gie_classification"
CONFIGS = BUNDLE / "configs"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

# a 3-class confusion matrix M[true, predicted]; per-class F1 = 2TP / (2TP + FP + FN) = (6/8, 4/7, 2/5)
HAND_M = [[3, 1, 0], [0, 2, 2], [1, 0, 1]]


def messages(exc: BaseException) -> str:
    """Every message in the exception chain (MONAI wraps errors in "Failed to evaluate ..." RuntimeErrors)."""
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


def _pairs(m):
    """(predictions, labels) that give the confusion matrix ``m``."""
    pred, label = [], []
    for t, row in enumerate(m):
        for p, n in enumerate(row):
            pred += [p] * n
            label += [t] * n
    return torch.tensor(pred), torch.tensor(label)


# ---- the frozen split ---------------------------------------------------------------------------------------------

ANATOMICAL = {"lower-gi-tract": ["retroflex-rectum", "cecum", "ileum"],
              "upper-gi-tract": ["z-line", "pylorus", "retroflex-stomach"]}


def _tree(root: Path, n: int = 10) -> Path:
    """labeled-images with the 6 anatomical classes (n empty .jpg each, created in unsorted order) and one
    pathological class folder that the anatomical split must ignore."""
    for tract, classes in ANATOMICAL.items():
        for c in classes:
            d = root / "labeled-images" / tract / "anatomical-landmarks" / c
            d.mkdir(parents=True)
            for i in reversed(range(n)):
                (d / f"{c[:3]}{i:02d}.jpg").write_bytes(b"")
            (d / "notes.txt").write_text("not an image")
    (root / "labeled-images" / "lower-gi-tract" / "pathological-findings" / "polyps").mkdir(parents=True)
    (root / "labeled-images" / "lower-gi-tract" / "pathological-findings" / "polyps" / "p.jpg").write_bytes(b"")
    return root


def test_prepare_hyperkvasir_on_a_tiny_tree(tmp_path):
    from sklearn.model_selection import train_test_split

    root = _tree(tmp_path)
    path = prepare_hyperkvasir(str(root), class_set="anatomical-landmarks")
    assert path == str(root / "anatomical-landmarks_split.json")
    info = json.loads(Path(path).read_text())
    # the source's class order: tracts sorted, then each tract's class folders sorted
    names = ["cecum", "ileum", "retroflex-rectum", "pylorus", "retroflex-stomach", "z-line"]
    assert info["class_names"] == names == split_class_names(path)
    assert info["counts"] == {"training": 48, "validation": 6, "test": 6}
    # the source's list: class after class, sorted file names; then split_ids' two train_test_split calls
    tracts = {"cecum": "lower", "ileum": "lower", "retroflex-rectum": "lower"}
    listed = [f"labeled-images/{tracts.get(c, 'upper')}-gi-tract/anatomical-landmarks/{c}/{c[:3]}{i:02d}.jpg"
              for c in names for i in range(10)]
    idx = list(range(60))
    train, test = train_test_split(idx, test_size=6, random_state=42)
    train, val = train_test_split(train, test_size=6, random_state=42)
    for key, ids in (("training", train), ("validation", val), ("test", test)):
        assert [it["image"] for it in info[key]] == [listed[i] for i in ids], key
        for it in info[key]:
            assert names[it["label"]] == it["class_name"] == it["image"].split("/")[-2]
    # frozen: a new image does not change the file, unless overwrite
    (root / "labeled-images" / "upper-gi-tract" / "anatomical-landmarks" / "z-line" / "zzz.jpg").write_bytes(b"")
    before = Path(path).read_text()
    assert prepare_hyperkvasir(str(root), class_set="anatomical-landmarks") == path
    assert Path(path).read_text() == before
    with pytest.raises(ValueError, match="seed 42"):
        prepare_hyperkvasir(str(root), class_set="anatomical-landmarks", seed=0)
    prepare_hyperkvasir(str(root), class_set="anatomical-landmarks", overwrite=True)
    assert sum(json.loads(Path(path).read_text())["counts"].values()) == 61


def test_pathological_class_order_is_the_sources_glob_order(tmp_path):
    """The source sorts ``glob(".../*/")`` paths, which end in "/": ``barretts-short-segment/`` comes before
    ``barretts/`` and ``ulcerative-colitis-grade-1-2/`` before ``ulcerative-colitis-grade-1/``. The reference is
    the source's own listing, done here with glob."""
    import glob

    from monai_ssl_ext.demo.hyperkvasir import HYPERKVASIR_CLASSES

    for (tract, cat), classes in HYPERKVASIR_CLASSES.items():
        for c in classes:
            d = tmp_path / "labeled-images" / tract / cat / c
            d.mkdir(parents=True)
            (d / "a.jpg").write_bytes(b"")
    root = str(tmp_path)
    source = []
    for bf in sorted(glob.glob(root + "/labeled-images/*/")):
        for sf in sorted(glob.glob(bf + "*/")):
            if sf.endswith("pathological-findings/"):
                source += [Path(ssf).name for ssf in sorted(glob.glob(sf + "*/"))]
    assert len(source) == 12 and source.index("barretts-short-segment") < source.index("barretts")
    path = prepare_hyperkvasir(root, class_set="pathological-findings", check_classes=False)
    assert split_class_names(path) == source


def test_prepare_hyperkvasir_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="labeled-images"):
        prepare_hyperkvasir(str(tmp_path))
    root = _tree(tmp_path / "a")
    shutil.rmtree(root / "labeled-images" / "upper-gi-tract" / "anatomical-landmarks" / "pylorus")
    with pytest.raises(FileNotFoundError, match="labeled-images/upper-gi-tract/anatomical-landmarks/pylorus"):
        prepare_hyperkvasir(str(root))
    path = prepare_hyperkvasir(str(root), check_classes=False)  # 5 classes, on request
    assert len(split_class_names(path)) == 5
    root = _tree(tmp_path / "b")
    empty = root / "labeled-images" / "lower-gi-tract" / "anatomical-landmarks" / "ileum"
    for f in empty.glob("*.jpg"):
        f.unlink()
    with pytest.raises(ValueError, match="ileum' holds no"):
        prepare_hyperkvasir(str(root))
    with pytest.raises(ValueError, match="class_set must be one of"):
        prepare_hyperkvasir(str(root), class_set="polyps")


def test_bundle_names_the_missing_split_file_and_the_command(tmp_path):
    parser = read_bundle_config(CONFIGS, ["train.json"], {"dataset_dir": str(tmp_path)})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("class_names")
    text = messages(err.value)
    assert "anatomical-landmarks_split.json" in text and "prepare_ssl4gie.py hyperkvasir" in text
    assert hyperkvasir_split_file(tmp_path, "pathological-findings", must_exist=False).endswith(
        "pathological-findings_split.json")


def test_demo_data_has_both_splits(demo_data):
    root = Path(demo_data("hyperkvasir"))
    for class_set, n in (("anatomical-landmarks", 6), ("pathological-findings", 12)):
        info = json.loads((root / f"{class_set}_split.json").read_text())
        assert len(info["class_names"]) == n
        for key in ("training", "validation", "test"):
            assert all((root / it["image"]).is_file() for it in info[key])
        assert sorted({it["label"] for it in info["training"]}) == list(range(n))  # class weights are finite


# ---- the encoder hand-off -----------------------------------------------------------------------------------------


def _perturb(backbone):
    """Non-default weights and BatchNorm statistics, so that a trunk that did not load computes other features."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, t in backbone.trunk.state_dict().items():
            if t.is_floating_point():
                t.copy_(t.abs() + 0.5 if "running_var" in name else t + 0.05 * torch.randn_like(t))
    return backbone


def _exported_by(bundle: str, tmp_path: Path) -> tuple[Path, object]:
    """The trunk a pretraining bundle's EncoderExport writes (its network_def at resnet18 size), exported."""
    overrides = {"backbone": "timm/resnet18", "dataset_dir": str(tmp_path)}
    if bundle == "barlowtwins_hyperkvasir":
        overrides["projection_dims"] = [64, 64, 64]
    parser = read_bundle_config(ROOT / "bundles" / bundle / "configs", ["train.json"], overrides)
    net = parser.get_parsed_content("network_def")
    backbone = net.exported_backbone("online") if bundle == "mocov3_hyperkvasir" else net.backbone
    _perturb(backbone)
    path = tmp_path / f"{bundle}_encoder.pt"
    export_encoder(backbone, str(path), method=bundle.split("_")[0], normalization=IMAGENET)
    return path, backbone


@pytest.mark.parametrize("bundle", ["mocov3_hyperkvasir", "barlowtwins_hyperkvasir", "simclr_cholec"])
def test_exported_resnet_trunk_loads_whole_and_reproduces_features(bundle, tmp_path, demo_data):
    path, exported = _exported_by(bundle, tmp_path)
    parser = read_bundle_config(CONFIGS, ["train.json"], {
        "backbone": "timm/resnet18", "pretrained_encoder": str(path), "dataset_dir": demo_data("hyperkvasir")})
    net = parser.get_parsed_content("network_def")
    report = parser.get_parsed_content("encoder_report")
    assert report.missing == [] and report.unused == [] and report.mismatched == [] and report.loaded
    assert net.normalization["mean"] == pytest.approx(IMAGENET["mean"])
    assert net.normalization["std"] == pytest.approx(IMAGENET["std"])
    net.eval()
    exported.eval()
    torch.manual_seed(2)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = exported((x - torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1)) / torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1))
        got = net.features(x)
        direct = net.backbone(net.normalize(x))
    assert got.shape == (2, 512)
    rel = float((got - ref).abs().max() / ref.abs().max())
    assert rel <= 1e-5, rel
    assert torch.equal(got, direct)
    # and a trunk that did not load would differ
    with torch.no_grad():
        assert float((build_backbone("timm/resnet18").eval()(x) - ref).abs().max()) > 1e-3


MAE_SMOKE = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "mlp_dim": 64, "num_layers": 2, "num_heads": 4,
             "decoder_hidden_size": 32, "decoder_num_layers": 1, "decoder_num_heads": 4}
VIT_EXPORTS = {  # bundle: (configs, overrides, the classification bundle's backbone, image size)
    "mocov3_hyperkvasir": (["train.json", "train_vit.json"], {"backbone": "timm/test_vit"}, "timm/test_vit", 160),
    "mae_hyperkvasir": (["train.json"], MAE_SMOKE, "vit", 32),
}


@pytest.mark.parametrize("bundle", sorted(VIT_EXPORTS))
def test_exported_vit_trunk_loads_whole_and_gives_the_class_token(bundle, tmp_path, demo_data):
    """The ViT trunks the MoCo v3 (train_vit.json, timm) and MAE (MONAI ViT) bundles export, at tiny size, load whole
    into the bundle's network (`--backbone vit` for MAE: sizes from the header), and its features are the exported
    trunk's class token after the final norm, to 1e-5."""
    configs, overrides, backbone_name, size = VIT_EXPORTS[bundle]
    parser = read_bundle_config(ROOT / "bundles" / bundle / "configs", configs, {**overrides, "dataset_dir": str(tmp_path)})
    net = parser.get_parsed_content("network_def")
    exported = _perturb(net.exported_backbone("online") if bundle == "mocov3_hyperkvasir" else net.backbone)
    path = tmp_path / "vit_encoder.pt"
    export_encoder(exported, str(path), method=bundle.split("_")[0], normalization=IMAGENET)
    cls = read_bundle_config(CONFIGS, ["train.json", "train_vit.json"], {
        "backbone": backbone_name, "image_size": size, "pretrained_encoder": str(path),
        "dataset_dir": demo_data("hyperkvasir")})
    model = cls.get_parsed_content("network_def")
    report = cls.get_parsed_content("encoder_report")
    assert report.missing == [] and report.unused == [] and report.mismatched == [] and report.loaded
    model.eval()
    exported.eval()
    torch.manual_seed(3)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        xn = model.normalize(x)
        if bundle == "mocov3_hyperkvasir":  # timm: tokens after the final norm, class token first
            token = exported.trunk.forward_features(xn)[:, 0]
        else:  # MONAI ViT: (tokens after the final norm, hidden states), class token first
            token = exported.trunk(xn)[0][:, 0]
        got = model.features(x)
    assert got.shape == token.shape == (2, exported.feature_dim)
    rel = float((got - token).abs().max() / token.abs().max())
    assert rel <= 1e-5, rel
    assert model.classifier.in_features == exported.feature_dim


def test_an_encoder_of_another_trunk_is_refused(tmp_path):
    path = tmp_path / "r18.pt"
    export_encoder(build_backbone("timm/resnet18"), str(path), method="mocov3", normalization=IMAGENET)
    with pytest.raises(EncoderLoadError, match=r"arch timm/resnet18\) does not fit .* downstream tensors not filled"):
        pretrained_backbone("timm/resnet34", str(path))


# ---- the classifier -------------------------------------------------------------------------------------------------


def test_frozen_trunk_keeps_weights_and_statistics():
    net = BackboneClassifier(build_backbone("timm/resnet18"), num_classes=4, frozen=True, normalization=IMAGENET)
    net.train()
    assert not net.backbone.training and net.classifier.training
    assert {id(p) for p in net.trainable_parameters()} == {id(p) for p in net.classifier.parameters()}
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    opt = torch.optim.AdamW(net.trainable_parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(net(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in net.backbone.state_dict().items())
    assert all(p.grad is None for p in net.backbone.parameters())
    unfrozen = BackboneClassifier(build_backbone("timm/resnet18"), num_classes=4, normalization=IMAGENET)
    assert len(unfrozen.trainable_parameters()) == len(list(unfrozen.parameters()))
    with pytest.raises(TypeError, match="frozen"):
        BackboneClassifier(build_backbone("timm/resnet18"), num_classes=4, frozen="yes", normalization=IMAGENET)


def test_normalization_travels_with_the_weights(tmp_path):
    """The encoder header's normalisation (not the config's) is applied, and a checkpoint restores it into a
    network built from the config alone (evaluate / inference)."""
    header = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    path = tmp_path / "enc.pt"
    export_encoder(build_backbone("timm/resnet18"), str(path), method="barlowtwins", normalization=header)
    trained = BackboneClassifier(pretrained_backbone("timm/resnet18", str(path)), 3, normalization=IMAGENET)
    assert trained.normalization["mean"] == pytest.approx(header["mean"])
    fresh = BackboneClassifier(build_backbone("timm/resnet18"), 3, normalization=IMAGENET)
    assert fresh.normalization["mean"] == pytest.approx(IMAGENET["mean"])
    fresh.load_state_dict(trained.state_dict())
    assert fresh.normalization["mean"] == pytest.approx(header["mean"])
    assert fresh.normalization["std"] == pytest.approx(header["std"])
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(fresh.normalize(x), (x - 0.5) / 0.25)


# ---- writers --------------------------------------------------------------------------------------------------------


class _State:
    pass


class _Engine:
    def __init__(self, output=None, metrics=None, key=None):
        self.state = _State()
        self.state.output, self.state.metrics, self.state.key_metric_name = output, metrics or {}, key


def test_writers(tmp_path):
    from monai.data import MetaTensor

    names = ["a", "b", "c"]
    metric = ClassificationScore(num_classes=3)
    metric.reset()
    metric.update(_pairs(HAND_M))
    metric.compute()
    ConfusionMatrixWriter(str(tmp_path / "eval"), names, metric)(_Engine())
    rows = list(csv.reader((tmp_path / "eval" / "confusion_matrix.csv").open()))
    assert rows[0] == ["true \\ predicted", "a", "b", "c"] and [list(map(int, r[1:])) for r in rows[1:]] == HAND_M
    per_class = list(csv.DictReader((tmp_path / "eval" / "per_class.csv").open()))
    assert [float(r["f1"]) for r in per_class] == pytest.approx([6 / 8, 4 / 7, 2 / 5], abs=1e-6)
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000

    writer = ClassPredictionWriter(str(tmp_path / "pred.csv"), names, data_root_dir=str(tmp_path))
    image = MetaTensor(torch.zeros(3, 4, 4), meta={"filename_or_obj": str(tmp_path / "x" / "p1.jpg")})
    writer._reset(None)
    writer(_Engine(output=[{"pred": torch.tensor([0.0, 2.0, 1.0]), "image": image}]))
    writer._write(None)
    (row,) = list(csv.DictReader((tmp_path / "pred.csv").open()))
    e = torch.exp(torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64))
    assert row["file"] == "x/p1.jpg" and row["predicted_class"] == "b" and row["predicted_label"] == "1"
    assert [float(row[f"prob_{n}"]) for n in names] == pytest.approx((e / e.sum()).tolist(), abs=1e-6)

    assert key_metric_value(_Engine(metrics={"val_macro_f1": 0.25}, key="val_macro_f1")) == 0.25


# ---- bad input ------------------------------------------------------------------------------------------------------


def test_unreadable_image_is_named(demo_data, tmp_path):
    root = tmp_path / "hk"
    shutil.copytree(demo_data("hyperkvasir"), root)
    info = json.loads((root / "anatomical-landmarks_split.json").read_text())
    bad = info["validation"][1]["image"]
    (root / bad).write_bytes(b"not a jpeg")
    parser = read_bundle_config(CONFIGS, ["train.json"], {"dataset_dir": str(root), "image_size": 32,
                                                         "cache_rate": 0.0})
    dataset = parser.get_parsed_content("validate#dataset")
    dataset[0]
    with pytest.raises(Exception) as err:
        dataset[1]
    assert Path(bad).name in messages(err.value)
    # a class folder that went missing after the split was written: the first of its files is named
    shutil.rmtree(root / Path(info["training"][0]["image"]).parent)
    train = parser.get_parsed_content("train#dataset")
    with pytest.raises(Exception) as err:
        train[0]
    assert Path(info["training"][0]["image"]).name in messages(err.value)
