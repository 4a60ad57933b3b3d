"""The docs' Hugging Face and server snippets (docs/hf.md, docs/server.md) run as written, with tiny models in
place of the directories and the server on a free port. `snippet` is shared with test_readme_api.py."""
import re
from pathlib import Path

import torch

from args_engine import ARGSEngine
from args_engine.integrations.server import create_app
from server_util import ServerThread
from tiny_models import EOS, char_tokenizer, tiny_lm, tiny_rm

ROOT = Path(__file__).resolve().parents[1]
# Each tested snippet and the docs page it lives on (marked `<!-- snippet: NAME -->` above a ```python block).
SNIPPET_PAGES = {"python-api": "docs/python-api.md", "native": "docs/engine.md", "hf": "docs/hf.md",
                 "server": "docs/server.md", "reward-models": "docs/reward-models.md"}


def snippet(name: str) -> str:
    page = SNIPPET_PAGES[name]
    match = re.search(rf"<!-- snippet: {name} -->\n```python\n(.*?)```", (ROOT / page).read_text(), re.S)
    assert match, f"{page} has no '{name}' snippet"
    return match.group(1)


def test_hf_snippet(tmp_path):
    lm_dir, rm_dir = tmp_path / "lm", tmp_path / "rm"
    tiny_lm(dtype=torch.float32).save_pretrained(lm_dir)
    char_tokenizer().save_pretrained(lm_dir)
    tiny_rm(dtype=torch.float32).save_pretrained(rm_dir)
    code = snippet("hf")
    assert '"path/to/lm", "path/to/rm"' in code
    ns = {}
    exec(code.replace('"path/to/lm", "path/to/rm"', f"{str(lm_dir)!r}, {str(rm_dir)!r}"), ns)
    P = ns["inputs"]["input_ids"].shape[1]
    for a, b in zip(ns["out"][:, P:].tolist(), ns["same"][:, P:].tolist()):
        cut = lambda r: r[:r.index(EOS) + 1] if EOS in r else r  # noqa: E731
        assert cut(a) == cut(b)


def test_server_snippet(capsys):
    engine = ARGSEngine(tiny_lm(dtype=torch.float32), tiny_rm(dtype=torch.float32), tokenizer=char_tokenizer(),
                        backend="native", block_size=4, batch_size=4)
    code = snippet("server")
    assert "http://127.0.0.1:8000" in code
    with ServerThread(create_app(engine)) as url:
        exec(code.replace("http://127.0.0.1:8000", url), {})
    assert capsys.readouterr().out.strip()
