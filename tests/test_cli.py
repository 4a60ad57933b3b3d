"""The CLI on tiny local model directories: plain, --compare and --json output."""
import json

import pytest
import torch

from args_engine.cli import main
from tiny_models import char_tokenizer, tiny_lm, tiny_rm


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tiny_lm(dtype=torch.float32).save_pretrained(root / "lm")
    tiny_rm(dtype=torch.float32).save_pretrained(root / "rm")
    char_tokenizer().save_pretrained(root / "lm")
    char_tokenizer().save_pretrained(root / "rm")
    return root


def test_generate_json(model_dirs, capsys, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n" +
                       json.dumps({"chosen": "\n\nHuman: Q?\n\nAssistant: A.", "rejected": "x"}) + "\n")
    main(["generate", "Hello", "--prompts-file", str(prompts), "--lm", str(model_dirs / "lm"), "--rm",
          str(model_dirs / "rm"), "--k", "4", "--max-new-tokens", "6", "--json", "--compare"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert {"prompt", "text", "token_ids", "rewards", "reward", "tokens_per_s", "greedy_reward"} <= set(row)
        assert len(row["rewards"]) == len(row["token_ids"]) and row["reward"] == row["rewards"][-1]
    assert rows[2]["prompt"] == [{"role": "user", "content": "Q?"}]


def test_generate_plain_and_raw(model_dirs, capsys):
    main(["generate", "Hello", "--lm", str(model_dirs / "lm"), "--rm", str(model_dirs / "rm"), "--k", "3",
          "--max-new-tokens", "5", "--raw", "--compare", "--backend", "naive"])
    out = capsys.readouterr().out
    assert "=== prompt 1: Hello" in out and "--- greedy (reward" in out and "--- ARGS k=3 w=1.0 greedy" in out


def test_generate_bad_input_exits_with_message(model_dirs, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "Hello", "--lm", str(model_dirs / "lm"), "--rm", str(model_dirs / "rm"), "--k", "0"])
    assert e.value.code == 2 and "k must be an integer >= 1" in capsys.readouterr().err


def test_prompts_file_gz(model_dirs, capsys, tmp_path):
    import gzip

    prompts = tmp_path / "p.jsonl.gz"
    with gzip.open(prompts, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"prompt": "Hi"}) + "\n\n" + json.dumps({"prompt": [{"role": "user", "content": "Yo"}]}))
    main(["generate", "--prompts-file", str(prompts), "--lm", str(model_dirs / "lm"), "--rm",
          str(model_dirs / "rm"), "--k", "2", "--max-new-tokens", "3", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["Hi", [{"role": "user", "content": "Yo"}]]


@pytest.mark.parametrize("line, problem", [('{"prompt": "ok"', "not valid JSON"),
                                           ('["a list"]', "must be a JSON object"),
                                           ('{"text": "no prompt field"}', "needs a 'prompt'"),
                                           ('{"prompt": ""}', "empty prompt"),
                                           ('{"prompt": 3}', "a prompt is a string")])
def test_prompts_file_bad_row_names_the_line(model_dirs, capsys, tmp_path, line, problem):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "fine"}) + "\n" + line + "\n")
    with pytest.raises(SystemExit) as e:
        main(["generate", "--prompts-file", str(prompts), "--lm", str(model_dirs / "lm"), "--rm",
              str(model_dirs / "rm")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{prompts}:2: " in err and problem in err


def test_prompts_file_binary_is_a_clear_error(capsys, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes(b"\x8b\xff\x00garbage")
    with pytest.raises(SystemExit):
        main(["generate", "--prompts-file", str(prompts)])
    assert f"{prompts}:1: cannot read as UTF-8 JSONL" in capsys.readouterr().err


def test_engine_cache_and_budget_flags(model_dirs, capsys, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="args_engine"):
        main(["generate", "Hi", "--lm", str(model_dirs / "lm"), "--rm", str(model_dirs / "rm"), "--k", "2",
              "--max-new-tokens", "3", "--num-blocks", "40", "--block-size", "8", "--max-num-batched-tokens", "64",
              "--no-prefix-caching"])
    assert any("KV cache: 40 blocks x 8 tokens" in r.getMessage() for r in caplog.records)
    assert "--- ARGS" in capsys.readouterr().out
