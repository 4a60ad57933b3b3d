"""The README's Python API and native-engine snippets run as written, on the real default models."""
import pytest

from test_readme_dropin import snippet

pytestmark = pytest.mark.slow


def test_python_api_snippet(capsys):
    ns = {}
    exec(snippet("python-api"), ns)
    outs = ns["outs"]
    assert len(outs) == 2 and all(o.token_ids and o.finish_reason in ("stop", "length") for o in outs)
    assert ns["engine"].backend == "native" and capsys.readouterr().out.strip()


def test_native_engine_snippet(capsys):
    ns = {}
    exec(snippet("native"), ns)
    printed = capsys.readouterr().out
    assert printed.strip() and ns["engine"].decoder.num_used_blocks == 0
