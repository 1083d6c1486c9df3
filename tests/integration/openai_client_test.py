#!/usr/bin/env python3
"""The official `openai` Python client (and raw HTTP) against `specd serve --http-port`.

Starts the daemon on the embedded demo pair (a Qwen3.5-architecture model with Qwen3.5's chat
template, trained on Python source), then checks: /v1/models and /health; chat completions with
reasoning (thinking on: the text goes to reasoning_content) and without (enable_thinking false),
streamed and not, the stream's concatenation equal to the non-streamed answer; include_usage and
the speculative statistics; /v1/completions; tools in the request; OpenAI's error format for bad
JSON, unknown fields, wrong types, n > 1, unknown models and paths, a wrong API key and a body over
the limit, while 64 other streams run untouched; a client that disconnects mid-stream frees its
slot (num_requests_running back to 0, the request counted as CANCELLED); SSE framing on the wire.

scripts/setup.sh installs `openai` (PyPI). Usage: openai_client_test.py SPECD_BIN
"""
import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

try:
    import openai
except ImportError as e:
    print(f"FAILED: the python package `openai` is not installed ({e}); scripts/setup.sh installs it")
    sys.exit(1)

KEY = "test-key-0123456789abcdef"


def check(cond, what):
    if not cond:  # explicit, so `python -O` cannot strip the checks
        raise AssertionError(what)


def metric(mport, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


def raw_post(port, path, body, key=KEY, content_type="application/json"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    c.request("POST", path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Content-Type"), data


def expect_error(port, path, body, status, fragment, key=KEY):
    code, ctype, data = raw_post(port, path, body, key=key)
    check(code == status, (path, body[:80], code, data[:300]))
    check(ctype.startswith("application/json"), ctype)
    err = json.loads(data)["error"]
    check(isinstance(err["message"], str) and fragment in err["message"], (fragment, err))
    check(err["code"] is None and isinstance(err["type"], str) and err["param"] is None, err)


def reasoning_of(obj):
    return (obj.model_extra or {}).get("reasoning_content")


def stream_chat(client, **kw):
    reasoning, content, chunks, usage, finish = "", "", 0, None, None
    for ch in client.chat.completions.create(stream=True, **kw):
        chunks += 1
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            reasoning += reasoning_of(c.delta) or ""
            content += c.delta.content or ""
            finish = c.finish_reason or finish
    return reasoning, content, chunks, usage, finish


def start(specd, tmp, name, args):
    port_file = os.path.join(tmp, name + ".ports.json")
    log = open(os.path.join(tmp, name + ".log"), "w")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    srv = subprocess.Popen([specd, "serve", "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
                            "--port-file", port_file] + args, stdout=log, stderr=log, env=env)
    for _ in range(6000):
        if os.path.exists(port_file) or srv.poll() is not None:
            break
        time.sleep(0.01)
    check(os.path.exists(port_file), "server did not start: " + open(log.name).read())
    return srv, json.load(open(port_file))["http_port"], log


def saturation_and_drain(specd, tmp):
    """One slot, no queue: a second request is 429. SIGTERM: /health 503, new requests 503, the
    running stream still ends with its finish_reason and [DONE], exit 0."""
    srv, port, log = start(specd, tmp, "small", ["--metrics-port", "0", "--max-batch", "1", "--max-queue", "0",
                                                 "--grace-seconds", "120"])
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"prompt": "def main():\n", "max_tokens": 600, "ignore_eos": True, "stream": True}),
            headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        check(resp.status == 200, resp.status)
        first = resp.readline()
        check(first.startswith(b"data: {"), first)  # running: it holds the only slot
        expect_error(port, "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 4}), 429, "", key=None)
        srv.send_signal(signal.SIGTERM)
        deadline, status = time.time() + 10, 200
        while time.time() < deadline and status == 200:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status
            except urllib.error.HTTPError as e:
                status = e.code
        check(status == 503, f"/health while draining: {status}")
        expect_error(port, "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 4}), 503, "", key=None)
        rest = resp.read().decode()
        conn.close()
        events = rest.split("\n\n")
        check(events[-2] == "data: [DONE]", events[-3:])
        check('"finish_reason":"length"' in events[-3], events[-3])
        check(srv.wait(timeout=60) == 0, "exit status on SIGTERM")
    finally:
        if srv.poll() is None:
            srv.kill()
        log.close()


def main():
    specd = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="specd-openai-")
    key_file = os.path.join(tmp, "key")
    open(key_file, "w").write(KEY + "\n")
    port_file = os.path.join(tmp, "ports.json")
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        mport = sk.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    log = open(os.path.join(tmp, "server.log"), "w")
    srv = subprocess.Popen([specd, "serve", "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
                            "--metrics-port", str(mport), "--port-file", port_file, "--api-key-file", key_file,
                            "--max-message-bytes", "65536", "--max-batch", "16"],
                           stdout=log, stderr=log, env=env)
    try:
        for _ in range(6000):
            if os.path.exists(port_file) or srv.poll() is not None:
                break
            time.sleep(0.01)
        check(os.path.exists(port_file), "server did not start: " + open(log.name).read())
        port = json.load(open(port_file))["http_port"]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=2, timeout=120)  # the default: a pooled connection the server closed as idle is retried

        # ---- models, health ----
        models = client.models.list()
        check([m.id for m in models.data] == ["specd-demo"], models)
        model = models.data[0].id
        check(client.models.retrieve(model).id == model, "models.retrieve")
        try:
            client.models.retrieve("gpt-4")
            raise AssertionError("an unknown model was found")
        except openai.NotFoundError:
            pass
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        check(health.status == 200, health.status)

        # ---- chat, thinking on (default): the prompt ends in "<think>\n", the text is reasoning ----
        msgs = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0,
                                           extra_body={"ignore_eos": True})
        choice = r.choices[0]
        check(choice.finish_reason == "length", choice)
        check(r.usage.completion_tokens == 24 and r.usage.prompt_tokens > 10, r.usage)
        check(r.usage.total_tokens == r.usage.prompt_tokens + 24, r.usage)
        spec = r.usage.model_extra["speculative"]
        check(spec["draft_tokens"] > 0 and 0 <= spec["acceptance_rate"] <= 1, spec)
        thought = reasoning_of(choice.message)
        check(thought, ("thinking on: the completion is reasoning", choice.message))
        check(choice.message.role == "assistant", choice.message)

        # The same request streamed: the deltas add up to the same answer, usage comes last.
        sr, sc, chunks, usage, finish = stream_chat(client, model=model, messages=msgs, max_tokens=24, temperature=0,
                                                    stream_options={"include_usage": True},
                                                    extra_body={"ignore_eos": True})
        check((sr, sc) == (thought, choice.message.content or ""), ((sr, sc), (thought, choice.message.content)))
        check(chunks >= 3 and finish == "length", (chunks, finish))
        check(usage is not None and usage.completion_tokens == 24, usage)

        # ---- thinking off: an empty think block is in the prompt, the text is content ----
        off = client.chat.completions.create(model=model, messages=msgs, max_tokens=16, temperature=0,
                                             extra_body={"ignore_eos": True,
                                                         "chat_template_kwargs": {"enable_thinking": False}})
        check(off.choices[0].message.content and not reasoning_of(off.choices[0].message), off.choices[0].message)
        check(off.usage.prompt_tokens > r.usage.prompt_tokens, "the empty think block is part of the prompt")

        # ---- tools in the request (rendered into the system turn): longer prompt, still served ----
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                   "parameters": {"type": "object", "properties": {
                                                       "city": {"type": "string"}}, "required": ["city"]}}}]
        tr = client.chat.completions.create(model=model, messages=msgs, tools=tools, max_tokens=8, temperature=0)
        check(tr.usage.prompt_tokens > r.usage.prompt_tokens + 50, (tr.usage, r.usage))
        tn = client.chat.completions.create(model=model, messages=msgs, tools=tools, tool_choice="none", max_tokens=8,
                                            temperature=0)
        check(tn.usage.prompt_tokens == r.usage.prompt_tokens, "tool_choice none: the tools are not rendered")
        # A conversation with an earlier tool call and its result renders and runs.
        hist = msgs + [{"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"t\": 3}"}]
        hr = client.chat.completions.create(model=model, messages=hist, tools=tools, max_tokens=8, temperature=0)
        check(hr.choices[0].finish_reason in ("length", "stop"), hr)

        # ---- completions ----
        c = client.completions.create(model=model, prompt="def main():\n", max_tokens=16, temperature=0,
                                      extra_body={"ignore_eos": True})
        check(c.choices[0].text and c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 16, c)
        streamed = "".join(ch.choices[0].text for ch in client.completions.create(
            model=model, prompt="def main():\n", max_tokens=16, temperature=0, stream=True,
            extra_body={"ignore_eos": True}) if ch.choices)
        check(streamed == c.choices[0].text, (streamed, c.choices[0].text))

        # ---- SSE framing with curl (scripts/setup.sh installs it) ----
        curl = shutil.which("curl")
        check(curl is not None, "curl is not installed (scripts/setup.sh installs it)")
        out = subprocess.run([curl, "-sSN", "--fail-with-body", f"http://127.0.0.1:{port}/v1/chat/completions",
                              "-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json",
                              "-d", json.dumps({"messages": msgs, "max_tokens": 12, "stream": True, "ignore_eos": True,
                                                "stream_options": {"include_usage": True}})],
                             capture_output=True, text=True, timeout=60)
        check(out.returncode == 0, (out.returncode, out.stderr, out.stdout[:300]))
        frames = out.stdout.split("\n\n")
        check(frames[-1] == "" and frames[-2] == "data: [DONE]", frames[-3:])
        chunks = [json.loads(f[len("data: "):]) for f in frames[:-2]]
        check(all(f.startswith("data: ") for f in frames[:-2]), frames)
        check(chunks[0]["choices"][0]["delta"]["role"] == "assistant", chunks[0])
        check(chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12, chunks[-1])
        check(chunks[-2]["choices"][0]["finish_reason"] == "length", chunks[-2])
        check(len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks),
              "one id, chunk objects")
        bad = subprocess.run([curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                              f"http://127.0.0.1:{port}/v1/chat/completions", "-d", "{}"],
                             capture_output=True, text=True, timeout=30)
        check(bad.stdout == "401", bad.stdout)

        # ---- SSE framing on the wire (raw HTTP) ----
        code, ctype, data = raw_post(port, "/v1/completions", json.dumps(
            {"prompt": "x = 1\n", "max_tokens": 8, "stream": True, "ignore_eos": True}))
        check(code == 200 and ctype.startswith("text/event-stream"), (code, ctype))
        events = data.decode().split("\n\n")
        check(events[-1] == "" and events[-2] == "data: [DONE]", events[-3:])
        for e in events[:-2]:
            check(e.startswith("data: {"), e)
            json.loads(e[len("data: "):])

        # ---- errors, while 64 streams run ----
        def one_stream(i):
            return stream_chat(client, model=model, messages=[{"role": "user", "content": f"x{i % 4} ="}],
                               max_tokens=32, temperature=0, extra_body={"ignore_eos": True})

        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            futures = [pool.submit(one_stream, i) for i in range(64)]
            time.sleep(0.5)
            expect_error(port, "/v1/chat/completions", b"{not json", 400, "not valid JSON")
            expect_error(port, "/v1/chat/completions", json.dumps({"messages": msgs, "bogus": 1}), 400, "bogus")
            expect_error(port, "/v1/chat/completions", json.dumps({"messages": msgs, "max_tokens": "ten"}), 400,
                         "max_tokens")
            expect_error(port, "/v1/chat/completions", json.dumps({"messages": "hi"}), 400, "messages")
            expect_error(port, "/v1/chat/completions", json.dumps({"messages": msgs, "n": 2}), 400, "'n'")
            expect_error(port, "/v1/chat/completions", json.dumps({"messages": msgs, "temperature": -1}), 400,
                         "temperature")
            expect_error(port, "/v1/chat/completions", json.dumps({"model": "gpt-4", "messages": msgs}), 404, "gpt-4")
            expect_error(port, "/v1/completions", json.dumps({"prompt": [1, 2, 999999]}), 400, "vocabulary")
            expect_error(port, "/v1/chat/completions", json.dumps({"messages": msgs}), 401, "API key", key="wrong")
            expect_error(port, "/v1/nothing", b"{}", 404, "/v1/nothing")
            expect_error(port, "/v1/completions", json.dumps({"prompt": "a" * 70000}), 413, "too large")
            expect_error(port, "/v1/completions", '{"prompt": ' + "[" * 20000 + "]" * 20000 + "}", 400, "deeper")
            expect_error(port, "/v1/chat/completions", json.dumps({"messages": msgs, "tools": [{"type": 5}]}), 400,
                         "tools[0]")
            # A chunked body has no length to check against the limit: refused before it is read.
            cc = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            cc.request("POST", "/v1/completions", body=iter([b'{"prompt": "x"}']), encode_chunked=True,
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json",
                                "Transfer-Encoding": "chunked"})
            cr = cc.getresponse()
            check(cr.status == 411 and "Content-Length" in json.loads(cr.read())["error"]["message"], cr.status)
            cc.close()
            results = [f.result(timeout=300) for f in futures]
        for i, (sr, sc, chunks, usage, finish) in enumerate(results):
            check(finish == "length" and sr, (i, finish, sr[:40]))
        for i in range(4):  # the same prompt alone gives the same text: batch composition changes nothing
            solo = stream_chat(client, model=model, messages=[{"role": "user", "content": f"x{i} ="}], max_tokens=32,
                               temperature=0, extra_body={"ignore_eos": True})
            for j in range(i, 64, 4):
                check(results[j][0] == solo[0], (j, results[j][0], solo[0]))

        # ---- a client that leaves frees its slot: mid-stream, or waiting for a one-body answer ----
        for stream in (True, False):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/v1/chat/completions", body=json.dumps(
                {"messages": msgs, "max_tokens": 3000, "ignore_eos": True, "stream": stream}),
                headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            deadline = time.time() + 10
            while time.time() < deadline and metric(mport, "specd:num_requests_running") != 1:
                time.sleep(0.05)
            check(metric(mport, "specd:num_requests_running") == 1, ("the request is running", stream))
            conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()
            deadline = time.time() + 10
            while time.time() < deadline and metric(mport, "specd:num_requests_running") != 0:
                time.sleep(0.05)
            check(metric(mport, "specd:num_requests_running") == 0, ("the slot was not freed", stream))

        # ---- a client that leaves mid-stream frees its slot within a step ----
        cancelled_before = metric(mport, "specd:request_failure_total") or 0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(
            {"messages": msgs, "max_tokens": 3000, "ignore_eos": True, "stream": True}),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        check(resp.status == 200, resp.status)
        resp.fp.readline()  # the first event has arrived: the request is running
        time.sleep(0.2)
        check(metric(mport, "specd:num_requests_running") == 1, "the stream is running")
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        deadline = time.time() + 10
        while time.time() < deadline and metric(mport, "specd:num_requests_running") != 0:
            time.sleep(0.05)
        check(metric(mport, "specd:num_requests_running") == 0, "the slot was not freed")
        check((metric(mport, "specd:request_failure_total") or 0) > cancelled_before, "not counted")
        check(srv.poll() is None, "the server died")

        # ---- drain: /health 503 after SIGTERM, exit 0 ----
        srv.terminate()
        check(srv.wait(timeout=60) == 0, "exit status on SIGTERM")
    finally:
        if srv.poll() is None:
            srv.kill()
        log.close()
    saturation_and_drain(specd, tmp)
    print("openai client test: PASS")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAILED:", e)
        sys.exit(1)
