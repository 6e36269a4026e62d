"""An auxiliary model behind an OpenAI-compatible endpoint (engine_type external) grades rollouts in `rft run`.

The endpoint is a small real HTTP server started here: it answers /v1/chat/completions as OpenAI's API does,
always with the same grade, and keeps every request it got, so the test can see what the job sent it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_run_support import clean_env, job_dict, metrics, run_cli, write_config


class GradingServer:
    """An OpenAI-compatible chat endpoint on loopback that grades every answer 7 out of 10."""

    def __init__(self, key: str = "sk-judge"):
        self.key = key
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": i, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "Fair. <score>7</score>"}}
                                     for i in range(int(body.get("n") or 1))],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def grading_server():
    server = GradingServer()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.slow
def test_math_rm_workflow_grades_with_a_judge_behind_an_openai_endpoint(tmp_path, tiny_model_dir, local_engine,
                                                                       grading_server):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="ext-judge", steps=1, batch=2, repeat=2,
                   model__enable_thinking=False)
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = "math_rm_workflow"
    cfg["explorer"]["auxiliary_models"] = [{
        "model_path": "gpt-judge", "engine_type": "external", "max_response_tokens": 9,
        "external_model_config": {"base_url_env": "JUDGE_URL", "api_key_env": "JUDGE_KEY", "model_name": "grader-1"}}]
    done = run_cli(write_config(tmp_path / "judge.yaml", cfg),
                   env=clean_env(JUDGE_URL=f"{grading_server.address}/v1", JUDGE_KEY=grading_server.key))
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = metrics(cfg)
    # every rollout graded by the endpoint: 7/10, never a parse error
    assert record["rollouts"] == 4 and record["critic/rewards/mean"] == pytest.approx(0.7)
    assert record["rollout/rm_score/mean"] == pytest.approx(0.7) and record["rollout/rm_parse_error/max"] == 0.0
    reqs = grading_server.requests
    assert len(reqs) == 4
    assert all(r["path"] == "/v1/chat/completions" and r["model"] == "grader-1" and r["max_tokens"] == 9
               and r["auth"] == f"Bearer {grading_server.key}" for r in reqs)
    # the judge takes model.enable_thinking, as Trinity's auxiliary models do, in vLLM's request form
    assert all(r["chat_template_kwargs"] == {"enable_thinking": False} for r in reqs)


def test_a_judge_endpoint_whose_address_is_not_set_stops_the_job_naming_the_variable(tmp_path, tiny_model_dir,
                                                                                     local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="ext-unset", steps=1)
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = "math_rm_workflow"
    cfg["explorer"]["auxiliary_models"] = [{
        "model_path": "gpt-judge", "engine_type": "external",
        "external_model_config": {"base_url_env": "NO_SUCH_JUDGE_URL", "model_name": "grader-1"}}]
    done = run_cli(write_config(tmp_path / "judge.yaml", cfg), timeout=120)
    assert done.returncode == 1
    assert "NO_SUCH_JUDGE_URL" in done.stderr and "explorer.auxiliary_models[0]" in done.stderr
