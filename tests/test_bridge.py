"""Reward models on another tokenizer (decoder RMs, through the bridge that keeps the RM cache) and encoder RMs:
tokens identical to the naive oracle, which re-tokenizes each candidate's whole text from scratch every step
(decoding/bridge.py). Tiny random models in float64; the LM on the default SmolLM2 tokenizer; the RM on a BPE
tokenizer trained here on HH text, or on the offline MiniLM package's WordPiece tokenizer."""
import math
import os

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (BertConfig, BertForSequenceClassification, DebertaV2Config,
                          DebertaV2ForSequenceClassification, GPT2Config, GPT2ForSequenceClassification, LlamaConfig,
                          LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast)

from args_engine import ARGSEngine, ARGSParams

pytestmark = pytest.mark.slow  # the SmolLM2 tokenizer comes with the default LM (converted once, ~25 s)

PROMPTS = ["How do I bake bread at home?", "Dis-moi : où est le café ? 😀 日本語もどうぞ",
           [{"role": "user", "content": "Tell me about the ocean 🌊"}]]
N = 16
USE_TRITON = [False] + ([True] if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available() else [])
RM_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
               "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def lm_tokenizer():
    from transformers import AutoTokenizer

    from args_engine.models.defaults import default_lm_dir
    return AutoTokenizer.from_pretrained(default_lm_dir())


@pytest.fixture(scope="module")
def lm(lm_tokenizer):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(lm_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      initializer_range=0.5, eos_token_id=lm_tokenizer.eos_token_id)
    return LlamaForCausalLM(cfg).double().eval()


def english_lines(limit=400):
    """English text to train a tokenizer on: the Python documentation's topics, which CPython ships."""
    from pydoc_data.topics import topics
    return [line for text in topics.values() for line in text.splitlines() if line.strip()][:limit * 8]


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE trained here on English text (another vocabulary entirely), with its own chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(english_lines(), trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>", "<pad>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = RM_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def wordpiece_tokenizer():
    from transformers import AutoTokenizer

    from args_engine.eval.embed import minilm_dir
    return AutoTokenizer.from_pretrained(minilm_dir())


def decoder_rm(vocab: int, num_labels: int = 1):
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      initializer_range=0.5, num_labels=num_labels, pad_token_id=0)
    return LlamaForSequenceClassification(cfg).double().eval()


def encoder_rm(kind: str, vocab: int, num_labels: int = 1):
    torch.manual_seed(2)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=32, num_labels=num_labels, initializer_range=0.5)
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(**common)).double().eval()
    return DebertaV2ForSequenceClassification(DebertaV2Config(**common, pooler_hidden_size=32)).double().eval()


def run(lm, rm, lm_tok, rm_tok, backend, params, **kw):
    engine = ARGSEngine(lm, rm, tokenizer=lm_tok, rm_tokenizer=rm_tok, backend=backend, eos_ids=set(), **kw)
    return engine, engine.generate(PROMPTS, params, progress=False)


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.token_ids == y.token_ids and x.text == y.text
        torch.testing.assert_close(torch.tensor(x.rewards), torch.tensor(y.rewards), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("template", [True, False], ids=["rm-chat-template", "no-template"])
@pytest.mark.parametrize("mode", ["greedy", "stochastic"])
def test_bpe_bridge_equals_the_definition(lm, lm_tokenizer, bpe_tokenizer, template, mode, backend):
    """auto: a Llama RM on another tokenizer runs natively, on its own paged pool; reference: an HF cache."""
    rm_tok = bpe_tokenizer
    if not template:
        rm_tok = PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer.backend_tokenizer, bos_token="<s>",
                                         eos_token="</s>", pad_token="<pad>")
    rm = decoder_rm(len(rm_tok))
    params = ARGSParams(k=6, w=3.0, max_new_tokens=N, mode=mode, temperature=0.9, seed=5)
    engine, cached = run(lm, rm, lm_tokenizer, rm_tok, backend, params)
    assert engine.backend == ("native" if backend == "auto" else "reference") and engine.bridge is not None
    _, naive = run(lm, rm, lm_tokenizer, rm_tok, "naive", params)
    assert_same(naive, cached)
    # the cache is used: the RM read far fewer tokens than re-reading every candidate's whole text
    full = sum(len(engine.bridge.ids(engine.make_request(p, params).rm_prefix, [])) for p in PROMPTS) * N * 6
    assert sum(o.rm_tokens for o in cached) < full / 5


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_the_prompt_is_read_once_not_once_per_candidate(lm, lm_tokenizer, bpe_tokenizer, backend):
    """The first step's candidates share the whole prompt: one causal forward reads it, then only their tails go
    through the tree mask (reading it k times made the first step quadratic in k x the prompt)."""
    rm = decoder_rm(len(bpe_tokenizer))
    engine = ARGSEngine(lm, rm, tokenizer=lm_tokenizer, rm_tokenizer=bpe_tokenizer, eos_ids=set(), backend=backend)
    read = []
    if backend == "reference":
        forward = engine.rm.forward_trunk
        engine.rm.forward_trunk = lambda **kw: read.append(kw["input_ids"].numel()) or forward(**kw)
    else:  # the paged RM's causal extension and its candidate forward
        model = engine.decoder.runner.paged_bridge.model
        chunks, candidates = model.forward_chunks, model.forward_candidates
        model.forward_chunks = lambda ids, *a: read.append(ids.numel()) or chunks(ids, *a)
        model.forward_candidates = lambda ids, *a, **kw: read.append(ids.numel()) or candidates(ids, *a, **kw)
    prompt = PROMPTS[0]
    out = engine.generate([prompt], ARGSParams(k=6, w=3.0, max_new_tokens=1), progress=False)[0]
    prefix = len(engine.bridge.ids(engine.make_request(prompt, ARGSParams()).rm_prefix, out.token_ids))
    assert prefix <= sum(read) <= prefix + 6 * 8, (read, prefix)  # each tail: a re-tokenized window of a few tokens


def test_partial_characters_decode_as_the_full_text(lm, lm_tokenizer, bpe_tokenizer):
    """The LM's byte-level tokens split emoji and CJK characters: the RM's text is the full decode's."""
    from args_engine.decoding.bridge import RMTextView
    view = RMTextView(lm_tokenizer, bpe_tokenizer)
    ids = lm_tokenizer("😀日本", add_special_tokens=False)["input_ids"]
    assert len(ids) > 2  # bytes of one character over several tokens
    for n in range(1, len(ids) + 1):
        assert view.response_text(ids[:n]) == lm_tokenizer.decode(ids[:n], skip_special_tokens=True)
    assert view.response_text(ids) == "😀日本"


def test_wordpiece_decoder_rm(lm, lm_tokenizer, wordpiece_tokenizer):
    rm = decoder_rm(len(wordpiece_tokenizer))
    params = ARGSParams(k=5, w=4.0, max_new_tokens=N)
    _, cached = run(lm, rm, lm_tokenizer, wordpiece_tokenizer, "reference", params)
    _, naive = run(lm, rm, lm_tokenizer, wordpiece_tokenizer, "naive", params)
    assert_same(naive, cached)


@pytest.mark.parametrize("kind,tok", [("bert", "wordpiece"), ("deberta-v2", "bpe")])
def test_encoder_rm_equals_the_definition(lm, lm_tokenizer, bpe_tokenizer, wordpiece_tokenizer, kind, tok):
    rm_tok = wordpiece_tokenizer if tok == "wordpiece" else bpe_tokenizer
    rm = encoder_rm(kind, len(rm_tok))
    params = ARGSParams(k=5, w=4.0, max_new_tokens=N, gate=0.2)
    engine, batched = run(lm, rm, lm_tokenizer, rm_tok, "auto", params)
    assert engine.rm.is_encoder and engine.backend == "reference"
    _, naive = run(lm, rm, lm_tokenizer, rm_tok, "naive", params)
    assert_same(naive, batched)
    # texts longer than the encoder's 32 positions were truncated from the left, not refused
    assert max(len(engine.bridge.ids(engine.make_request(p, params).rm_prefix, o.token_ids))
               for p, o in zip(PROMPTS, batched)) > 32


def test_multi_objective_bridged_rm(lm, lm_tokenizer, bpe_tokenizer):
    rm = decoder_rm(len(bpe_tokenizer), num_labels=3)
    params = [ARGSParams(k=5, w=3.0, max_new_tokens=N), ARGSParams(k=5, w=3.0, max_new_tokens=N,
                                                                   rm_weights=[0.0, 1.0, -1.0]),
              ARGSParams(k=4, w=2.0, max_new_tokens=N)]
    _, cached = run(lm, rm, lm_tokenizer, bpe_tokenizer, "reference", params, rm_weights=[1.0, 0.5, 0.0])
    _, naive = run(lm, rm, lm_tokenizer, bpe_tokenizer, "naive", params, rm_weights=[1.0, 0.5, 0.0])
    assert_same(naive, cached)


def test_bridge_errors_are_named(lm, lm_tokenizer, bpe_tokenizer):
    rm = decoder_rm(len(bpe_tokenizer))
    with pytest.raises(ValueError, match="vocabularies differ .* pass both tokenizers"):
        ARGSEngine(lm, rm, tokenizer=lm_tokenizer)
    with pytest.raises(ValueError, match="step_mode 'graph' .* not possible here"):
        ARGSEngine(lm, rm, tokenizer=lm_tokenizer, rm_tokenizer=bpe_tokenizer, backend="native", step_mode="graph")


@pytest.mark.parametrize("gate", [0.3, None], ids=["a-gated-row", "no-gate"])
@pytest.mark.parametrize("kind", ["bpe-decoder", "wordpiece-decoder", "bpe-gpt2", "bert-encoder"])
def test_native_backend_runs_the_bridge(lm, lm_tokenizer, bpe_tokenizer, wordpiece_tokenizer, kind, gate):
    """The native engine (paged LM, continuous batching) with an RM that reads text gives the reference bridge's
    tokens: prompts batched, with per-row k, mode, gate and multi-objective weights mixed. A Llama RM runs on its
    own paged pool; a GPT-2 RM (no native runner) on an HF cache per row; an encoder reads the k texts."""
    rm_tok = bpe_tokenizer if kind.startswith("bpe") else wordpiece_tokenizer
    if kind.endswith("encoder"):
        rm = encoder_rm("bert", len(rm_tok), num_labels=2)
    elif kind.endswith("gpt2"):
        torch.manual_seed(3)
        rm = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(rm_tok), n_embd=32, n_layer=2, n_head=4,
                                                      n_positions=1024, num_labels=2, pad_token_id=0,
                                                      initializer_range=0.5)).double().eval()
    else:
        rm = decoder_rm(len(rm_tok), num_labels=2)
    kinds = [ARGSParams(k=6, w=3.0, max_new_tokens=N),
             ARGSParams(k=4, w=2.0, mode="stochastic", temperature=0.9, seed=3, max_new_tokens=N,
                        rm_weights=[0.0, 1.0]),
             ARGSParams(k=5, w=3.0, max_new_tokens=N, gate=gate)]
    params = [kinds[i % len(kinds)] for i in range(len(PROMPTS))]
    _, reference = run(lm, rm, lm_tokenizer, rm_tok, "reference", params, rm_weights=[1.0, 0.5])
    engine, native = run(lm, rm, lm_tokenizer, rm_tok, "native", params, rm_weights=[1.0, 0.5], batch_size=4)
    assert engine.backend == "native" and engine.decoder.runner.bridge is not None
    assert (engine.decoder.rm_bm is not None) == kind.endswith("-decoder")
    assert_same(reference, native)
    assert [o.rm_tokens for o in native] == [o.rm_tokens for o in reference]
    if engine.decoder.rm_bm is not None:  # every RM block back in the pool
        assert engine.decoder.rm_bm.num_free_blocks == engine.decoder.rm_bm.num_blocks


@pytest.mark.parametrize("kind", ["bpe-decoder", "bert-encoder"])
def test_the_bridged_rm_scores_inside_the_one_args_step(lm, lm_tokenizer, bpe_tokenizer, wordpiece_tokenizer, kind,
                                                       monkeypatch):
    """Issue 24: an RM that reads text is the ARGS step's "score the candidates" part, not a step of its own:
    every step that decodes goes through ArgsStep (top-k, the gate decided on the device, the pick), with one
    copy in and two reads out: the tokenizer's (each row's candidates and k) and the step's."""
    from args_engine.engine.args_step import ArgsStep
    rm_tok = bpe_tokenizer if kind.startswith("bpe") else wordpiece_tokenizer
    rm = decoder_rm(len(rm_tok)) if kind.endswith("decoder") else encoder_rm("bert", len(rm_tok))
    params = [ARGSParams(k=4, w=3.0, max_new_tokens=6), ARGSParams(k=3, w=2.0, max_new_tokens=6, gate=0.3),
              ARGSParams(k=5, w=1.0, mode="stochastic", seed=2, max_new_tokens=6)]
    calls, step = [], ArgsStep.__call__
    monkeypatch.setattr(ArgsStep, "__call__", lambda self, *a, **kw: calls.append(1) or step(self, *a, **kw))
    engine = ARGSEngine(lm, rm, tokenizer=lm_tokenizer, rm_tokenizer=rm_tok, backend="native", eos_ids=set(),
                        batch_size=3)
    dec = engine.decoder
    reqs = [engine.make_request(p, q) for p, q in zip(PROMPTS, params)]
    dec.add_requests(reqs)
    steps = token_steps = 0
    while dec.has_unfinished():
        token_steps += bool(dec.step())
        steps += 1
    assert len(calls) == token_steps > 0
    assert dec.runner.transfer.num_transfers == steps and dec.runner.read.num_reads == 2 * token_steps
    want = ARGSEngine(lm, rm, tokenizer=lm_tokenizer, rm_tokenizer=rm_tok, backend="naive",
                      eos_ids=set()).generate(PROMPTS, params, progress=False)
    assert [r.out_ids for r in reqs] == [o.token_ids for o in want]


def paged_bridge_engine(lm, rm, lm_tok, rm_tok, window=4, **kw):
    engine = ARGSEngine(lm, rm, tokenizer=lm_tok, rm_tokenizer=rm_tok, backend="native", eos_ids=set(), **kw)
    engine.decoder.rm_bm.window = window
    return engine


def test_the_rm_pool_records_a_step_only_after_it(lm, lm_tokenizer, bpe_tokenizer):
    """Issue 24 (layering): during the runner's step the bridged RM's pool is only asked (slots, tables,
    capacity); what each row's RM cache now holds is recorded by the engine once the step has succeeded. (A cut
    is the one change made mid-step: the re-tokenized text is known only there.) Tokens as the naive oracle's."""
    rm = decoder_rm(len(bpe_tokenizer))
    engine = paged_bridge_engine(lm, rm, lm_tokenizer, bpe_tokenizer)
    dec, in_step, calls = engine.decoder, [False], []
    run, commit = dec.runner.run, dec.rm_bm.commit

    def stepping(batch):
        in_step[0] = True
        try:
            return run(batch)
        finally:
            in_step[0] = False
    dec.runner.run = stepping
    dec.rm_bm.commit = lambda *a: calls.append(in_step[0]) or commit(*a)
    params = ARGSParams(k=4, w=3.0, max_new_tokens=6)
    got = engine.generate(PROMPTS, params, progress=False)
    assert calls and not any(calls)
    want = ARGSEngine(lm, rm, tokenizer=lm_tokenizer, rm_tokenizer=bpe_tokenizer, backend="naive",
                      eos_ids=set()).generate(PROMPTS, params, progress=False)
    assert_same(want, got)


@pytest.mark.parametrize("window", [4, 0], ids=["window-4", "settle-everything"])
def test_paged_bridge_under_pressure(lm, lm_tokenizer, bpe_tokenizer, window):
    """The bridged RM's paged pool with few blocks: sequences preempted and recomputed, prompts that share their
    first blocks (prefix-cache hits in the RM pool), and, with nothing held back from the allocator (window 0),
    re-tokenization reaching settled tokens (cut: freed and allocated again). Tokens equal the naive oracle's;
    no RM block leaks."""
    dec = _check_paged_bridge(lm, lm_tokenizer, bpe_tokenizer, window, use_triton=False, num_blocks=20,
                              block_size=8).decoder
    assert dec.scheduler.num_preemptions > 0  # the pools were too small for all four at once
    if window == 0:
        assert dec.rm_bm.num_cuts > 0  # a settled token changed: the cut path ran


@pytest.mark.skipif(not USE_TRITON[-1], reason="needs CUDA or TRITON_INTERPRET=1")
def test_paged_bridge_on_the_triton_kernels(lm, lm_tokenizer, bpe_tokenizer):
    """The same on the Triton path (the candidate kernel's ragged tails; the interpreter on CPU, so two raw
    prompts and a few tokens)."""
    _check_paged_bridge(lm, lm_tokenizer, bpe_tokenizer, 0, use_triton=True, num_blocks=64, block_size=4, raw=True,
                        n=4, rows=2)


def _check_paged_bridge(lm, lm_tokenizer, bpe_tokenizer, window, use_triton, num_blocks, block_size, raw=False,
                        n=N, rows=4):
    rm = decoder_rm(len(bpe_tokenizer))
    base = "Tell me about bread and ovens, please. " if raw else \
        "Tell me everything you know about bread, ovens and the history of baking in Europe, please. "
    prompts = [base + "Start with rye. 🍞", base + "Start with wheat. 日本", PROMPTS[1],
               base + "Start with rye. 🍞"][:rows]
    params = [ARGSParams(k=k, w=3.0, max_new_tokens=n) for k in (6, 4, 5, 6)][:rows]
    naive = ARGSEngine(lm, rm, tokenizer=lm_tokenizer, rm_tokenizer=bpe_tokenizer, backend="naive", eos_ids=set(),
                       raw=raw)
    want = naive.generate(prompts, params, progress=False)
    engine = paged_bridge_engine(lm, rm, lm_tokenizer, bpe_tokenizer, window, batch_size=4, num_blocks=num_blocks,
                                 block_size=block_size, use_triton=use_triton, raw=raw)
    model, longest = engine.decoder.runner.paged_bridge.model, []
    forward = model.forward_candidates

    def recording(*args, segments=None, **kw):
        longest.append(int(torch.unique(segments, return_counts=True)[1].max()))  # a tail's length
        return forward(*args, segments=segments, **kw)
    model.forward_candidates = recording
    got = engine.generate(prompts, params, progress=False)
    assert max(longest) > 1  # some candidate's tail held several RM tokens: the ragged tree was exercised
    for x, y in zip(want, got, strict=True):
        assert x.token_ids == y.token_ids and x.text == y.text
        torch.testing.assert_close(torch.tensor(x.rewards), torch.tensor(y.rewards), rtol=1e-5 if use_triton else
                                   1e-9, atol=1e-5 if use_triton else 1e-9)
    dec = engine.decoder
    assert dec.rm_bm.num_free_blocks == dec.rm_bm.num_blocks and dec.bm.num_free_blocks == dec.bm.num_blocks
    assert not dec.rm_bm.seqs  # the pool forgets finished sequences
    return engine


def test_paged_bridge_reads_shared_rm_prefixes_from_the_cache(lm, lm_tokenizer, bpe_tokenizer):
    """Two prompts with the same long start: the second's RM prefill reads the first's RM blocks (RM-token
    prefix caching), and the RM reads fewer tokens for it."""
    rm = decoder_rm(len(bpe_tokenizer))
    engine = paged_bridge_engine(lm, rm, lm_tokenizer, bpe_tokenizer, batch_size=1)
    read = []
    forward = engine.decoder.runner.paged_bridge.model.forward_chunks
    engine.decoder.runner.paged_bridge.model.forward_chunks = lambda ids, *a: read.append(len(ids)) or forward(ids, *a)
    prompt = "Tell me everything you know about bread, ovens and the history of baking in Europe. " * 2
    params = ARGSParams(k=4, w=3.0, max_new_tokens=2)
    first = engine.generate([prompt + "Rye?"], params, progress=False)
    n_first = sum(read)
    read.clear()
    second = engine.generate([prompt + "Wheat?"], params, progress=False)
    assert sum(read) < n_first / 2, (n_first, read)
    want = ARGSEngine(lm, rm, tokenizer=lm_tokenizer, rm_tokenizer=bpe_tokenizer, backend="naive",
                      eos_ids=set()).generate([prompt + "Rye?", prompt + "Wheat?"], params, progress=False)
    assert [o.token_ids for o in want] == [first[0].token_ids, second[0].token_ids]


def test_paged_bridge_reads_a_long_prompt_in_budget_sized_pieces(lm, lm_tokenizer, bpe_tokenizer):
    """A prompt's RM tokens go through causal forwards of at most max_num_batched_tokens tokens each (a long
    prompt in pieces, as the LM's prefill is chunked: the step's activations stay bounded). Tokens equal the
    naive oracle's; no RM block leaks."""
    rm = decoder_rm(len(bpe_tokenizer))
    budget = 24
    engine = paged_bridge_engine(lm, rm, lm_tokenizer, bpe_tokenizer, batch_size=2, block_size=8,
                                 max_num_batched_tokens=budget)
    bridge, read = engine.decoder.runner.paged_bridge, []
    forward = bridge.model.forward_chunks
    bridge.model.forward_chunks = lambda ids, *a: read.append(len(ids)) or forward(ids, *a)
    prompts = ["Tell me everything you know about bread, ovens and the history of baking in Europe. " * 2,
               PROMPTS[1]]
    params = ARGSParams(k=4, w=3.0, max_new_tokens=4)
    got = engine.generate(prompts, params, progress=False)
    assert len(read) > 2 and max(read) <= budget, read  # the prompts' RM tokens, in pieces
    want = ARGSEngine(lm, rm, tokenizer=lm_tokenizer, rm_tokenizer=bpe_tokenizer, backend="naive",
                      eos_ids=set()).generate(prompts, params, progress=False)
    assert_same(want, got)
    rm_bm = engine.decoder.rm_bm
    assert rm_bm.num_free_blocks == rm_bm.num_blocks


def test_readme_reward_models_snippet(lm, lm_tokenizer, bpe_tokenizer):
    from test_readme_dropin import snippet
    ns = dict(lm=lm, rm=decoder_rm(len(bpe_tokenizer)), lm_tokenizer=lm_tokenizer, rm_tokenizer=bpe_tokenizer,
              armo_rm=decoder_rm(lm.config.vocab_size, num_labels=3), tok=lm_tokenizer)
    exec(snippet("reward-models"), ns)
    assert ns["engine"].rm.num_objectives == 3


@pytest.mark.parametrize("kind", ["bpe-decoder", "bert-encoder"])
def test_eval_scores_replies_as_the_bridged_rm_reads_them(lm, lm_tokenizer, bpe_tokenizer, wordpiece_tokenizer, kind):
    """eval's final scoring of a bridged RM reads the RM's own rendering of the dialogue (its chat template + the
    reply's text on its tokenizer), as decoding does: an ARGS reply's score equals the reward decoding gave its
    last token (where cleaning left the text as decoded)."""
    from args_engine.eval.methods import parse_methods
    from args_engine.eval.runner import evaluate, from_engine
    from eval_helpers import tiny_judge
    rm, rm_tok = ((decoder_rm(len(bpe_tokenizer)), bpe_tokenizer) if kind == "bpe-decoder" else
                  (encoder_rm("bert", len(wordpiece_tokenizer)), wordpiece_tokenizer))
    engine = ARGSEngine(lm, rm, tokenizer=lm_tokenizer, rm_tokenizer=rm_tok, eos_ids=set(), batch_size=2)
    prompts = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in PROMPTS]
    res = evaluate(prompts, parse_methods("args-greedy:k=4:w=3"), models=from_engine(engine), judge=tiny_judge(),
                   max_new_tokens=6, batch_size=2, progress=False)
    rows = res["methods"]["args-greedy:k=4:w=3"]["responses"]
    as_decoded = [r for r in rows if r["text"] == r["raw_text"]]
    assert as_decoded, "cleaning changed every reply: the check below would not run"
    for r in as_decoded:
        assert r["reward"] == pytest.approx(r["args_final_reward"], rel=1e-9, abs=1e-9)
    view, rm = engine.bridge, engine.rm  # every reply: the RM on its own rendering of the dialogue, one at a time
    for r in rows + res["methods"]["greedy"]["responses"]:
        text = view.prefix(r["prompt"], raw=False) + r["text"]
        if rm.is_encoder:
            want = rm.encoder_rewards(view.encode_texts([text], "cpu"))
        else:
            ids = torch.tensor(view.text_ids([text]))
            want = rm.rewards(rm.forward_trunk(input_ids=ids, attention_mask=torch.ones_like(ids))[:, -1])
        assert r["reward"] == pytest.approx(want.item(), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"])
def test_paged_bridge_for_each_native_rm_family(lm, lm_tokenizer, bpe_tokenizer, family):
    """Every native family as a bridged RM on its own paged pool (docs/reward-models.md's table): tokens equal the
    naive oracle's (Gemma's float32 attention softmax: rewards to 1e-5)."""
    from tiny_models import _RM, _config
    cfg = _config(family, num_labels=1)
    cfg.vocab_size, cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = len(bpe_tokenizer), 0, 0, 1
    torch.manual_seed(4)
    rm = _RM[family](cfg).double().eval()
    params = ARGSParams(k=4, w=4.0, max_new_tokens=8)
    _, want = run(lm, rm, lm_tokenizer, bpe_tokenizer, "naive", params)
    engine, got = run(lm, rm, lm_tokenizer, bpe_tokenizer, "auto", params)
    assert engine.backend == "native" and engine.decoder.rm_bm is not None
    tol = 1e-5 if family.startswith("gemma") else 1e-9
    for x, y in zip(want, got, strict=True):
        assert x.token_ids == y.token_ids
        torch.testing.assert_close(torch.tensor(x.rewards), torch.tensor(y.rewards), rtol=tol, atol=tol)


def test_common_prefix_and_split_tails():
    """common_prefix (C slice comparisons and a bisection) against a plain loop, on random lists; split_tails on
    a hand case."""
    import random

    from args_engine.decoding.bridge import common_prefix, split_tails
    rng = random.Random(0)
    for _ in range(2000):
        a = [rng.randrange(3) for _ in range(rng.randrange(12))]
        b = a[:rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(5))]
        limit = rng.randrange(15)
        want = 0
        while want < min(limit, len(a), len(b)) and a[want] == b[want]:
            want += 1
        assert common_prefix(a, b, limit) == want, (a, b, limit)
    # the cache holds [1, 2, 3, 4]; the candidates re-tokenized the last cached token and share [1, 2, 3]
    assert split_tails([1, 2, 3, 4], [[1, 2, 3, 5, 6], [1, 2, 3, 7]]) == (3, 3)
    assert split_tails([1, 2], [[1, 2, 3, 4, 5], [1, 2, 3, 4, 6]]) == (2, 4)  # two more shared past the cache


def test_hf_custom_generate_hook_runs_the_bridge(lm, lm_tokenizer, bpe_tokenizer):
    """`generate(custom_generate=args_engine.hf.generate, args_tokenizer=..., args_rm_tokenizer=...)` with an RM
    on another tokenizer: the tokens the naive oracle gives for the same prompt ids (read as their text)."""
    import args_engine.hf
    rm = decoder_rm(len(bpe_tokenizer))
    from args_engine.chat import render_prompt
    prompt = render_prompt(lm_tokenizer, PROMPTS[1])
    out = lm.generate(torch.tensor([prompt]), custom_generate=args_engine.hf.generate, reward_model=rm, args_k=4,
                      args_w=3.0, args_tokenizer=lm_tokenizer, args_rm_tokenizer=bpe_tokenizer, max_new_tokens=6,
                      do_sample=False, eos_token_id=None, pad_token_id=0)
    want = ARGSEngine(lm, rm, tokenizer=lm_tokenizer, rm_tokenizer=bpe_tokenizer, backend="naive", eos_ids=set())
    assert out[0, len(prompt):].tolist() == want.generate([prompt], ARGSParams(k=4, w=3.0, max_new_tokens=6),
                                                          progress=False)[0].token_ids


def test_logits_processor_refuses_rms_it_cannot_read(lm, bpe_tokenizer, wordpiece_tokenizer):
    """ARGSLogitsProcessor feeds the LM's token ids to the RM: an encoder RM or an RM over another vocabulary is
    refused with a message that points at the bridge, not run on ids it does not understand."""
    from args_engine.hf import ARGSLogitsProcessor
    with pytest.raises(ValueError, match="encoder RM"):
        ARGSLogitsProcessor(encoder_rm("bert", len(wordpiece_tokenizer)), k=3)
    proc = ARGSLogitsProcessor(decoder_rm(len(bpe_tokenizer)), k=3)
    with pytest.raises(ValueError, match="the LM's vocabulary"):
        proc(torch.tensor([[1, 2, 3]]), torch.randn(1, lm.config.vocab_size))


def test_the_rm_pool_is_sized_for_the_rm_tokenizer(lm, lm_tokenizer):
    """An RM tokenizer that spends more tokens on a text than the LM's (here one per character, about 4x) gets an
    RM pool that many times larger: a batch that fits the LM's pool runs without RM-pool preemptions, and the
    memory budget counts both pools. rm_num_blocks sets it by hand."""
    from args_engine.chat import render_prompt
    from args_engine.engine.model_runner import cache_bytes_per_block
    from tiny_models import char_tokenizer
    rm_tok = char_tokenizer()
    rm = decoder_rm(len(rm_tok))
    prompt = "Tell me everything you know about bread, ovens and the history of baking in Europe, please."
    params = ARGSParams(k=3, w=3.0, max_new_tokens=6)
    blocks = 4 * -(-(len(render_prompt(lm_tokenizer, prompt)) + 8) // 8)  # the LM's pool just holds four
    engine = paged_bridge_engine(lm, rm, lm_tokenizer, rm_tok, batch_size=4, block_size=8, num_blocks=blocks)
    dec = engine.decoder
    ratio = engine.bridge.token_ratio()
    assert ratio > 2 and dec.rm_bm.num_blocks == math.floor(blocks * ratio)
    running, schedule = [], dec.scheduler.schedule
    dec.scheduler.schedule = lambda: (schedule(), running.append(len(dec.scheduler.running)))[0]
    got = engine.generate([prompt] * 4, params, progress=False)
    assert max(running) == 4 and dec.scheduler.num_preemptions == 0  # (with the LM's block count: 2 and 1)
    want = ARGSEngine(lm, rm, tokenizer=lm_tokenizer, rm_tokenizer=rm_tok, backend="naive",
                      eos_ids=set()).generate([prompt] * 4, params, progress=False)
    assert_same(want, got)
    by_hand = paged_bridge_engine(lm, rm, lm_tokenizer, rm_tok, block_size=8, num_blocks=blocks, rm_num_blocks=7)
    assert by_hand.decoder.rm_bm.num_blocks == 7
    sized = paged_bridge_engine(lm, rm, lm_tokenizer, rm_tok, block_size=8, cache_memory_gb=0.001)
    d = sized.decoder
    lm_bytes = d.bm.num_blocks * cache_bytes_per_block([d.runner.lm], 8)
    rm_bytes = d.rm_bm.num_blocks * cache_bytes_per_block([d.runner.paged_bridge.model], 8)
    assert lm_bytes + rm_bytes <= 0.001 * 2**30 and d.rm_bm.num_blocks > 2 * d.bm.num_blocks


def test_native_encoder_rm_reads_every_rows_candidates_in_one_forward(lm, lm_tokenizer, wordpiece_tokenizer):
    """An encoder RM keeps no cache: on the native engine each step's candidate texts of all rows go through it in
    one batched forward (not one per row). Tokens and rewards equal the naive oracle's."""
    rm = encoder_rm("bert", len(wordpiece_tokenizer))
    calls = []
    rm.register_forward_hook(lambda *_: calls.append(1))
    params = [ARGSParams(k=k, w=3.0, max_new_tokens=5, gate=g) for k, g in ((4, None), (3, 0.5), (5, None))]
    engine = ARGSEngine(lm, rm, tokenizer=lm_tokenizer, rm_tokenizer=wordpiece_tokenizer, backend="native",
                        eos_ids=set(), batch_size=3)
    got = engine.generate(PROMPTS, params, progress=False)
    assert len(calls) == 5  # one per step: the three rows decode together
    want = ARGSEngine(lm, rm, tokenizer=lm_tokenizer, rm_tokenizer=wordpiece_tokenizer, backend="naive",
                      eos_ids=set()).generate(PROMPTS, params, progress=False)
    assert_same(want, got)
