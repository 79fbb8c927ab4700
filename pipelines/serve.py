"""Serve a router bundle in Python: one base model, every adapter preloaded, the right one per request.

`Router.generate` routes one request and answers with its adapter; `Router.generate_batch` serves a mixed batch,
each row with its own adapter. Both decode with the one inference engine (`pipelines.inference.Engine`): one
adapter for a batch is a pointer switch (the weights are already in memory), a mixed batch runs in one forward
pass per token with PEFT's `adapter_names`. The HTTP endpoint over it is `pipelines/server.py` (`midtrain
serve`); `midtrain chat` is its client (`pipelines/chat_client.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.chat import DEFAULT_SYSTEM_PROMPT, load_tokenizer
from pipelines.codecs import Codec, codec_for
from pipelines.errors import BadInput
from pipelines.inference import Engine, activate_adapter, decode_reply, tuner_layers
from pipelines.models import resolve_model
from pipelines.router import BASE, Route, adapter_source, compose_request_text, load_bundle
from pipelines.schema import function_spec
from pipelines.thought import load_thought_schema


class Router:
    def __init__(self, router_dir: str | Path, thought_schema: str = "think-plan-reflect") -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.router_dir = Path(router_dir)
        self.requests, self.meta = load_bundle(self.router_dir)
        self.schema = load_thought_schema(thought_schema)
        self.sources = {
            name: adapter_source(self.router_dir, ref) for name, ref in self.requests.adapters.items()
        }
        self.tokenizer = serving_tokenizer(self.sources, self.meta.base_model)
        self.codec: Codec = codec_for(self.tokenizer)  # writes the prompts, reads the replies
        base = AutoModelForCausalLM.from_pretrained(resolve_model(self.meta.base_model), dtype=torch.float32)
        self.model = self._attach_adapters(base)
        self.model.eval()
        arrow = self.requests.method == "arrow"
        self._lora_layers = tuner_layers(self.model) if self.sources and not arrow else []
        loaded = {} if arrow else {path: name for name, path in self.sources.items()}
        self.engine = Engine.for_tokenizer(self.model, self.tokenizer, adapters=loaded)

    def _attach_adapters(self, base: Any) -> Any:
        from peft import PeftModel

        if not self.sources:
            return base
        if self.requests.method == "arrow":
            from peft import ArrowConfig, create_arrow_model

            arrow = self.meta.arrow or {}
            config = ArrowConfig(
                top_k=min(arrow.get("top_k", 2), len(self.sources)),
                router_temperature=arrow.get("router_temperature", 1.0),
            )
            return create_arrow_model(base, list(self.sources.values()), config)
        names = list(self.sources)
        model = PeftModel.from_pretrained(base, self.sources[names[0]], adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(self.sources[name], adapter_name=name)
        return model

    def route(self, text: str) -> Route:
        if self.requests.method == "arrow":
            return Route("arrow", 1.0, "arrow", False)
        return self.requests.route([text])[0]

    def _prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        return prompt_text(self.tokenizer, messages, tools)

    def generate(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        max_new_tokens: int = 256,
        route: Route | None = None,
    ) -> tuple[Route, str]:
        """Route on the conversation's user turns (or use `route`), then generate with that adapter alone."""
        route = route or self.route(route_text(messages, tools))
        return route, self.generate_batch([(messages, tools)], max_new_tokens, [route])[0][1]

    def generate_batch(
        self,
        requests: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]],
        max_new_tokens: int = 256,
        routes: list[Route] | None = None,
    ) -> list[tuple[Route, str]]:
        """Greedy replies for a batch whose rows may each use a different adapter (one forward pass per token);
        each reply ends at its end-of-turn token."""
        routes = routes or [self.route(route_text(m, t)) for m, t in requests]
        prompts = [
            self.tokenizer(self._prompt(m, t), add_special_tokens=False)["input_ids"] for m, t in requests
        ]
        adapters = [r.adapter if r.adapter in self.sources else None for r in routes]
        if self.requests.method == "arrow":
            adapters = [None] * len(requests)  # the Arrow model mixes its adapters per token by itself
        replies = self.engine(prompts, adapters, max_new_tokens)
        return [(r, decode_reply(self.tokenizer, ids)) for r, ids in zip(routes, replies, strict=True)]

    def switch(self, adapter: str) -> None:
        """Make one adapter active for plain `model(...)`/`generate` calls (single-request serving)."""
        if adapter == BASE or adapter not in self.sources:
            raise BadInput(f"unknown adapter {adapter!r} (have: {', '.join(self.sources)})")
        activate_adapter(self.model, self._lora_layers, adapter)


def serving_tokenizer(sources: dict[str, str], base_model: str) -> Any:
    """The first adapter's own tokenizer (it carries the chat template it was trained with), else the base's."""
    first = next(iter(sources.values()), None)
    has_tokenizer = first is not None and (Path(first) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(first if first is not None and has_tokenizer else base_model)
    tokenizer.padding_side = "left"
    return tokenizer


def prompt_text(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """The generation prompt for a conversation, written by the tokenizer's codec; a system turn is added when
    there is none, as in training."""
    if messages and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, *messages]
    return codec_for(tokenizer).render(tokenizer, messages, tools, add_generation_prompt=True)


def route_text(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """The router's input for a live conversation, built exactly as for the mix's traces in training."""
    users = [m["content"] for m in messages if m["role"] == "user" and isinstance(m["content"], str)]
    return compose_request_text(users, [function_spec(t).get("name", "") for t in tools or []])


def env_class(domain: str) -> Any:
    """A built-in domain's class, or the class of an env YAML file (MCP server, Python class)."""
    from pipelines.envs.spec import is_env_file, load_env
    from pipelines.tasks.domains import DOMAINS

    if is_env_file(domain):
        return load_env(domain)[1]
    if domain not in DOMAINS:
        raise BadInput(f"unknown environment {domain!r} (have: {', '.join(sorted(DOMAINS))})")
    return DOMAINS[domain][0]
