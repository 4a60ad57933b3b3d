"""Where the HH-RLHF preference pairs come from: an explicit path, $ARGS_ENGINE_HH_RLHF, the folder beside the
checkout, the Hugging Face Hub (its cache and offline rules); the error names every place tried; a file other
than the reference one is said to change the splits; committed assets say which file made them."""
import gzip
import json
import logging
import os
import subprocess
import sys

import pytest
from safetensors import safe_open

from args_engine.reward import data
from args_engine.reward.data import DATA_ENV, HUB_FILE, HUB_REPO, REFERENCE_DATA, default_data_path, load_pairs
from hub_cache import add_snapshot

ROWS = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: kind {i}", "rejected": f"\n\nHuman: q{i}\n\nAssistant: rude {i}"}
        for i in range(5)]


def write_pairs(path, rows=ROWS):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def fill_hub_cache(hub_cache, rows=ROWS, commit="0123456789abcdef0123456789abcdef01234567"):
    """The dataset file in huggingface_hub's real cache layout (what hf_hub_download leaves behind)."""
    gz = write_pairs(hub_cache.parent / "upload" / "test.jsonl.gz", rows).read_bytes()
    return add_snapshot(hub_cache, HUB_REPO, {HUB_FILE: gz}, commit, repo_type="dataset") / HUB_FILE


def test_hub_dataset_found_offline_in_the_hub_cache(tmp_path):
    """Nothing set and nothing beside the checkout: the file comes from the hub cache by repo id, offline."""
    hf_home = tmp_path / "hf"
    link = fill_hub_cache(hf_home / "hub")
    from huggingface_hub import scan_cache_dir
    assert [r.repo_id for r in scan_cache_dir(hf_home / "hub").repos] == [HUB_REPO]  # a layout the hub knows
    code = ("import args_engine.reward.data as d\n"
            "d._beside_checkout = lambda: None  # as in a clone with no ../shared\n"
            "p = d.default_data_path(); print(p); print(len(d.load_pairs(p)))\n")
    env = {k: v for k, v in os.environ.items() if k not in (DATA_ENV, "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**env, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    path, n = out.stdout.split()
    assert path == str(link) and int(n) == len(ROWS)
    assert "not the reference HH-RLHF file" in out.stderr  # another file: splits and figures differ


def test_environment_variable_names_a_file_or_a_folder(tmp_path, monkeypatch):
    f = write_pairs(tmp_path / "mine.jsonl.gz")
    monkeypatch.setenv(DATA_ENV, str(f))
    assert default_data_path() == f
    folder = tmp_path / "hh"
    write_pairs(folder / "harmless-base" / "test.jsonl.gz")  # the hub's layout, downloaded by hand
    monkeypatch.setenv(DATA_ENV, str(folder))
    assert default_data_path() == folder / "harmless-base" / "test.jsonl.gz"
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=f"{DATA_ENV}=.*missing"):
        default_data_path()


def test_explicit_path_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "missing"))
    assert len(load_pairs(write_pairs(tmp_path / "given.jsonl.gz"))) == len(ROWS)


def test_nothing_found_names_every_place_tried(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(data, "_beside_checkout", lambda: None)

    def offline():
        raise OSError("offline and not in the cache")
    monkeypatch.setattr(data, "_from_hub", offline)
    with pytest.raises(FileNotFoundError) as e:
        default_data_path()
    msg = str(e.value)
    for place in (DATA_ENV, "beside the checkout", HUB_REPO, HUB_FILE, "offline and not in the cache", "--data"):
        assert place in msg, place


def test_a_different_file_is_warned_about_once(tmp_path, caplog):
    f = write_pairs(tmp_path / "other.jsonl.gz")
    with caplog.at_level(logging.WARNING, logger="args_engine.reward.data"):
        load_pairs(f)
        load_pairs(f)
    warnings = [r for r in caplog.records if "not the reference HH-RLHF file" in r.getMessage()]
    assert len(warnings) == 1 and str(f) in warnings[0].getMessage()


def test_reference_file_is_not_warned_about(hh_data, caplog):
    if data.file_sha256(hh_data) != REFERENCE_DATA["sha256"]:
        pytest.skip(f"{hh_data} is not the reference file")
    with caplog.at_level(logging.WARNING, logger="args_engine.reward.data"):
        assert len(load_pairs(hh_data)) == REFERENCE_DATA["pairs"]
    assert not caplog.records


@pytest.mark.parametrize("asset", ["default_rm.safetensors", "judge_minilm.safetensors"])
def test_committed_assets_name_their_data(asset):
    from args_engine.models.defaults import DEFAULT_RM_ASSET
    with safe_open(str(DEFAULT_RM_ASSET.parent / asset), "pt") as f:
        meta = json.loads(f.metadata()["report"])["data"]
    assert meta == {"file": REFERENCE_DATA["file"], "sha256": REFERENCE_DATA["sha256"],
                    "pairs": REFERENCE_DATA["pairs"], "reference": True}


def test_beside_means_the_checkouts_own_sibling_only(tmp_path):
    """CI copies the checkout to <tmp>/elsewhere/args-engine to prove the no-data skips; a ../shared two or more
    levels up (the machine's own) was found by the old walk over every ancestor, so nothing skipped."""
    write_pairs(tmp_path / "shared" / "data" / "hh-rlhf" / REFERENCE_DATA["file"])
    assert data._beside_checkout([tmp_path / "args-engine"]) == \
        tmp_path / "shared" / "data" / "hh-rlhf" / REFERENCE_DATA["file"]
    assert data._beside_checkout([tmp_path / "elsewhere" / "args-engine"]) is None
    assert data._beside_checkout([tmp_path / "a" / "b" / "c" / "args-engine"]) is None
