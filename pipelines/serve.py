"""Serve a router bundle in Python: one base model, every adapter preloaded, the right one per request.

`Router.generate` routes one request and switches to its adapter (cheap: the weights are already in memory,
see `Router.switch`); `Router.generate_batch` serves a mixed batch in one forward pass with PEFT's `adapter_names`, each row
with its own adapter. The HTTP endpoint over it is `pipelines/server.py` (`midtrain serve`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.chat import DEFAULT_SYSTEM_PROMPT, load_tokenizer
from pipelines.errors import BadInput
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
        self.tokenizer = serving_tokenizer(self.sources, self.meta["base_model"])
        base = AutoModelForCausalLM.from_pretrained(
            resolve_model(self.meta["base_model"]), dtype=torch.float32
        )
        self.model = self._attach_adapters(base)
        self.model.eval()
        self._lora_layers = (
            tuner_layers(self.model) if self.sources and self.requests.method != "arrow" else []
        )

    def _attach_adapters(self, base: Any) -> Any:
        from peft import PeftModel

        if not self.sources:
            return base
        if self.requests.method == "arrow":
            from peft import ArrowConfig, create_arrow_model

            arrow = self.meta.get("arrow", {})
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
        import contextlib

        import torch

        route = route or self.route(route_text(messages, tools))
        if not self.sources or self.requests.method == "arrow":
            return route, self.generate_batch([(messages, tools)], max_new_tokens, [route])[0][1]
        use_adapter = route.adapter in self.sources
        if use_adapter:
            self.switch(route.adapter)
        inputs = self.tokenizer(
            [self._prompt(messages, tools)], return_tensors="pt", add_special_tokens=False
        )
        base_only = contextlib.nullcontext() if use_adapter else self.model.disable_adapter()
        with torch.no_grad(), base_only:
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        text = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=False)
        return route, _strip_padding(text, self.tokenizer)

    def generate_batch(
        self,
        requests: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]],
        max_new_tokens: int = 256,
        routes: list[Route] | None = None,
    ) -> list[tuple[Route, str]]:
        """Greedy generation for a batch whose rows may each use a different adapter (one forward pass)."""
        import torch

        routes = routes or [self.route(route_text(m, t)) for m, t in requests]
        prompts = [self._prompt(m, t) for m, t in requests]
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if self.sources and self.requests.method != "arrow":
            kwargs["adapter_names"] = [r.adapter if r.adapter in self.sources else BASE for r in routes]
        with torch.no_grad():
            out = self.model.generate(**inputs, **kwargs)
        texts = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=False)
        return [(r, _strip_padding(t, self.tokenizer)) for r, t in zip(routes, texts, strict=True)]

    def switch(self, adapter: str) -> None:
        """Make one adapter active for plain `model(...)`/`generate` calls (single-request serving)."""
        if adapter == BASE or adapter not in self.sources:
            raise BadInput(f"unknown adapter {adapter!r} (have: {', '.join(self.sources)})")
        activate_adapter(self.model, self._lora_layers, adapter)


def serving_tokenizer(sources: dict[str, str], base_model: str) -> Any:
    """The first adapter's own tokenizer (it carries the chat template it was trained with), else the base's."""
    first = next(iter(sources.values()), None)
    has_tokenizer = first is not None and (Path(first) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(first if has_tokenizer else base_model)
    tokenizer.padding_side = "left"
    return tokenizer


def prompt_text(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """The generation prompt for a conversation; a system turn is added when there is none, as in training."""
    if messages and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, *messages]
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)


def tuner_layers(model: Any) -> list[Any]:
    """The PEFT layers (one per adapted module) whose active adapter a switch repoints."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in model.modules() if isinstance(module, BaseTunerLayer)]


def activate_adapter(model: Any, layers: list[Any], adapter: str) -> None:
    """Switch a frozen `PeftModel` to `adapter`: repoint each LoRA layer's active adapter, nothing else.

    PEFT's `set_adapter` also walks every module of the model and re-sets `requires_grad` on every adapter
    weight, which made a switch cost ~10 ms on the 30-layer embedded model. Serving never trains, so the
    pointer is all that changes; the state left is the same as `set_adapter`'s (tests/test_router.py).
    """
    for layer in layers:
        layer._active_adapter = [adapter]
    model.active_adapter = adapter  # PeftModel and its LoraModel each keep their own record
    model.base_model.active_adapter = adapter


def route_text(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """The router's input for a live conversation, built exactly as for the mix's traces in training."""
    users = [m["content"] for m in messages if m["role"] == "user" and isinstance(m["content"], str)]
    return compose_request_text(users, [function_spec(t).get("name", "") for t in tools or []])


def _strip_padding(text: str, tokenizer: Any) -> str:
    text = text.replace(tokenizer.pad_token or "", "") if tokenizer.pad_token != tokenizer.eos_token else text
    return text.split(tokenizer.eos_token, 1)[0] if tokenizer.eos_token else text


def env_class(domain: str) -> Any:
    from pipelines.envs import DOMAINS

    if domain not in DOMAINS:
        raise BadInput(f"unknown environment {domain!r} (have: {', '.join(sorted(DOMAINS))})")
    return DOMAINS[domain][0]
