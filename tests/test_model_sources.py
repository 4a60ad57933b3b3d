"""Models by Hugging Face id, as transformers takes them: from the hub's cache when offline (HF_HUB_OFFLINE=1), a
revision (branch, tag or commit) per model, trust_remote_code never implied, dtype "auto"; errors name what was
tried. Every entry point that loads (Python API, CLI, eval) takes the same sources."""
import json
import os
import subprocess
import sys

import pytest
import torch

from args_engine import ARGSEngine, ARGSParams
from args_engine.models.hf import load_pair
from hub_cache import add_snapshot, folder_files
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

MAIN, V1 = "a" * 40, "b" * 40
PARAMS = ARGSParams(k=3, w=1.0, max_new_tokens=5)


def saved(model, folder, with_tokenizer=True):
    model.save_pretrained(folder)
    if with_tokenizer:
        char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """HF_HOME with org/tiny-lm (main: seed 0, tag v1: seed 3), org/tiny-rm, and org/custom-code (a config that
    names modelling code in its repository)."""
    root = tmp_path_factory.mktemp("hf")
    work = tmp_path_factory.mktemp("models")
    cache = root / "hub"
    add_snapshot(cache, "org/tiny-lm", folder_files(saved(tiny_lm(dtype=torch.float32), work / "lm")), MAIN)
    add_snapshot(cache, "org/tiny-lm", folder_files(saved(tiny_lm(seed=3, dtype=torch.float32), work / "lm-v1")),
                 V1, refs=("v1",))
    add_snapshot(cache, "org/tiny-rm", folder_files(saved(tiny_rm(dtype=torch.float32), work / "rm", False)), MAIN)
    custom = folder_files(saved(tiny_lm(dtype=torch.float32), work / "custom"))
    config = json.loads(custom["config.json"])
    config["model_type"] = "tiny-custom"  # no class in transformers: only the repository's code can build it
    config["auto_map"] = {"AutoConfig": "modeling_tiny.TinyConfig", "AutoModelForCausalLM": "modeling_tiny.TinyLM"}
    custom["config.json"] = json.dumps(config).encode()
    custom["modeling_tiny.py"] = b"raise RuntimeError('remote code ran')\n"
    add_snapshot(cache, "org/custom-code", custom, MAIN)
    return {"root": root, "work": work}


def offline(hub_dirs, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python whose hub is offline and whose cache is the test's."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=hub_dirs["work"],
                          env={**env, "HF_HOME": str(hub_dirs["root"]), "HF_HUB_OFFLINE": "1"})


def test_hub_cache_layout_is_the_real_one(hub):
    from huggingface_hub import scan_cache_dir
    repos = {r.repo_id: r for r in scan_cache_dir(hub["root"] / "hub").repos}
    assert set(repos) == {"org/tiny-lm", "org/tiny-rm", "org/custom-code"}
    assert {ref for rev in repos["org/tiny-lm"].revisions for ref in rev.refs} == {"main", "v1"}


def test_lm_and_rm_load_by_id_offline_with_revisions(hub):
    """By id from the cache equals the same models from their folders, for main and for the tag v1."""
    code = ("import json; from args_engine import ARGSEngine, ARGSParams\n"
            "p = ARGSParams(k=3, w=1.0, max_new_tokens=5)\n"
            "out = {}\n"
            "for rev in (None, 'v1'):\n"
            "    e = ARGSEngine.from_pretrained(lm='org/tiny-lm', rm='org/tiny-rm', revision=rev, dtype='auto')\n"
            "    out[str(rev)] = [e.generate(['Hello there'], p, progress=False)[0].token_ids, str(e.lm.dtype)]\n"
            "print(json.dumps(out))\n")
    run = offline(hub, code)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for rev, folder in (("None", "lm"), ("v1", "lm-v1")):
        engine = ARGSEngine.from_pretrained(lm=str(hub["work"] / folder), rm=str(hub["work"] / "rm"))
        assert got[rev] == [engine.generate(["Hello there"], PARAMS, progress=False)[0].token_ids, "torch.float32"]
    assert got["None"][0] != got["v1"][0]  # the revision really chose other weights


def test_rm_revision_and_errors_name_what_was_tried(hub):
    code = ("from args_engine.models.hf import load_pair\n"
            "try:\n"
            "    load_pair('org/tiny-lm', 'org/tiny-rm', 'cpu', 'float32', rm_revision='v9')\n"
            "except FileNotFoundError as e:\n"
            "    print('ERROR', e)\n")
    run = offline(hub, code)
    line = run.stdout.strip().splitlines()[-1]
    assert line.startswith("ERROR RM 'org/tiny-rm' (revision v9) could not be loaded"), run.stderr[-2000:]
    assert "offline (HF_HUB_OFFLINE=1)" in line


def test_remote_code_is_refused_unless_trusted(hub):
    code = ("from args_engine.models.hf import load_lm\n"
            "try:\n"
            "    load_lm('org/custom-code', 'cpu', 'float32')\n"
            "except ValueError as e:\n"
            "    print('ERROR', e)\n")
    run = offline(hub, code)
    assert "remote code ran" not in run.stderr
    line = run.stdout.strip().splitlines()[-1]
    assert line.startswith("ERROR LM 'org/custom-code' (revision main) runs code from its repository"), run.stderr
    assert "--trust-remote-code" in line
    trusted = offline(hub, code.replace("'float32')", "'float32', trust_remote_code=True)"))
    assert "remote code ran" in trusted.stderr  # given, the repository's code is what runs


def test_cli_takes_ids_revisions_and_dtype_auto(hub):
    code = ("from args_engine.cli import main\n"
            "main(['generate', '--lm', 'org/tiny-lm', '--revision', 'v1', '--rm', 'org/tiny-rm', '--dtype', 'auto',\n"
            "      '--k', '3', '--max-new-tokens', '5', '--json', 'Hello there'])\n")
    run = offline(hub, code)
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(run.stdout.strip().splitlines()[-1])
    engine = ARGSEngine.from_pretrained(lm=str(hub["work"] / "lm-v1"), rm=str(hub["work"] / "rm"))
    want = engine.generate(["Hello there"], ARGSParams(k=3, w=1.0, max_new_tokens=5), progress=False)[0]
    assert row["token_ids"] == want.token_ids


def test_local_sources_refuse_a_revision_and_name_a_missing_folder(tmp_path):
    folder = saved(tiny_lm(dtype=torch.float32), tmp_path / "lm")
    with pytest.raises(ValueError, match="revision applies to a Hugging Face model id"):
        load_pair(str(folder), None, "cpu", "float32", revision="v1")
    with pytest.raises(FileNotFoundError, match="LM directory not found: .*missing"):
        load_pair(str(tmp_path / "missing"), None, "cpu", "float32")


def test_tokenizers_given_to_from_pretrained_win(tmp_path):
    """tokenizer= and rm_tokenizer= beside loaded models (rm_tokenizer= used to raise 'multiple values')."""
    lm = saved(tiny_lm(dtype=torch.float32), tmp_path / "lm")
    rm = saved(tiny_rm(dtype=torch.float32), tmp_path / "rm")
    tok, rm_tok = char_tokenizer(), char_tokenizer()
    engine = ARGSEngine.from_pretrained(lm=str(lm), rm=str(rm), tokenizer=tok, rm_tokenizer=rm_tok)
    assert engine.tokenizer is tok
    assert engine.generate(["Hello there"], PARAMS, progress=False)[0].token_ids


def test_hf_hook_takes_the_rm_by_id_offline(hub):
    """model.generate(custom_generate=args_engine.hf.generate, reward_model="org/tiny-rm"): loaded from the hub's
    cache once (the same engine serves the next call), tokens as with the loaded RM."""
    code = ("import json, torch, args_engine.hf\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "lm = AutoModelForCausalLM.from_pretrained('org/tiny-lm'); tok = AutoTokenizer.from_pretrained('org/tiny-lm')\n"
            "x = tok(['Hello there'], return_tensors='pt')\n"
            "kw = dict(custom_generate=args_engine.hf.generate, reward_model='org/tiny-rm', args_k=3, args_w=1.0,\n"
            "          max_new_tokens=5, do_sample=False)\n"
            "a = lm.generate(**x, **kw); engine = lm._args_engine[2]; b = lm.generate(**x, **kw)\n"
            "print(json.dumps([a[0].tolist(), lm._args_engine[2] is engine, b[0].tolist()]))\n")
    run = offline(hub, code)
    assert run.returncode == 0, run.stderr[-3000:]
    ids, same_engine, again = json.loads(run.stdout.strip().splitlines()[-1])
    assert same_engine and ids == again
    engine = ARGSEngine.from_pretrained(lm=str(hub["work"] / "lm"), rm=str(hub["work"] / "rm"), raw=True)
    want = engine.generate(["Hello there"], PARAMS, progress=False)[0].token_ids
    assert ids[-len(want):] == want
