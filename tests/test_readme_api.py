"""The docs' Python API and native-engine snippets (docs/python-api.md, docs/engine.md) and the CLI line of
docs/cli.md run as written, on the real default models."""
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


def test_cli_generate_line_runs_as_written(capsys):
    import re
    import shlex
    from pathlib import Path

    from args_engine.cli import main

    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    block = re.search(r"```bash\n(.*?)```", page, re.S).group(1)  # the page's first command block
    line = next(ln for ln in block.splitlines() if ln.startswith("args-engine generate") and "--compare" in ln)
    main(shlex.split(line.split("#")[0])[1:])  # the default models, exactly the page's arguments
    out = capsys.readouterr().out
    assert "--- greedy (reward" in out and "--- ARGS k=10 w=1.5 greedy" in out
