"""The native step's contract (issue 11): one host-to-device transfer and one device-to-host read per step, and
the static-shape step (padded to a batch bucket; the code CUDA graphs capture) token-identical to the dynamic
one on CPU, padding rows included. On CUDA: no other synchronization, and graph replay equals eager."""
import os
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from args_engine import ARGSEngine, ARGSParams
from args_engine.engine.cuda_graphs import batch_bucket
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

PROMPTS = ["Hello there", "Hi", "What is the best way to cook rice?"]  # 3 rows: a bucket of 4, one padding row
GREEDY = ARGSParams(k=6, w=1.5, max_new_tokens=12)
STOCHASTIC = ARGSParams(k=5, w=1.0, mode="stochastic", temperature=0.8, max_new_tokens=10, seed=3)
CONTROLLED = ARGSParams(k=4, w=2.0, max_new_tokens=10, repetition_penalty=1.3, no_repeat_ngram_size=2, logprobs=2)
MIXED = [GREEDY, STOCHASTIC, CONTROLLED]  # one batch, per-row k, w, mode, controls and logprobs


@pytest.fixture(scope="module", params=[True, False], ids=["shared-trunk", "two-trunks"])
def models(request):
    lm, rm, tok = tiny_lm(), tiny_rm(), char_tokenizer()
    if request.param:
        rm.model.load_state_dict(lm.model.state_dict())
    return lm, rm, tok


def native(models, **kw):
    lm, rm, tok = models
    return ARGSEngine(lm, rm, tokenizer=tok, backend="native", block_size=4, **kw)


def same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.token_ids == y.token_ids and x.text == y.text and x.rm_tokens == y.rm_tokens
        # values may differ in the last bits: a padded batch is a different matmul shape
        close = dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.tensor(x.rewards), torch.tensor(y.rewards), **close)
        assert (x.logprobs is None) == (y.logprobs is None)
        if x.logprobs is not None:
            torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), **close)
            assert [[t for t, _ in s] for s in x.top_logprobs] == [[t for t, _ in s] for s in y.top_logprobs]
            torch.testing.assert_close(torch.tensor([[v for _, v in s] for s in x.top_logprobs]),
                                       torch.tensor([[v for _, v in s] for s in y.top_logprobs]), **close)


def test_packed_buffer_round_trip():
    """The CUDA path's packing (one uint8 buffer, aligned views of several dtypes), checked on the host."""
    import numpy as np

    from args_engine.engine.step_inputs import layout_of, pack_into, unpack
    arrays = {"ids": np.arange(5, dtype=np.int64), "tables": np.arange(12, dtype=np.int32).reshape(3, 4),
              "empty": np.zeros((0, 4), dtype=np.int32), "w": np.array([0.5, -1e300, 3.0]),
              "odd": np.arange(3, dtype=np.int32), "gumbel": np.linspace(0, 1, 6).reshape(2, 3)}
    layout, size = layout_of(arrays)
    assert size % 16 == 0 and all(off % 16 == 0 for off, *_ in layout.values())
    buf = torch.empty(size, dtype=torch.uint8)
    pack_into(buf, arrays, layout)
    for name, t in unpack(buf, layout).items():
        assert t.shape == arrays[name].shape and np.array_equal(t.numpy(), arrays[name])


def test_batch_buckets():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 16, 17, 512)] == [1, 2, 4, 8, 16, 32, 512]
    assert batch_bucket(513) is None


@pytest.mark.parametrize("params", [GREEDY, STOCHASTIC, MIXED], ids=["greedy", "stochastic", "mixed"])
def test_static_step_equals_dynamic_and_reference(models, params):
    lm, rm, tok = models
    ref = ARGSEngine(lm, rm, tokenizer=tok, backend="reference").generate(
        PROMPTS, [p.__class__(**{**vars(p), "logprobs": None}) for p in params] if isinstance(params, list)
        else params, progress=False)
    dynamic = native(models, step_mode="dynamic").generate(PROMPTS, params, progress=False)
    static = native(models, step_mode="static")
    padded = static.generate(PROMPTS, params, progress=False)
    same(dynamic, padded)
    for r, d in zip(ref, dynamic, strict=True):
        assert r.token_ids == d.token_ids
    runner = static.decoder.runner
    assert runner.spare_block == static.decoder.num_blocks  # padding rows write outside the allocator's blocks
    assert static.decoder.bm.num_free_blocks == static.decoder.num_blocks


def test_static_step_with_triton_kernels(models):
    """The kernels (under the interpreter on CPU) on padded rows: context 0, k 1, the spare block's slots. Against
    the dynamic step on the same kernels: the fused RMSNorm's float32 statistics differ from torch's in the last
    float32 bits (test_native compares the kernels with the reference)."""
    dynamic = native(models, use_triton=True).generate(PROMPTS, MIXED, progress=False)
    same(dynamic, native(models, step_mode="static", use_triton=True).generate(PROMPTS, MIXED, progress=False))


def test_static_step_with_rows_joining_and_leaving(models):
    """Requests arrive mid-run and finish at different steps: the padded batch changes bucket as they do."""
    dyn, sta = native(models), native(models, step_mode="static", max_num_batched_tokens=24)
    outs = []
    for engine in (dyn, sta):
        reqs = [engine.make_request(p, ARGSParams(k=3, w=1.0, max_new_tokens=n))
                for p, n in zip(PROMPTS + ["abc", "b"], (3, 9, 5, 12, 7))]
        ids = [engine.decoder.add_request(r) for r in reqs[:2]]
        steps = 0
        while engine.decoder.has_unfinished():
            engine.decoder.step()
            steps += 1
            if steps == 2:
                ids += engine.decoder.add_requests(reqs[2:])
        outs.append([r.out_ids for r in reqs])
    assert outs[0] == outs[1]


def test_one_transfer_and_one_read_per_step(models):
    engine = native(models)
    runner = engine.decoder.runner
    reqs = [engine.make_request(p, GREEDY) for p in PROMPTS]
    engine.decoder.add_requests(reqs)
    steps = token_steps = 0
    while engine.decoder.has_unfinished():
        if engine.decoder.step():
            token_steps += 1
        steps += 1
    assert runner.transfer.num_transfers == steps
    assert runner.read.num_reads == token_steps


# aten ops that read device memory on the host (a synchronization on CUDA), or bring host data in outside the
# step's one copy (lift_fresh: torch.tensor(python data)); index_put / nonzero / bincount / unique size their
# output from the data
_SYNC_OPS = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select", "bincount", "unique",
             "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave", "index_put", "lift_fresh"}
# reads that only the CPU path makes, by construction (CUDA takes another branch, graph-safe):
_CPU_ONLY = {"RopeTable.__call__",  # the longest position sizes the table; on CUDA it covers the whole context
             "candidate_plan_torch",  # the torch attention's context length; CUDA runs the kernel
             "topk_logprobs_ref",  # the tie check at the k-th value; on a device the int64-key top-k
             "ArgsStep._listed"}  # a CPU RM's gated rows re-listed (compact_gate); on CUDA they are masked


class _SyncOps(TorchDispatchMode):
    """Counts _SYNC_OPS by the innermost project function that issued them (code qualname)."""

    def __init__(self):
        super().__init__()
        self.seen: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in _SYNC_OPS:
            frame = sys._getframe(1)
            while frame is not None and "args_engine" not in frame.f_code.co_filename \
                    and "/kernels/" not in frame.f_code.co_filename:
                frame = frame.f_back
            where = frame.f_code.co_qualname if frame is not None else "?"
            self.seen[where] = self.seen.get(where, 0) + 1
        return func(*args, **(kwargs or {}))


ALL_OPTIONS = dict(w=1.0, max_new_tokens=8, logprobs=2, repetition_penalty=1.2, presence_penalty=0.5,
                   frequency_penalty=0.3, no_repeat_ngram_size=2, logit_bias={5: 1.0, 7: -2.0}, min_p=0.05, top_p=0.9,
                   rm_weights=[1.0, -0.5], gate=0.05)


@pytest.mark.parametrize("step_mode", ["dynamic", "static"])
@pytest.mark.parametrize("use_triton", [False, True])
def test_every_option_one_copy_in_one_read_out(use_triton, step_mode):
    """With every option on at once (logit bias, repetition, presence, frequency, n-gram, min_p, top_p, logprobs,
    the gate, greedy and stochastic rows, ragged k, a multi-objective RM), a decode step makes one host-to-device
    copy, one read back, and no other host synchronization: the control arrays travel in the copy, the controls
    and the gate run on the device."""
    if use_triton and os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("the Triton path needs CUDA or TRITON_INTERPRET=1")
    lm, rm, tok = tiny_lm(dtype=torch.float32), tiny_rm(dtype=torch.float32, num_labels=2), char_tokenizer()
    engine = ARGSEngine(lm, rm, tokenizer=tok, backend="native", block_size=4, use_triton=use_triton,
                        rm_weights=[1.0, 0.0], step_mode=step_mode)  # the engine's default; each request its own
    runner, decoder = engine.decoder.runner, engine.decoder
    decoder.add_requests([engine.make_request(p, ARGSParams(**ALL_OPTIONS, k=k, mode=mode, seed=1))
                          for p, mode, k in zip(PROMPTS, ("greedy", "stochastic", "greedy"), (4, 3, 4))])
    for _ in range(3):  # prefill, then decode steps with responses to penalize
        decoder.step()
    transfers, reads = runner.transfer.num_transfers, runner.read.num_reads
    ops, run = _SyncOps(), runner.run

    def counted(batch):  # the device part of the step (prepare is host work on host arrays)
        with ops:
            return run(batch)
    runner.run = counted
    events = decoder.step()
    assert len(events) == len(PROMPTS)
    assert runner.transfer.num_transfers == transfers + 1 and runner.read.num_reads == reads + 1
    assert {where: n for where, n in ops.seen.items() if where not in _CPU_ONLY} == {}, ops.seen


def test_each_row_scores_its_own_k(models):
    """Ragged k: a k=10 row beside a k=64 row costs the RM 10 candidates, not the batch's 64. A static step
    (the CUDA-graph shapes) has a k=64 row run dynamically when graph_k is below it (ragged as well); with
    graph_k=64 it reads the whole grid, rows x 64 (one shape per batch bucket). Tokens as each row decoded alone."""
    params = [ARGSParams(k=10, w=1.0, max_new_tokens=4), ARGSParams(k=64, w=1.0, max_new_tokens=4)]
    for mode, opts, cells in [("dynamic", {}, 10 + 64), ("static", {}, 10 + 64),
                              ("static", {"graph_k": 64}, 2 * 64)]:
        engine = native(models, step_mode=mode, **opts)
        seen, real = [], engine.decoder.runner.rm.forward_candidates

        def spy(ids, *a, scored=None, **kw):
            seen.append(ids.numel() if scored is None else len(scored))
            return real(ids, *a, scored=scored, **kw)
        engine.decoder.runner.rm.forward_candidates = spy
        both = engine.generate(PROMPTS[:2], params, progress=False)
        assert seen[0] == cells, (mode, opts, seen)
        alone = [native(models, step_mode=mode, **opts).generate([p], q, progress=False)[0]
                 for p, q in zip(PROMPTS, params)]
        assert [o.token_ids for o in both] == [o.token_ids for o in alone]


def test_step_mode_is_checked(models):
    with pytest.raises(ValueError, match="step_mode must be one of"):
        native(models, step_mode="fast")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            native(models, step_mode="graph")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _on_cuda(models, dtype):
    """Copies on CUDA (the module-scoped CPU models stay as they are for the other tests)."""
    import copy
    lm, rm, tok = models
    return copy.deepcopy(lm).to("cuda", dtype), copy.deepcopy(rm).to("cuda", dtype), tok


@cuda
@pytest.mark.parametrize("dtype", [torch.float32])  # bf16: padded shapes round differently, near-ties may flip
def test_graph_replay_equals_eager_on_cuda(models, dtype):
    lm, rm, tok = _on_cuda(models, dtype)
    outs = {mode: ARGSEngine(lm, rm, tokenizer=tok, backend="native", step_mode=mode).generate(
        PROMPTS, MIXED, progress=False) for mode in ("dynamic", "static", "graph")}
    same(outs["static"], outs["graph"])
    for a, b in zip(outs["dynamic"], outs["graph"]):
        assert a.token_ids == b.token_ids


@cuda
def test_graphs_are_captured_at_start_up_on_cuda(models, caplog):
    """Every shape captured when the engine starts (the log line says how many, how long, how much memory);
    serving replays them and captures none."""
    lm, rm, tok = _on_cuda(models, torch.float32)
    with caplog.at_level("INFO", logger="args_engine"):
        engine = ARGSEngine(lm, rm, tokenizer=tok, backend="native", step_mode="graph", batch_size=4)
    runner = engine.decoder.runner
    assert runner.shapes.stats["graphs"] == 3 * 2 + (0 if runner.shared else 3)  # buckets 4, 2, 1
    assert "captured at start-up" in caplog.text and "kept out of the cache budget" in caplog.text
    keys = (list(runner.args_graphs.graphs), list(runner.decode_graphs.graphs))
    engine.generate(PROMPTS, MIXED, progress=False)
    assert (list(runner.args_graphs.graphs), list(runner.decode_graphs.graphs)) == keys


@cuda
@pytest.mark.parametrize("mode", ["dynamic", "graph"])
def test_no_synchronization_but_the_read_on_cuda(models, mode):
    lm, rm, tok = _on_cuda(models, torch.float32)
    engine = ARGSEngine(lm, rm, tokenizer=tok, backend="native", step_mode=mode)
    engine.generate(PROMPTS, GREEDY, progress=False)  # warm up: Triton compiles, graphs captured
    engine.decoder.add_requests([engine.make_request(p, GREEDY) for p in PROMPTS])
    torch.cuda.set_sync_debug_mode("error")
    try:
        while engine.decoder.has_unfinished():
            engine.decoder.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("native_op", [True, False])
def test_copy_on_write_copies_every_layer_of_each_cache(models, monkeypatch, native_op):
    """The runner's block copy (the C++ cache op where built, else torch) copies all layers of both caches."""
    from args_engine import ops
    engine = native(models, num_blocks=8)
    runner = engine.decoder.runner
    monkeypatch.setattr(ops, "has_copy_blocks", lambda device: native_op)
    caches = list({id(kv): kv for kv in (runner.lm_kv, runner.rm_kv)}.values())
    g = torch.Generator().manual_seed(0)
    for k, v in caches:
        k.copy_(torch.randn(k.shape, generator=g, dtype=k.dtype))
        v.copy_(torch.randn(v.shape, generator=g, dtype=v.dtype))
    before = [(k.clone(), v.clone()) for k, v in caches]
    pairs = torch.tensor([[1, 5], [2, 6]])
    runner._copy_blocks(pairs, pairs)
    for (k, v), (k0, v0) in zip(caches, before):
        for x, x0 in ((k, k0), (v, v0)):
            assert torch.equal(x[:, [5, 6]], x0[:, [1, 2]])
            assert torch.equal(x[:, :5], x0[:, :5]) and torch.equal(x[:, 7:], x0[:, 7:])


def test_graph_capture_failure_is_an_error_that_names_why():
    """A capture that fails (out of memory, say) used to fall back to eager steps silently, for good; now the
    engine fails with the shape, the cause and what to do. A shape never captured is an error too: serving
    never captures. (The capture itself needs CUDA: stood in for here.)"""
    from args_engine.engine.cuda_graphs import StepGraphs

    def oom(fn, args, inputs, context):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    graphs = StepGraphs(lambda x: {"y": x + 1}, capture=True, capture_with=oom)
    with pytest.raises(RuntimeError, match=r"capture failed for the step shape \('args', 4\).*out of memory.*"
                                           r"step_mode='static'"):
        graphs.record(("args", 4), (), {"x": torch.zeros(2)})
    with pytest.raises(RuntimeError, match=r"no CUDA graph was captured for the step shape \('args', 4\)"):
        graphs(("args", 4), x=torch.zeros(2))


class _StandInGraph:
    """CUDA-graph capture stood in for on CPU: replay runs the step again on the graph's own input buffers and
    writes into the tensors the capture returned, as a replay does. So the engine's output depends on writing
    each step's inputs into those buffers and on reading the outputs before the next replay."""

    def __init__(self):
        self.keys, self.replays, self.contexts = [], 0, set()

    def graphs(self, runner):
        for g in (runner.args_graphs, runner.decode_graphs):
            g.capture, g.capture_with = True, self.capture
        return self

    def capture(self, fn, args, static, context):
        self.keys.append(tuple(static))
        self.contexts.add(id(context))
        outputs = fn(*args, **static)

        def replay():
            self.replays += 1
            for name, x in fn(*args, **static).items():
                outputs[name].copy_(x)
        return replay, outputs


def test_graphs_are_captured_at_start_up_and_replayed(models):
    """Graph mode's contract, on CPU with the capture stood in for: every shape is captured at start-up, largest
    batch bucket first, as (bucket, greedy | sampled) for the ARGS step (+ the LM decode per bucket with two
    trunks); capturing touches only the spare block and the spare logits row; serving replays those graphs and
    captures none, the step's one transfer writes their inputs straight into their buffers, and the tokens are
    the dynamic step's."""
    engine = native(models, step_mode="static", batch_size=6)
    runner = engine.decoder.runner
    stand_in = _StandInGraph().graphs(runner)
    kv = [x.clone() for x in (*runner.lm_kv, *runner.rm_kv)]
    buckets = [8, 4, 2, 1]
    assert runner.capture_graphs(6) == len(stand_in.keys) == 2 * len(buckets) + (0 if runner.shared else len(buckets))
    assert len(stand_in.contexts) == 1  # one memory pool for every graph
    keys = [("args", b, sampled) for b in buckets for sampled in (True, False)]
    assert list(runner.args_graphs.graphs) == keys
    assert list(runner.decode_graphs.graphs) == ([] if runner.shared else [("decode", b) for b in buckets])
    for x, x0 in zip((*runner.lm_kv, *runner.rm_kv), kv):
        assert torch.equal(x[:, :runner.spare_block], x0[:, :runner.spare_block])  # padding writes: spare only
    assert not runner.next_logits.rows[:-1].any()
    captured = len(stand_in.keys)
    graphed = engine.generate(PROMPTS, MIXED, progress=False)
    assert len(stand_in.keys) == captured and stand_in.replays > 0
    # the step's one transfer wrote every input into its graph's buffers, but the block tables (narrower)
    assert runner.args_graphs.input_copies + runner.decode_graphs.input_copies == stand_in.replays
    same(native(models).generate(PROMPTS, MIXED, progress=False), graphed)
