"""Every shipped config validates against its schema; the official recipes build models with
the parameter counts of the official code."""
from __future__ import annotations

from pathlib import Path

import pytest

import datasets
import models
from models.registry import MODELS
from utils.config import TEST, TRAIN, data_root, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
REGISTRIES = {"model": MODELS, "dataset": datasets.DATASETS}

TRAIN_FILES = sorted((CONFIGS / "train").glob("*.yaml")) + sorted((CONFIGS / "cpu").glob("*.yaml"))
TEST_FILES = sorted((CONFIGS / "test").glob("*.yaml"))  # empty if the folder is absent

# parameter counts of the official models (verified by instantiating the official classes;
# EDSR-b includes the 24 frozen MeanShift parameters).
PARAMS = {
    "edsr-baseline": {"liif": 1_567_323, "lte": 1_714_267, "lmliif": 1_386_091, "lmlte": 1_490_907,
                      "lmciaosr": 1_955_438},
    "rdn": {"liif": 22_320_835, "lte": 22_467_779, "lmliif": 22_139_603, "lmlte": 22_244_419,
            "lmciaosr": 22_708_950},
    "swinir": {"liif": 11_949_927, "lte": 12_096_871, "lmliif": 11_782_615, "lmlte": 11_873_511,
               "lmciaosr": 12_338_042},
}
RECIPES = [(e, d) for e in PARAMS for d in PARAMS[e]]


def _rel(p: Path) -> str:
    return str(p.relative_to(CONFIGS))


@pytest.mark.parametrize("path", TRAIN_FILES, ids=_rel)
def test_train_config_loads(path: Path) -> None:
    cfg = load_config(path, TRAIN, REGISTRIES)
    assert cfg["model"]["name"] in MODELS.names()


@pytest.mark.parametrize("path", TEST_FILES, ids=_rel)
def test_test_config_loads(path: Path) -> None:
    load_config(path, TEST, REGISTRIES)


def test_all_official_recipes_present() -> None:
    names = {p.name for p in (CONFIGS / "train").glob("*.yaml")}
    assert names == {f"train_{e}-{d}.yaml" for e, d in RECIPES}


@pytest.mark.parametrize("enc,dec", RECIPES, ids=[f"{e}-{d}" for e, d in RECIPES])
def test_official_recipe(enc: str, dec: str) -> None:
    cfg = load_config(CONFIGS / "train" / f"train_{enc}-{dec}.yaml", TRAIN, REGISTRIES)
    lm, swin = dec.startswith("lm"), enc == "swinir"
    ciao = dec == "lmciaosr"
    # LM-CiaoSR with EDSR-b/RDN: 64x64 patches, 4096 queries; its RDN recipe keeps the EDSR-b
    # schedule (the official train_rdn-lmciaosr.yaml)
    patch, queries = (64, 4096) if ciao and not swin else (48, 2304)
    # optimisation (the official recipes)
    assert cfg["optimizer"] == {"name": "adam", "args": {"lr": 2e-4 if swin else 1e-4}}
    assert cfg["train_dataset"]["batch_size"] == (32 if swin else 16)
    if swin:
        assert (cfg["epoch_max"], cfg["multi_step_lr"]["milestones"]) == (1000, [500, 800, 900, 950])
    elif lm and (enc == "edsr-baseline" or ciao):
        assert (cfg["epoch_max"], cfg["multi_step_lr"]["milestones"]) == (1200, [200, 400, 600, 800, 1000])
    else:
        assert (cfg["epoch_max"], cfg["multi_step_lr"]["milestones"]) == (1000, [200, 400, 600, 800])
    assert cfg["multi_step_lr"]["gamma"] == 0.5
    assert (cfg["epoch_val"], cfg["epoch_save"]) == (1, 50 if lm else 100)
    # data
    tr, va = cfg["train_dataset"], cfg["val_dataset"]
    assert tr["dataset"]["args"] == {"root_path": str(data_root() / "div2k/DIV2K_train_HR"), "repeat": 20,
                                     "cache": "in_memory"}
    assert tr["wrapper"] == {"name": "sr-implicit-downsampled",
                             "args": {"inp_size": patch, "scale_max": 4, "augment": True, "sample_q": queries}}
    assert va["dataset"]["args"] == {"root_path": str(data_root() / "div2k/DIV2K_valid_HR"), "first_k": 10,
                                     "repeat": 160, "cache": "in_memory"}
    assert va["wrapper"]["args"] == {"inp_size": patch, "scale_max": 4, "sample_q": queries}
    # model: registry names and the official parameter count
    assert cfg["model"]["name"] == dec
    encoder_key = "encoder" if ciao else "encoder_spec"  # the official argument names
    assert cfg["model"]["args"][encoder_key] == {"name": enc, "args": {"no_upsampling": True}}
    model = models.make(cfg["model"])
    n = sum(p.numel() for p in model.parameters())
    assert n == PARAMS[enc][dec], f"{enc}-{dec}: {n:,} parameters, official {PARAMS[enc][dec]:,}"


def test_data_root_is_set_by_the_environment(tmp_path, monkeypatch) -> None:
    """Every config that reads data finds it under ${LMF_DATA}; unset, that is load/ in the repo."""
    import yaml

    for path in sorted(CONFIGS.rglob("*.yaml")):
        text = path.read_text()
        roots = [ln for ln in text.splitlines() if "root_path" in ln]
        assert not any("../shared" in ln or "root_path: load/" in ln for ln in roots), path
    monkeypatch.delenv("LMF_DATA", raising=False)
    cfg = load_config(CONFIGS / "test" / "test-set5.yaml", TEST, REGISTRIES)
    assert cfg["test_dataset"]["dataset"]["args"]["root_path"] == str(ROOT / "load" / "benchmark" / "Set5" / "HR")
    monkeypatch.setenv("LMF_DATA", str(tmp_path))
    cfg = load_config(CONFIGS / "cpu" / "train_edsr-baseline-lmliif.yaml", TRAIN, REGISTRIES)
    assert cfg["train_dataset"]["dataset"]["args"]["root_path"] == str(tmp_path / "train" / "BSD200")
    assert cfg["val_dataset"]["dataset"]["args"]["root_path"] == str(tmp_path / "benchmark" / "Set5" / "HR")
    # a missing folder under the data root says how to get it
    ds = cfg["val_dataset"]["dataset"]
    with pytest.raises(Exception) as e:
        datasets.make(ds)
    assert "LMF_DATA" in str(e.value) and "get_data.py" in str(e.value)
    assert yaml  # the configs stay plain YAML (no custom tags)
