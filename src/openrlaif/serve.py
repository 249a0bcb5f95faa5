"""`rlaif serve`: a small OpenAI-compatible chat-completions server for a local HF model.

It lets the HTTP judge (and any OpenAI client) talk to the embedded model or a tiny test model on
loopback, with no network: ``GET /v1/models`` and ``POST /v1/chat/completions`` with ``logprobs`` /
``top_logprobs`` (any count up to the vocabulary, where OpenAI stops at 20) and vLLM's
``continue_final_message`` / ``add_generation_prompt`` to continue an assistant turn. Requests are
served one at a time (a CPU model gains nothing from interleaving them). For production judging use
vLLM or another engine; this server is for laptops, tests and demos.

``FaultPlan`` makes it misbehave on purpose — 429s, 500s, hangs past the client's timeout, broken
JSON, nonsense answers — so the client's retry and unscored paths are tested against real HTTP.
"""

import asyncio
import random
import threading
import time
import uuid
from dataclasses import dataclass

from openrlaif.models.loading import cut_at_stop

FAULT_KINDS = ("429", "500", "timeout", "malformed", "nonsense")


@dataclass
class FaultPlan:
    """Each request fails with probability ``rate``; the kind is drawn uniformly from ``kinds``."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    hang_s: float = 2.0  # how long a 'timeout' request hangs before answering 503
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
        self.rng = random.Random(self.seed)
        self.lock = threading.Lock()
        self.injected: dict[str, int] = {}

    def draw(self) -> str | None:
        with self.lock:
            if self.rng.random() >= self.rate:
                return None
            kind = self.rng.choice(self.kinds)
            self.injected[kind] = self.injected.get(kind, 0) + 1
            return kind


def complete(model, tokenizer, body: dict) -> dict:
    """One chat completion (the OpenAI response schema) from a local model."""
    import torch

    messages = body["messages"]
    continue_final = bool(body.get("continue_final_message", False))
    add_generation_prompt = bool(body.get("add_generation_prompt", not continue_final))
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         continue_final_message=continue_final)
    input_ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
    max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 256)
    temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)
    want_logprobs = bool(body.get("logprobs", False))
    top_k = min(int(body.get("top_logprobs") or 0), len(tokenizer)) if want_logprobs else 0
    eos = [t for t in {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)}
           if isinstance(t, int)]
    n = int(body.get("n") or 1)
    kwargs = dict(max_new_tokens=max_tokens, do_sample=temperature > 0, return_dict_in_generate=True,
                  output_logits=want_logprobs, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos or None,
                  num_return_sequences=n)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=float(body.get("top_p") or 1.0), top_k=0)
        if body.get("seed") is not None:
            torch.manual_seed(int(body["seed"]))
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    choices, completion_tokens = [], 0
    for index in range(n):
        row = out.sequences[index, input_ids.shape[1]:].tolist()
        new, ended = cut_at_stop(row, eos, keep_stop=True)  # later rows of a batch are padded
        completion_tokens += len(new)
        finish = "stop" if ended else "length"
        visible = new[:-1] if finish == "stop" else new
        choices.append({"index": index, "message": {"role": "assistant",
                                                   "content": tokenizer.decode(visible, skip_special_tokens=True)},
                        "logprobs": None, "finish_reason": finish})
    new, _ = cut_at_stop(out.sequences[0, input_ids.shape[1]:].tolist(), eos, keep_stop=True)
    logprobs = None
    if want_logprobs:
        entries = []
        for step, token_id in enumerate(new):  # the stop token too: its alternatives may hold the answer
            logp = torch.log_softmax(out.logits[step][0].float(), dim=-1)
            entry = {"token": tokenizer.decode([token_id]), "logprob": float(logp[token_id]),
                     "bytes": list(tokenizer.decode([token_id]).encode("utf-8")), "top_logprobs": []}
            if top_k:
                values, ids = logp.topk(top_k)
                entry["top_logprobs"] = [{"token": tokenizer.decode([i]), "logprob": float(v),
                                          "bytes": list(tokenizer.decode([i]).encode("utf-8"))}
                                         for v, i in zip(values.tolist(), ids.tolist())]
            entries.append(entry)
        logprobs = {"content": entries}
    choices[0]["logprobs"] = logprobs
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": choices,
        "usage": {"prompt_tokens": input_ids.shape[1], "completion_tokens": completion_tokens,
                  "total_tokens": input_ids.shape[1] + completion_tokens},
    }


def _error(status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


def create_app(model, tokenizer, model_name: str, *, api_key: str | None = None, faults: FaultPlan | None = None):
    """The FastAPI app serving ``model`` under the name ``model_name``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="OpenRLAIF model server", docs_url=None, redoc_url=None)
    model_lock = threading.Lock()
    app.state.stats = {"completions": 0}
    app.state.faults = faults
    served = {"model": model, "adapters": {}}  # LoRA adapters registered at run time (vLLM's endpoint)

    def authorized(request: Request) -> bool:
        return api_key is None or request.headers.get("authorization") == f"Bearer {api_key}"

    @app.get("/v1/models")
    async def models(request: Request):
        if not authorized(request):
            return _error(401, "invalid API key", "authentication_error")
        names = [model_name, *served["adapters"]]
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "openrlaif"} for name in names]}

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request):
        """vLLM's runtime LoRA endpoint: {lora_name, lora_path}; the adapter is then served as a model name."""
        if not authorized(request):
            return _error(401, "invalid API key", "authentication_error")
        try:
            body = await request.json()
            name, path = str(body["lora_name"]), str(body["lora_path"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "expected {lora_name, lora_path}")
        if name in served["adapters"]:
            return _error(400, f"The lora adapter '{name}' has already been loaded.")

        def load() -> None:
            from peft import PeftModel

            with model_lock:
                if not served["adapters"]:
                    served["model"] = PeftModel.from_pretrained(served["model"], path, adapter_name=name)
                else:
                    served["model"].load_adapter(path, adapter_name=name)
                served["model"].eval()
                served["adapters"][name] = path

        try:
            await run_in_threadpool(load)
        except Exception as err:
            return _error(400, f"cannot load the adapter at {path}: {type(err).__name__}: {err}")
        return Response(f"Success: LoRA adapter '{name}' added successfully.", media_type="text/plain")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if not authorized(request):
            return _error(401, "invalid API key", "authentication_error")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' must be a non-empty list")
        requested = body.get("model")
        if requested != model_name and requested not in served["adapters"]:
            return _error(404, f"model '{requested}' not found; this server has '{model_name}'"
                          + (f" and adapters {sorted(served['adapters'])}" if served["adapters"] else ""))
        n = body.get("n") or 1
        if not isinstance(n, int) or not 1 <= n <= 64:
            return _error(400, "'n' must be an integer from 1 to 64")
        if n > 1 and body.get("logprobs"):
            return _error(400, "logprobs are only returned with n=1")
        fault = faults.draw() if faults is not None else None
        if fault == "429":
            return _error(429, "rate limited (injected)", "rate_limit_error", headers={"Retry-After": "0.05"})
        if fault == "500":
            return _error(500, "internal error (injected)", "server_error")
        if fault == "timeout":
            await asyncio.sleep(faults.hang_s)
            return _error(503, "too slow (injected)", "server_error")
        if fault == "malformed":
            return Response(b'{"id": "chatcmpl-broken", "choices": [{"mess', media_type="application/json")

        def work() -> dict:
            with model_lock:
                current = served["model"]
                if not served["adapters"]:
                    return complete(current, tokenizer, body)
                if requested == model_name:
                    with current.disable_adapter():
                        return complete(current, tokenizer, body)
                current.set_adapter(requested)
                return complete(current, tokenizer, body)

        try:
            result = await run_in_threadpool(work)
        except Exception as err:  # a template or generation error is the request's fault, say so
            return _error(400, f"{type(err).__name__}: {err}")
        app.state.stats["completions"] += 1
        if fault == "nonsense":
            result["choices"][0]["message"]["content"] = "\u2603 lorem ipsum"
            result["choices"][0]["logprobs"] = None
        return JSONResponse(result)

    return app


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread (``with ServerThread(app) as url: ...``).

    Port 0 picks a free port; ``url`` is the OpenAI base URL (``http://127.0.0.1:PORT/v1``).
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.host = host

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the model server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}/v1"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
