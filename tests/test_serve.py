"""``duo serve`` against the real server (uvicorn on a free loopback port, a tiny model):
the API, the SSE stream, equality with ``duo sample``, 400s naming the field, 503 with
Retry-After, a disconnect freeing its slot, identical requests batched, and the page in
headless Chromium (skipped, with the reason, where Chromium or selenium is missing)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="duo serve needs the serve extra: pip install 'duo-lm[serve]'")
uvicorn = pytest.importorskip("uvicorn", reason="duo serve needs the serve extra: pip install 'duo-lm[serve]'")

from duo.cli import main  # noqa: E402
from duo.serve import ServeConfig, create_app  # noqa: E402

from test_evaluation import loaded_runs, tiny_runs  # noqa: E402,F401  (session fixtures)

PROMPT = "The model learns"
MAX_STEPS = 3000
ROOT = Path(__file__).resolve().parents[1]


class Server:
    """uvicorn serving ``app`` in a thread on a free loopback port."""

    def __init__(self, app) -> None:
        # The bound socket goes to uvicorn as it is: no window in which another process
        # (the other xdist worker's server) could take a port found free.
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def request(self, method: str, path: str, body=None, timeout: float = 60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, resp.headers, json.loads(raw) if "json" in ctype else raw.decode()

    def post(self, body, path: str = "/v1/generate"):
        return self.request("POST", path, body)

    def open_stream(self, body) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("POST", "/v1/generate/stream", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        return conn, conn.getresponse()

    def stream(self, body) -> list[tuple[str, dict]]:
        conn, resp = self.open_stream(body)
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
        events = list(read_events(resp))
        conn.close()
        return events


def read_events(resp):
    kind = None
    for raw in resp:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, json.loads(line[6:])
            if kind in ("done", "error"):
                return


@pytest.fixture(scope="module")
def loaded(loaded_runs):
    return loaded_runs["duo"]


@pytest.fixture(scope="module")
def server(loaded):
    s = Server(create_app(ServeConfig(max_steps=MAX_STEPS, max_samples=4, queue=8), loaded=loaded))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def small_server(loaded):
    """One slot: a second request while one runs gets 503."""
    s = Server(create_app(ServeConfig(max_steps=MAX_STEPS, queue=1), loaded=loaded))
    yield s
    s.stop()


def wait_idle(server: Server, timeout: float = 10.0) -> dict:
    deadline = time.time() + timeout
    while True:
        status, _, health = server.request("GET", "/healthz")
        if health["active"] == 0 or time.time() > deadline:
            return health
        time.sleep(0.05)


# ------------------------------------------------------------------ happy paths
def test_health_model_and_page(server, loaded):
    status, _, health = server.request("GET", "/healthz")
    assert status == 200 and health["status"] == "ok" and health["slots"] == 8
    status, _, info = server.request("GET", "/v1/model")
    assert status == 200
    assert info["vocab_size"] == loaded.tokenizer.vocab_size and info["max_length"] == loaded.cfg.model.max_seq_len
    assert info["default_sampler"] == "ancestral" and set(info["samplers"]) >= {"ancestral", "greedy_tail", "psi"}
    assert info["samplers"]["ancestral"]["default_steps"] >= 1
    assert info["limits"] == {"max_steps": MAX_STEPS, "max_samples": 4, "queue": 8}
    status, _, page = server.request("GET", "/")
    assert status == 200 and "Generate" in page and "/static/app.js" in page
    assert "http" not in page.replace("http-equiv", "")  # no CDN: everything from this server
    for asset in ("app.js", "style.css"):
        status, _, text = server.request("GET", f"/static/{asset}")
        assert status == 200 and len(text) > 100 and "://" not in text


def test_generate_equals_duo_sample_for_a_seed(server, tiny_runs, tmp_path, capsys):
    status, _, out = server.post({"prompt": PROMPT, "steps": 6, "n": 2, "seed": 5})
    assert status == 200, out
    assert out["nfe"] == 6 and out["n"] == 2 and out["sampler"] == "ancestral" and out["seconds"] > 0
    assert all(t.startswith(PROMPT) for t in out["texts"])
    jsonl = tmp_path / "s.jsonl"
    code = main(["sample", f"checkpoint={tiny_runs['duo']}", "steps=6", "num_samples=2", "seed=5",
                 f"prefix={PROMPT}", f"out={jsonl}"])
    capsys.readouterr()
    assert code == 0
    assert [json.loads(line)["text"] for line in jsonl.read_text().splitlines()] == out["texts"]
    # another seed, another text; the same seed again, the same text
    assert server.post({"prompt": PROMPT, "steps": 6, "n": 2, "seed": 6})[2]["texts"] != out["texts"]
    assert server.post({"prompt": PROMPT, "steps": 6, "n": 2, "seed": 5})[2]["texts"] == out["texts"]


def test_stream_states_are_the_denoising_states_and_end_with_the_final_text(server, loaded):
    from duo.evaluation import plan_sampling, sample
    from duo.generation import decode
    from duo.samplers import SamplingConfig

    events = server.stream({"prompt": PROMPT, "steps": 5, "n": 2, "seed": 3})
    states = [data for kind, data in events if kind == "state"]
    kind, done = events[-1]
    assert kind == "done" and [k for k, _ in events[:-1]] == ["state"] * len(states)
    assert [s["step"] for s in states] == list(range(6))  # the prior, 4 inputs, the final state
    assert states[-1]["texts"] == done["texts"]
    assert done["texts"] == server.post({"prompt": PROMPT, "steps": 5, "n": 2, "seed": 3})[2]["texts"]
    gen = sample(loaded, plan_sampling(loaded, SamplingConfig(steps=5, num_samples=2, seed=3, prefix=PROMPT)),
                 return_intermediates=True)
    prefix_len = len(loaded.tokenizer.encode(PROMPT))
    tok = loaded.tokenizer
    assert all("texts" not in s for s in states[:-1])  # the texts come once, with the final state
    for k, (state, ids) in enumerate(zip(states, gen.intermediates)):
        assert state["pieces"] == [[tok.decode([t], skip_special_tokens=True) if t < tok.vocab_size else "\u2591" for t in row]
                                   for row in ids.tolist()]
        if k == len(states) - 1:
            assert state["texts"] == decode(tok, ids)
        previous = gen.intermediates[k - 1] if k else ids
        for row in range(2):
            assert state["changed"][row] == (ids[row] != previous[row]).nonzero().flatten().tolist()
            assert all(pos >= prefix_len for pos in state["changed"][row])  # the prompt never changes
        assert state["num_changed"] == sum(map(len, state["changed"]))
        assert len(state["pieces"][0]) == ids.shape[1]


def test_infill_template_keeps_its_text_in_place(server, loaded):
    status, _, out = server.post({"prompt": "The ____ learns", "fill": 3, "suffix": "tokens.", "steps": 4})
    assert status == 200, out
    tok = loaded.tokenizer
    head, tail = tok.encode("The "), tok.encode(" learns")
    events = server.stream({"prompt": "The ____ learns", "fill": 3, "suffix": "tokens.", "steps": 4})
    for _, state in events[:-1]:
        pieces = state["pieces"][0]
        assert pieces[:len(head)] == [tok.decode([i]) for i in head]
        assert pieces[len(head) + 3:len(head) + 3 + len(tail)] == [tok.decode([i]) for i in tail]
        assert "".join(pieces).endswith("tokens.")
    assert events[-1][1]["texts"] == out["texts"]


def test_identical_requests_run_as_one_batch_with_unchanged_results(server):
    alone = server.post({"prompt": PROMPT, "steps": 4, "n": 2, "seed": 11})[2]["texts"]
    other = server.post({"prompt": PROMPT, "steps": 4, "n": 2, "seed": 12})[2]["texts"]
    with ThreadPoolExecutor(4) as pool:
        busy = pool.submit(server.post, {"steps": 600, "seed": 1})  # holds the worker meanwhile
        deadline = time.time() + 30
        while True:  # until it runs (admitted, nothing queued), however loaded the machine
            health = server.request("GET", "/healthz")[2]
            if health["active"] >= 1 and health["queued"] == 0:
                break
            assert time.time() < deadline, health
            time.sleep(0.01)
        same = [pool.submit(server.post, {"prompt": PROMPT, "steps": 4, "n": 2, "seed": 11}) for _ in range(2)]
        diff = pool.submit(server.post, {"prompt": PROMPT, "steps": 4, "n": 2, "seed": 12})
        results = [f.result()[2] for f in same]
        assert busy.result()[0] == 200
        assert diff.result()[2]["texts"] == other and diff.result()[2]["batched"] == 1
    assert [r["texts"] for r in results] == [alone, alone]
    assert [r["batched"] for r in results] == [2, 2]


def test_an_autoregressive_checkpoint_is_served_too(loaded_runs, tiny_runs, tmp_path, capsys):
    s = Server(create_app(ServeConfig(), loaded=loaded_runs["ar"]))
    try:
        assert list(s.request("GET", "/v1/model")[2]["samplers"]) == ["ar"]
        status, _, out = s.post({"prompt": PROMPT, "n": 2, "seed": 4})
        assert status == 200 and out["sampler"] == "ar" and all(t.startswith(PROMPT) for t in out["texts"])
        jsonl = tmp_path / "ar.jsonl"
        assert main(["sample", f"checkpoint={tiny_runs['ar']}", "num_samples=2", "seed=4", f"prefix={PROMPT}",
                     f"out={jsonl}"]) == 0
        capsys.readouterr()
        assert [json.loads(line)["text"] for line in jsonl.read_text().splitlines()] == out["texts"]
        events = s.stream({"prompt": PROMPT, "n": 2, "seed": 4})
        # one state per network call (the growing context) and the final one
        assert [k for k, _ in events] == ["state"] * (out["nfe"] + 1) + ["done"]
        assert events[-2][1]["texts"] == out["texts"]
        for body, field in (({"suffix": "end"}, "suffix"), ({"prompt": "a ____ b"}, "prompt")):
            status, _, err = s.post(body)
            assert status == 400 and err["field"] == field
    finally:
        s.stop()


@pytest.fixture(scope="module")
def built(loaded, tiny_corpus, duo_cache, tmp_path_factory):
    """Untrained tiny models of other processes (mdlm, sedd, d3pm), with the duo run's tokenizer."""
    from duo.config import build_config
    from duo.loading import LoadedModel
    from duo.methods.build import build_method

    from conftest import tiny_overrides

    def build(algo: str, *extra: str):
        root = tmp_path_factory.mktemp(f"serve-{algo}")
        cfg = build_config(tiny_overrides(tiny_corpus, duo_cache, root, f"algo={algo}", *extra))
        backbone, method = build_method(cfg, loaded.tokenizer.vocab_size)
        return LoadedModel(cfg, method, backbone.eval(), loaded.tokenizer, root)

    return build


@pytest.mark.parametrize("algo,extra,sampler,default", [("mdlm", [], "mdlm", 1024), ("sedd", [], "sedd_analytic", 1024),
                                                        ("d3pm", ["algo.T=50"], "d3pm", 50)])
def test_a_masked_model_reports_and_limits_its_default_steps(built, algo, extra, sampler, default):
    """The sampler's default step count is the one it runs for the model (mask id, D3PM's
    T): /v1/model reports it and a request without steps above max_steps is refused."""
    s = Server(create_app(ServeConfig(max_steps=default - 1), loaded=built(algo, *extra)))
    try:
        info = s.request("GET", "/v1/model")[2]
        assert info["default_sampler"] == sampler and info["samplers"][sampler]["default_steps"] == default
        assert all(spec["default_steps"] is not None for spec in info["samplers"].values()), info["samplers"]
        status, _, err = s.post({"seed": 1})
        assert status == 400 and err["field"] == "steps" and "max_steps" in err["error"], err
        assert f"default of {default} steps" in err["error"]
        status, _, out = s.post({"steps": 3, "seed": 1})
        assert status == 200 and out["sampler"] == sampler and out["nfe"] == 3, out
    finally:
        s.stop()


class _Slow:
    """A method whose network calls each take ``delay`` seconds longer (results unchanged)."""

    def __init__(self, method, delay: float) -> None:
        self._method, self._delay = method, delay

    def __getattr__(self, name: str):
        attr = getattr(self._method, name)
        if name not in ("denoiser", "score", "next_token_logits", "decode"):
            return attr

        def slow(*args):
            time.sleep(self._delay)
            return attr(*args)
        return slow


def test_an_autoregressive_stream_shows_the_growing_text_and_stops_when_its_client_leaves(loaded_runs):
    """Every network entry point is watched: the AR sampler's cached ``decode`` streams its
    context so far (the rest blank), and a stream whose client left stops at the next call."""
    import dataclasses

    ar = loaded_runs["ar"]
    tok = ar.tokenizer
    s = Server(create_app(ServeConfig(queue=1), loaded=ar))
    try:
        done = s.post({"prompt": PROMPT, "n": 2, "seed": 4})[2]
        events = s.stream({"prompt": PROMPT, "n": 2, "seed": 4})
        states = [data for kind, data in events if kind == "state"]
        start = 1 + len(tok.encode(PROMPT))  # BOS and the prompt: the first call's context
        final = states[-1]["pieces"]
        assert len(states) == done["nfe"] + 1 == ar.cfg.data.seq_len - start + 1
        for k, state in enumerate(states):
            for row in range(2):
                pieces = state["pieces"][row]
                assert len(pieces) == ar.cfg.data.seq_len
                assert pieces[:start + k] == final[row][:start + k] and set(pieces[start + k:]) <= {"\u2591"}
                assert state["changed"][row] == ([start + k - 1] if k else [])
    finally:
        s.stop()
    slow = dataclasses.replace(ar, method=_Slow(ar.method, 0.1))
    s = Server(create_app(ServeConfig(queue=1), loaded=slow))
    try:
        conn, resp = s.open_stream({"n": 1, "seed": 2})
        assert next(read_events(resp))[0] == "state"
        conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-stream
        conn.close()
        assert wait_idle(s)["active"] == 0  # the slot is free at once; the run stops at its next call
        deadline = time.time() + 10
        while (health := s.request("GET", "/healthz")[2])["aborted"] == 0 and time.time() < deadline:
            time.sleep(0.05)
        assert health["aborted"] == 1 and health["served"] == 0 and health["batches"] == 0, health
    finally:
        s.stop()


@pytest.mark.parametrize("algo,sampler", [("sedd", "sedd_analytic"), ("mdlm", "mdlm")])
def test_a_masked_model_streams_its_states(built, algo, sampler):
    """A score model (SEDD: ``method.score``) streams a state per network call as a
    denoiser (MDLM) does, from all masks to the final text."""
    s = Server(create_app(ServeConfig(max_steps=MAX_STEPS), loaded=built(algo)))
    try:
        events = s.stream({"steps": 4, "n": 2, "seed": 1})
        states = [data for kind, data in events if kind == "state"]
        kind, done = events[-1]
        assert kind == "done" and done["sampler"] == sampler and len(states) == done["nfe"] + 1, done
        assert [st["step"] for st in states] == list(range(len(states)))
        assert set(states[0]["pieces"][0]) == {"\u2591"}  # the prior: every position masked
        assert states[-1]["texts"] == done["texts"]
    finally:
        s.stop()


# ------------------------------------------------------------------ bad input
BAD = [
    ({"sampler": "nope"}, "sampler", "unknown sampler"),
    ({"sampler": "mdlm"}, "sampler", "does not fit"),
    ({"steps": 0}, "steps", "steps=0"),
    ({"steps": MAX_STEPS + 1}, "steps", "max_steps"),
    ({"n": 0}, "n", "n=0"),
    ({"n": 5}, "n", "max_samples"),
    ({"seq_len": 999}, "seq_len", "seq_len=999"),
    ({"prompt": " ".join(["the model learns"] * 20)}, "prompt", "longer than"),
    ({"prompt": "the ____ model", "fill": 40}, "prompt", "template"),
    ({"steps": "4"}, "steps", "must be an integer"),
    ({"seed": 1.5}, "seed", "must be an integer"),
    ({"n": True}, "n", "must be an integer"),
    ({"prompt": 3}, "prompt", "must be a string"),
    ({"top_p": "x"}, "top_p", "must be a number"),
    ({"top_p": 1.5}, "top_p", "top_p=1.5"),
    ({"temperature": 0.7}, "temperature", "temperature"),
    ({"seed": None}, "seed", "must not be null"),
    ({"colour": "red"}, "colour", "unknown field"),
]


@pytest.mark.parametrize("body,field,words", BAD, ids=[f"{b[1]}:{b[2]}" for b in BAD])
def test_bad_input_gets_400_naming_the_field(server, body, field, words):
    for path in ("/v1/generate", "/v1/generate/stream"):
        status, _, out = server.post(body, path)
        assert status == 400, (path, out)
        assert out["field"] == field and words in out["error"] and field in out["error"], out
        assert "\n" not in out["error"] and "Traceback" not in out["error"]


@pytest.mark.parametrize("raw,words", [(b"{bad", "not valid JSON"), (b"[1, 2]", "JSON object"),
                                       (b"\xff\xfe", "not valid JSON")])
def test_malformed_body_gets_400(server, raw, words):
    status, _, out = server.post(raw)
    assert status == 400 and words in out["error"]
    assert wait_idle(server)["active"] == 0


# ------------------------------------------------------------------ queue and disconnects
def test_full_queue_gets_503_and_a_disconnect_frees_the_slot(small_server):
    before = small_server.request("GET", "/healthz")[2]
    conn, resp = small_server.open_stream({"steps": MAX_STEPS, "seed": 2})
    events = read_events(resp)
    assert next(events)[0] == "state"  # running, and holding the only slot
    status, headers, out = small_server.post({"steps": 2})
    assert status == 503 and int(headers["Retry-After"]) >= 1 and "busy" in out["error"]
    status, _, _ = small_server.post({"steps": 2}, "/v1/generate/stream")
    assert status == 503
    conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-stream
    conn.close()
    health = wait_idle(small_server)
    assert health["active"] == 0 and health["queued"] == 0
    status, _, out = small_server.post({"steps": 2})
    assert status == 200, out
    health = small_server.request("GET", "/healthz")[2]
    assert health["aborted"] == before["aborted"] + 1  # the abandoned run stopped early
    assert health["rejected"] == before["rejected"] + 2


# ------------------------------------------------------------------ the command
def test_serve_command_errors_are_one_line(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)
    assert main(["serve", "checkpoint=x"]) == 2
    assert capsys.readouterr().err.strip() == "duo serve needs the serve extra: pip install 'duo-lm[serve]'"
    monkeypatch.undo()
    assert main(["serve", "queue=0", "checkpoint=x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("duo serve: error: queue=0") and "\n" not in err
    assert main(["serve"]) == 2
    assert "checkpoint=" in capsys.readouterr().err


# ------------------------------------------------------------------ the page in a browser
def _chrome():
    """A headless Chromium driver, or the reason there is none."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed (pip install selenium)"
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not browser or not driver_path:
        return None, "Chromium or chromedriver not found (apt-get install -y chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,1250"):
        options.add_argument(arg)
    try:
        return webdriver.Chrome(service=Service(driver_path), options=options), ""
    except Exception as err:  # a driver that cannot start here: say why
        return None, f"Chromium did not start: {str(err).splitlines()[0]}"


def test_page_generates_in_a_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver, reason = _chrome()
    if driver is None:
        print(f"skipping the browser test: {reason}")
        pytest.skip(reason)
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sampler option"))
        prompt = driver.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys(PROMPT)
        steps = driver.find_element(By.ID, "steps")
        steps.clear()
        steps.send_keys("24")
        n = driver.find_element(By.ID, "n")
        n.clear()
        n.send_keys("2")
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "final").get_attribute("data-done") == "true")
        finals = [p.text for p in driver.find_elements(By.CSS_SELECTOR, "#final p")]
        assert len(finals) == 2 and all(t.startswith(PROMPT) for t in finals)
        assert int(driver.find_element(By.ID, "final").get_attribute("data-states")) == 25
        shown = driver.find_elements(By.CSS_SELECTOR, "#samples .sample")
        assert len(shown) == 2 and all(s.text.startswith(PROMPT) for s in shown)
        assert driver.find_element(By.ID, "nfe").text == "24"
        # scrub back: an early state, where the prompt is already in place and tokens changed
        driver.execute_script("const s = document.getElementById('scrub'); s.value = 1;"
                              "s.dispatchEvent(new Event('input'));")
        assert driver.find_element(By.ID, "step").text == "1"
        assert driver.find_elements(By.CSS_SELECTOR, "#samples span.changed")
        assert all(s.text.startswith(PROMPT) for s in driver.find_elements(By.CSS_SELECTOR, "#samples .sample"))
        driver.execute_script("const s = document.getElementById('scrub'); s.value = 12;"
                              "s.dispatchEvent(new Event('input'));")
        shot = tmp_path / "serve.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("DUO_UPDATE_SCREENSHOTS"):  # refresh the README's picture
            shutil.copy(shot, ROOT / "docs" / "images" / "serve.png")
    finally:
        driver.quit()
