"""lm-evaluation-harness, both ways: the engine in process (`--model args-engine`) and the server through
lm-eval's own OpenAI clients (local-completions with token ids and with text, local-chat-completions). Oracle:
lm-eval's `hf` backend on the same model and tokenizer. Local tasks written here (json data, no download)."""
import json
import os

import pytest
import torch

# The tasks' data are local files: `datasets` (imported by lm_eval, reading this at import) stays offline. The
# environment is restored after the imports, so the rest of the session sees it as it was.
_ENV = {name: os.environ.get(name) for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
try:
    lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install .[lm-eval])")
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
finally:
    for _name, _value in _ENV.items():
        if _value is None:
            os.environ.pop(_name, None)
        else:
            os.environ[_name] = _value

from args_engine import ARGSEngine, ARGSParams  # noqa: E402
from args_engine.integrations.lmeval import ARGSEvalLM  # noqa: E402
from args_engine.integrations.server import create_app  # noqa: E402
from args_engine.integrations.server_config import ServerConfig  # noqa: E402
from server_util import ServerThread  # noqa: E402
from tiny_models import char_tokenizer, tiny_lm, tiny_rm  # noqa: E402

QUESTIONS = [("Is the sky blue?", ["yes", "no"], 0), ("Is fire cold?", ["yes", "no"], 1),
             ("Two plus two?", ["four", "five", "six"], 0), ("Best pet?", ["a cat", "a dog"], 1),
             ("Say hi.", ["hi", "bye"], 0), ("Water is?", ["wet", "dry"], 0)]


@pytest.fixture(scope="module")
def models():
    return tiny_lm(dtype=torch.float32), tiny_rm(dtype=torch.float32), char_tokenizer()


@pytest.fixture(scope="module")
def engine(models):
    lm, rm, tok = models
    return ARGSEngine(lm, rm, tokenizer=tok, backend="native", raw=True, block_size=4)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Two local tasks: multiple choice (log-likelihoods) and generate_until (ARGS)."""
    root = tmp_path_factory.mktemp("tasks")
    with open(root / "mc.jsonl", "w") as f:
        for q, choices, label in QUESTIONS:
            f.write(json.dumps({"question": q, "choices": choices, "label": label}) + "\n")
    with open(root / "gen.jsonl", "w") as f:
        for q, choices, label in QUESTIONS[:3]:
            f.write(json.dumps({"question": q, "answer": choices[label]}) + "\n")
    (root / "args_tiny_mc.yaml").write_text(f"""task: args_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
""")
    (root / "args_tiny_gen.yaml").write_text(f"""task: args_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'gen.jsonl'}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
metric_list:
  - metric: exact_match
""")
    return root


@pytest.fixture(scope="module")
def tasks(task_dir):
    return TaskManager(include_path=str(task_dir))


def evaluate(model, tasks, names, **kw):
    out = lm_eval.simple_evaluate(model=model, tasks=names, task_manager=tasks, log_samples=True, **kw)
    return out


def mc_loglikelihoods(out) -> list[float]:
    return [r[0][0] for s in out["samples"]["args_tiny_mc"] for r in s["resps"]]


def test_registered_under_its_name():
    assert get_model("args-engine") is ARGSEvalLM


def test_in_process_log_likelihoods_equal_lm_evals_hf_backend(models, engine, tasks):
    lm, _, tok = models
    ours = evaluate(ARGSEvalLM(engine=engine, k=4, w=1.0), tasks, ["args_tiny_mc"])
    oracle = evaluate(HFLM(pretrained=lm, tokenizer=tok, batch_size=1), tasks, ["args_tiny_mc"])
    assert mc_loglikelihoods(ours) == pytest.approx(mc_loglikelihoods(oracle), abs=1e-4)
    assert ours["results"]["args_tiny_mc"]["acc,none"] == oracle["results"]["args_tiny_mc"]["acc,none"]
    rolling = [Instance("loglikelihood_rolling", {}, ("Hello there, how are you?",), 0)]
    assert ARGSEvalLM(engine=engine).loglikelihood_rolling(rolling) == pytest.approx(
        HFLM(pretrained=lm, tokenizer=tok, batch_size=1).loglikelihood_rolling(rolling), abs=1e-4)


def test_in_process_generations_are_the_engines(engine, tasks):
    model = ARGSEvalLM(engine=engine, k=4, w=1.5, repetition_penalty=1.2)
    out = evaluate(model, tasks, ["args_tiny_gen"])
    got = [s["resps"][0][0] for s in out["samples"]["args_tiny_gen"]]
    prompts = [f"Question: {q}\nAnswer:" for q, _, _ in QUESTIONS[:3]]
    want = engine.generate(prompts, ARGSParams(k=4, w=1.5, repetition_penalty=1.2, max_new_tokens=6, stop=["\n"]),
                           progress=False)
    assert got == [o.text for o in want]
    with pytest.raises(ValueError, match="unknown \\['kk'\\]"):
        ARGSEvalLM(engine=engine, kk=3)


@pytest.fixture(scope="module")
def server(engine, models, tmp_path_factory):
    tok_dir = tmp_path_factory.mktemp("tokenizer")
    models[2].save_pretrained(tok_dir)
    with ServerThread(create_app(engine, ServerConfig(served_model_names=["tiny"]))) as url:
        yield url, str(tok_dir)


@pytest.mark.parametrize("tokenized", [True, False], ids=["token-ids", "text"])
def test_server_through_lm_evals_completions_client(models, tasks, server, tokenized):
    """lm-eval's local-completions: echo, logprobs 1, max_tokens 1; every log-likelihood as lm-eval's hf
    backend computes it, hence the same accuracy."""
    lm, _, tok = models
    url, tok_dir = server
    args = (f"model=tiny,base_url={url}/v1/completions,tokenizer_backend=huggingface,tokenizer={tok_dir},"
            f"tokenized_requests={tokenized},num_concurrent=1,max_retries=1,max_length=256")
    out = evaluate("local-completions", tasks, ["args_tiny_mc"], model_args=args)
    oracle = evaluate(HFLM(pretrained=lm, tokenizer=tok, batch_size=1), tasks, ["args_tiny_mc"])
    assert mc_loglikelihoods(out) == pytest.approx(mc_loglikelihoods(oracle), abs=1e-4)
    assert out["results"]["args_tiny_mc"]["acc,none"] == oracle["results"]["args_tiny_mc"]["acc,none"]


def test_server_through_lm_evals_chat_client_with_args_gen_kwargs(engine, tasks, server):
    url, tok_dir = server
    args = f"model=tiny,base_url={url}/v1/chat/completions,num_concurrent=1,max_retries=1"
    out = evaluate("local-chat-completions", tasks, ["args_tiny_gen"], model_args=args, apply_chat_template=True,
                   gen_kwargs="args_k=4,args_w=1.5")
    got = [s["resps"][0][0] for s in out["samples"]["args_tiny_gen"]]
    msgs = [[{"role": "user", "content": f"Question: {q}\nAnswer:"}] for q, _, _ in QUESTIONS[:3]]
    chat = ARGSEngine(engine.lm, engine.rm, tokenizer=engine.tokenizer, backend="native", block_size=4)
    want = chat.generate(msgs, ARGSParams(k=4, w=1.5, max_new_tokens=6, stop=["\n"]), progress=False)
    assert got == [o.text for o in want]


def test_one_command(models, task_dir, tmp_path, monkeypatch, capsys):
    """`args-engine lm-eval` forwards lm-eval's own arguments with --model args-engine; the model args build the
    engine from directories (or Hub ids) and set ARGS."""
    from args_engine.cli import main
    lm, rm, tok = models
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    rm.save_pretrained(tmp_path / "rm")
    monkeypatch.setattr("sys.argv", ["args-engine"])
    main(["lm-eval", "--model_args", f"lm={tmp_path / 'lm'},rm={tmp_path / 'rm'},k=3,w=1.5", "--tasks",
          "args_tiny_mc", "--include_path", str(task_dir), "--limit", "2"])
    out = capsys.readouterr().out
    assert "args-engine" in out and "args_tiny_mc" in out and "acc" in out
