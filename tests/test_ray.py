"""Scale-out on Ray (args_engine/ray): replicated serving behind one OpenAI endpoint with prefix-affinity
routing, batch generation over Ray Data, eval --ray. One local Ray cluster (2 CPUs) and tiny float64 models."""
import concurrent.futures
import json
import time
import urllib.request

import pytest

import openai
import ray  # the README's test command installs the [ray] extra: its absence is a failure, not a skip

from args_engine.engine import ARGSEngine
from args_engine.params import ARGSParams
from server_util import free_port, get, post
from tiny_models import char_tokenizer, tiny_lm, tiny_rm

APP = "args"
PARAMS = dict(max_tokens=6, args_k=3, args_w=1.5)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    from ray import serve
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-models")
    tiny_lm().save_pretrained(root / "lm")
    char_tokenizer().save_pretrained(root / "lm")
    tiny_rm().save_pretrained(root / "rm")
    return {"lm": str(root / "lm"), "rm": str(root / "rm"), "dtype": "float64", "batch_size": 4}


@pytest.fixture(scope="module")
def reference(model_dirs):
    """The single engine every distributed result must equal."""
    return ARGSEngine.from_pretrained(**model_dirs)


@pytest.fixture(scope="module")
def url(cluster, model_dirs):
    from ray import serve

    from args_engine.ray.serving import RayServeOptions, application
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    options = RayServeOptions(num_replicas=2, num_cpus=0.5, stats_period_s=0.5, prefix_tokens=24,
                              max_ongoing_requests=32)
    serve.run(application(model_dirs, None, options), name=APP, route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60  # both replicas have reported their stats once
    while time.monotonic() < deadline:
        status, body, _ = get(base, "/health")
        if status == 200 and sum(r["status"] == "ok" for r in body["replicas"].values()) == 2:
            break
        time.sleep(0.2)
    return base


def _chat(client, content: str, **extra):
    raw = client.chat.completions.with_raw_response.create(
        model="args-engine", messages=[{"role": "user", "content": content}], max_tokens=PARAMS["max_tokens"],
        extra_body={"args_k": PARAMS["args_k"], "args_w": PARAMS["args_w"], **extra})
    return raw.parse(), raw.headers["x-args-engine-replica"]


def _expected(reference, content: str) -> str:
    params = ARGSParams(k=PARAMS["args_k"], w=PARAMS["args_w"], max_new_tokens=PARAMS["max_tokens"])
    return reference.generate([[{"role": "user", "content": content}]], params, progress=False)[0].text


def _metric(base: str, name: str, replica: str | None = None) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and (replica is None or s.labels.get("replica") == replica))


def test_two_replicas_serve_concurrent_requests_like_one_engine(url, reference):
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    prompts = [f"Question {i}: {'why ' * (i % 4)}is the sky blue?" for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda p: _chat(client, p), prompts))
    assert [r.choices[0].message.content for r, _ in results] == [_expected(reference, p) for p in prompts]
    assert len({replica for _, replica in results}) == 2  # 20 different keys: both replicas served
    assert all(r.choices[0].reward is not None for r, _ in results)


def test_prompts_sharing_a_prefix_land_on_one_replica(url):
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    shared = "Tell me everything about gardening in spring"  # longer than prefix_tokens with the template
    replicas = {_chat(client, f"{shared}, part {i}")[1] for i in range(8)}
    assert len(replicas) == 1
    before = _metric(url, "args_engine_prefix_cache_hit_tokens_total", replicas.pop())
    assert before > 0  # that replica's prefix cache served the shared start


def test_streaming_through_the_proxy_and_disconnect_aborts(url, reference):
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="args-engine", messages=[{"role": "user", "content": "Stream me"}], max_tokens=6, stream=True,
        extra_body={"args_k": 3, "args_w": 1.5}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == _expected(reference, "Stream me")

    aborted = _metric(url, "args_engine_requests_aborted_total")
    # 8 long streams in one request: far more work than the disconnect takes to arrive, so it is an abort
    body = json.dumps({"prompt": [f"A long answer please, {i}" for i in range(8)], "max_tokens": 200,
                       "stream": True, "args_k": 32}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.readline()  # the first event arrived: the request runs in its replica
    deadline = time.monotonic() + 30  # the closed connection aborted it there (stats arrive every 0.5 s)
    while _metric(url, "args_engine_requests_aborted_total") < aborted + 1:
        assert time.monotonic() < deadline, "the client's disconnect did not abort its request in the replica"
        time.sleep(0.2)
    assert _metric(url, "args_engine_requests_running") == 0


def test_health_and_metrics_cover_every_replica(url):
    status, body, _ = get(url, "/health")
    assert status == 200 and len(body["replicas"]) == 2
    assert _metric(url, "args_engine_replicas", None) == 2
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    for replica in body["replicas"]:
        assert f'args_engine_requests_total{{replica="{replica}"}}' in text


def test_errors_come_from_the_replica_app(url):
    status, body, headers = post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                              "args_k": 100000})
    assert status == 400 and body["error"]["param"] == "args_k" and "x-args-engine-replica" in headers
    status, body, _ = post(url, "/v1/completions", None, raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]


def test_killing_a_replica_mid_run_keeps_the_service_up(url, reference):
    from ray.serve._private.common import DeploymentID, ReplicaID

    from args_engine.ray.serving import ENGINE_DEPLOYMENT
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    prompt = "Keep talking about the weather for a long while"
    _, victim = _chat(client, prompt)
    long = dict(messages=[{"role": "user", "content": prompt}], max_tokens=150, args_k=8, args_w=1.0)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        inflight = [pool.submit(post, url, "/v1/chat/completions", long) for _ in range(4)]
        time.sleep(0.5)
        actor = ray.get_actor(ReplicaID(victim, DeploymentID(ENGINE_DEPLOYMENT, APP)).to_full_id_str(),
                              namespace="serve")
        ray.kill(actor, no_restart=True)
        outcomes = [f.result() for f in inflight]
    expected = reference.generate([long["messages"]], ARGSParams(k=8, w=1.0, max_new_tokens=150),
                                  progress=False)[0].text
    for status, body, headers in outcomes:
        # retried on the other replica (same tokens), or a clear error naming what happened
        assert (status == 200 and body["choices"][0]["message"]["content"] == expected) or \
            (status == 503 and body["error"]["code"] == "replica_unavailable"), (status, body)
    for i in range(6):  # the service goes on serving, the same prompt included
        result, replica = _chat(client, f"After the crash {i}")
        assert result.choices[0].message.content == _expected(reference, f"After the crash {i}")
    assert _chat(client, prompt)[0].choices[0].message.content == _expected(reference, prompt)


def test_ray_data_batch_equals_one_engine(cluster, model_dirs, reference):
    from args_engine.ray.batch import RayBatchOptions, generate_dataset
    prompts = [f"Prompt {i}: {'tell me more ' * (i % 3)}" for i in range(200)]
    params = ARGSParams(k=3, w=1.5, max_new_tokens=5)
    ds = ray.data.from_items([{"id": i, "prompt": p} for i, p in enumerate(prompts)])
    options = RayBatchOptions(num_replicas=2, rows_per_batch=25, num_cpus=0.25)
    rows = list(generate_dataset(ds, params, options=options, **model_dirs).iter_rows())
    assert [r["id"] for r in rows] == list(range(200))  # input order
    expected = reference.generate(prompts, params, progress=False)
    assert [list(r["token_ids"]) for r in rows] == [o.token_ids for o in expected]
    assert [r["text"] for r in rows] == [o.text for o in expected]


def test_cli_generate_ray_resumes(cluster, model_dirs, reference, tmp_path):
    from args_engine.cli import main
    prompts = [f"Line {i} of the file" for i in range(12)]
    pfile = tmp_path / "prompts.jsonl"
    pfile.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = tmp_path / "out"
    out.mkdir()
    # a previous run wrote rows 0-4 (marked, so a recomputation would show), then died writing row 5
    (out / "results.jsonl").write_text("".join(json.dumps({"id": i, "text": "DONE BEFORE"}) + "\n" for i in range(5))
                                       + '{"id": 5, "tex')
    args = ["generate", "--ray", "--prompts-file", str(pfile), "--out", str(out), "--replicas", "1",
            "--num-cpus-per-replica", "0.25", "--lm", model_dirs["lm"], "--rm", model_dirs["rm"], "--dtype",
            "float64", "--batch-size", "4", "--k", "3", "--w", "1.5", "--max-new-tokens", "5"]
    main(args)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(12))
    assert [r["text"] for r in rows[:5]] == ["DONE BEFORE"] * 5
    expected = reference.generate(prompts, ARGSParams(k=3, w=1.5, max_new_tokens=5), progress=False)
    assert [r["text"] for r in rows[5:]] == [o.text for o in expected[5:]]
    main(args)  # nothing left to do
    assert len((out / "results.jsonl").read_text().splitlines()) == 12


def test_eval_ray_equals_local(cluster, model_dirs):
    from args_engine.eval.methods import parse_methods
    from args_engine.eval.runner import evaluate, load_models
    from args_engine.ray.batch import RayBatchOptions
    from eval_helpers import tiny_judge
    prompts = [[{"role": "user", "content": f"Eval prompt {i}"}] for i in range(6)]
    models = load_models(model_dirs["lm"], model_dirs["rm"], dtype="float64", batch_size=3)
    methods = parse_methods("args-greedy:k=3:w=1.5,args-stochastic:k=3:w=1:seed=7")
    kw = dict(models=models, judge=tiny_judge(), max_new_tokens=5, batch_size=3, progress=False,
              lm=model_dirs["lm"], rm=model_dirs["rm"], dtype="float64")
    local = evaluate(prompts, methods, **kw)
    remote = evaluate(prompts, methods, ray=RayBatchOptions(num_replicas=1, num_cpus=0.25), **kw)
    for label in local["methods"]:
        assert [r["raw_text"] for r in remote["methods"][label]["responses"]] == \
            [r["raw_text"] for r in local["methods"][label]["responses"]], label


def test_rendezvous_ranking_moves_only_the_keys_of_a_replica_that_leaves():
    from args_engine.ray.routing import rendezvous_rank, routing_key
    keys = [routing_key(list(range(i, i + 70)), 64) for i in range(400)]
    assert routing_key(list(range(64)) + [1], 64) == routing_key(list(range(64)) + [2], 64)  # only the head counts
    replicas = ["a", "b", "c", "d"]
    first = {k: rendezvous_rank(k, replicas)[0] for k in keys}
    assert all(70 <= sum(v == r for v in first.values()) <= 130 for r in replicas)  # spread evenly
    after = {k: rendezvous_rank(k, ["a", "b", "d"])[0] for k in keys}
    assert all(after[k] == first[k] for k in keys if first[k] != "c")
    assert all(after[k] == rendezvous_rank(k, replicas)[1] for k in keys if first[k] == "c")  # its next choice


def test_serve_options_and_application_builder():
    from ray.serve.config import AutoscalingConfig

    from args_engine.ray.serving import RayServeOptions, build_app
    fixed = RayServeOptions(num_replicas=3).deployment_options({"device": "cuda", "rm_device": "cuda:1"})
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"]["num_gpus"] == 2
    auto = RayServeOptions(num_replicas=2, min_replicas=1, max_replicas=8, target_ongoing_requests=4)
    scaling = auto.deployment_options({"device": "cpu"})["autoscaling_config"]
    assert isinstance(scaling, AutoscalingConfig) and (scaling.min_replicas, scaling.max_replicas) == (1, 8)
    assert scaling.target_ongoing_requests == 4 and "num_replicas" not in auto.deployment_options({})
    app = build_app({"lm": "/m/lm", "num_replicas": "2", "prefix_tokens": "32", "api_key": "k", "max_k": "16",
                     "allowed_origins": "a,b", "batch_size": "8", "graph_k": "16"})
    assert app is not None
    with pytest.raises(ValueError, match="unknown build_app arguments"):
        build_app({"replicas": "2"})
    with pytest.raises(ValueError, match="max_replicas"):
        RayServeOptions(min_replicas=4, max_replicas=2)
