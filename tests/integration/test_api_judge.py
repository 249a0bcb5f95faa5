"""The HTTP judge against a real OpenAI-compatible server on loopback (``openrlaif.serve``) serving the
tiny model: soft labels equal the local judge's, faults are retried or left unscored (never guessed),
usage is counted, the label stage records it, and bad endpoints fail in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from openrlaif.data.constitution import load_constitution
from openrlaif.feedback.api import OpenAICompatibleJudge
from openrlaif.feedback.judges import LocalJudge
from openrlaif.feedback.types import Comparison
from openrlaif.serve import FaultPlan, ServerThread, create_app


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from openrlaif.models.loading import load_causal_lm

    return load_causal_lm(str(tiny_model_dir))


@pytest.fixture(scope="module")
def server(tiny):
    with ServerThread(create_app(tiny.model, tiny.tokenizer, "tiny")) as url:
        yield url


def comparisons(n: int) -> list[Comparison]:
    con = load_constitution("builtin")
    return [Comparison(f"Question number {i}: how do plants grow?", f"They use sunlight {i}.",
                       f"Water and soil, {i * 7} times.", con.principles[i % len(con.principles)]) for i in range(n)]


def test_server_speaks_the_openai_schema(server):
    models = httpx.get(f"{server}/models").json()
    assert models["data"][0]["id"] == "tiny"
    r = httpx.post(f"{server}/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3,
        "temperature": 0, "logprobs": True, "top_logprobs": 5}).json()
    choice = r["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    first = choice["logprobs"]["content"][0]
    assert len(first["top_logprobs"]) == 5 and first["top_logprobs"][0]["logprob"] >= first["top_logprobs"][-1]["logprob"]
    assert r["usage"]["prompt_tokens"] > 0 and r["usage"]["completion_tokens"] >= 1
    bad = httpx.post(f"{server}/chat/completions", json={"model": "other", "messages": [{"role": "user", "content": "x"}]})
    assert bad.status_code == 404 and "not found" in bad.json()["error"]["message"]


def test_prefilled_api_judge_reads_the_same_soft_labels_as_the_local_judge(server, tiny):
    items = comparisons(5)
    local = LocalJudge(tiny.model, tiny.tokenizer).compare(items)
    judge = OpenAICompatibleJudge(server, "tiny", prefill=True, top_logprobs=len(tiny.tokenizer), concurrency=3)
    remote = judge.compare(items)
    for lv, rv in zip(local, remote):
        assert rv.error is None and rv.raw["ab"]["source"] == "logprobs"
        assert rv.score_ab == pytest.approx(lv.score_ab, abs=1e-5)
        assert rv.score_ba == pytest.approx(lv.score_ba, abs=1e-5)
        assert rv.p_first == pytest.approx(lv.p_first, abs=1e-5)
    usage = judge.usage.as_dict()
    assert usage["requests"] == 10 and usage["retries"] == 0 and usage["completion_tokens"] == 10
    assert usage["prompt_tokens"] > 10 * 50


def test_unreadable_answers_are_unscored_with_their_raw_text(server):
    # Without prefill the random tiny model babbles; nothing it says spells a verdict.
    judge = OpenAICompatibleJudge(server, "tiny", prefill=False, top_logprobs=20)
    verdicts = judge.compare(comparisons(3))
    for v in verdicts:
        if v.p_first is None:
            assert "unparsed" in v.error
            assert any("raw" in r and r.get("error") for r in (v.raw["ab"], v.raw["ba"]))
    assert any(v.p_first is None for v in verdicts)


def test_faults_at_30_percent_leave_every_pair_labelled_correctly_or_unscored(tiny):
    items = comparisons(16)
    # The same settings on a fault-free server give the reference verdicts.
    with ServerThread(create_app(tiny.model, tiny.tokenizer, "tiny")) as url:
        reference = OpenAICompatibleJudge(url, "tiny", prefill=True, top_logprobs=len(tiny.tokenizer)).compare(items)
    faults = FaultPlan(rate=0.3, hang_s=1.5, seed=3)
    with ServerThread(create_app(tiny.model, tiny.tokenizer, "tiny", faults=faults)) as url:
        judge = OpenAICompatibleJudge(url, "tiny", prefill=True, top_logprobs=len(tiny.tokenizer), concurrency=4,
                                      timeout_s=1.0, max_retries=8, backoff_base_s=0.01, backoff_cap_s=0.1)
        verdicts = judge.compare(items)
    usage = judge.usage.as_dict()
    assert sum(faults.injected.values()) >= 6 and len(faults.injected) >= 4, faults.injected
    assert usage["retries"] >= 4 and {"http_429", "http_500", "timeout", "malformed_body"} & set(usage["errors"])
    labelled = unscored = 0
    for ref, v in zip(reference, verdicts):
        if v.p_first is None:
            unscored += 1
            assert v.error  # and the raw readings say why
            assert any(r.get("error") for r in (v.raw["ab"], v.raw["ba"]))
        else:
            labelled += 1
            assert v.p_first == pytest.approx(ref.p_first, abs=1e-6)  # never a wrong label
    # 'nonsense' answers (valid JSON, no verdict) are the only faults that cannot be retried away.
    assert unscored <= faults.injected.get("nonsense", 0)
    assert labelled >= len(items) // 2


def test_cached_api_readings_are_not_requested_again(server, tmp_path):
    from openrlaif.core.cache import JudgeCache

    cache = JudgeCache(tmp_path / "c.sqlite")
    items = comparisons(4)
    first = OpenAICompatibleJudge(server, "tiny", prefill=True, cache=cache)
    a = first.compare(items)
    second = OpenAICompatibleJudge(server, "tiny", prefill=True, cache=cache)
    b = second.compare(items)
    assert second.usage.requests == 0 and [v.p_first for v in a] == [v.p_first for v in b]


def test_pointwise_over_http(server):
    judge = OpenAICompatibleJudge(server, "tiny", method="pointwise", prefill=True, top_logprobs=400)
    scores = judge.score([(c.prompt, c.first, c.principle) for c in comparisons(3)])
    assert all(s is not None and 0.0 <= s <= 9.0 for s in scores)
    verdicts = judge.compare(comparisons(3))
    assert all(v.p_first is not None and v.score_ab == v.score_ba for v in verdicts)


def test_label_stage_with_an_api_judge_records_usage(tmp_path, tiny_model_dir, server):
    from conftest import REPO_ROOT, tiny_overrides

    out = tmp_path / "run"
    env_overrides = [*tiny_overrides(tiny_model_dir), f"feedback.api.base_url={server}", "feedback.api.model=tiny",
                     "feedback.api.prefill=true", "feedback.api.top_logprobs=400", "feedback.api.price_input_per_mtok=2",
                     "feedback.api.api_key_env=null"]
    for stage in ("generate", "label"):
        r = subprocess.run([sys.executable, "-m", "openrlaif.cli", stage, "-o", str(out), "-c", str(REPO_ROOT / "configs" / "quick.yaml"),
                            *env_overrides], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    stats = json.loads((out / "round_1" / "judge_stats.json").read_text())
    assert stats["judge"] == "tiny" and stats["method"] == "pairwise"
    assert stats["api"]["requests"] >= 2 * stats["comparisons"] and stats["api"]["cost_usd"] > 0
    prefs = [json.loads(line) for line in (out / "round_1" / "preferences.jsonl").read_text().splitlines()]
    assert prefs and all(p["judge"] == "tiny:pairwise" for p in prefs)
    assert f"Judge API: {stats['api']['requests']} requests" in (out / "report.md").read_text()


def test_unreachable_endpoint_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "openrlaif.cli", "judge-eval", "-n", "2", "feedback.method=pairwise",
                        "feedback.api.base_url=http://127.0.0.1:9/v1", "feedback.api.model=x"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and "feedback.api.base_url" in lines[0]


def test_contrastive_with_an_api_judge_is_refused():
    r = subprocess.run([sys.executable, "-m", "openrlaif.cli", "judge-eval", "-n", "2", "feedback.method=contrastive",
                        "feedback.api.base_url=http://127.0.0.1:9/v1", "feedback.api.model=x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "need a local model" in r.stderr


def test_rlaif_serve_command_serves_the_model(tiny_model_dir):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "openrlaif.cli", "serve", "--model", str(tiny_model_dir),
                             "--name", "tiny-cli", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
                time.sleep(0.2)
        assert models["data"][0]["id"] == "tiny-cli"
        judge = OpenAICompatibleJudge(f"http://127.0.0.1:{port}/v1", "tiny-cli", prefill=True, top_logprobs=400)
        [v] = judge.compare(comparisons(1))
        assert v.p_first is not None and v.raw["ab"]["source"] == "logprobs"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_requires_the_key_when_configured(tiny):
    with ServerThread(create_app(tiny.model, tiny.tokenizer, "tiny", api_key="sekret")) as url:
        assert httpx.get(f"{url}/models").status_code == 401
        assert httpx.get(f"{url}/models", headers={"Authorization": "Bearer sekret"}).status_code == 200
        with pytest.raises(Exception, match="refused the key"):
            OpenAICompatibleJudge(url, "tiny", api_key="wrong").compare(comparisons(1))
        ok = OpenAICompatibleJudge(url, "tiny", api_key="sekret", prefill=True, top_logprobs=400).compare(comparisons(1))
        assert ok[0].p_first is not None
