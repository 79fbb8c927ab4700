"""Tasks: what the tool environments are asked to do, and how a solved one is checked.

- `records`: the Task record (request, setup, reference solution, answer, mistakes);
- one sampler module per built-in domain (`calculator`, `filesystem`, …), with `building` shared among them;
- `sampling`: tasks for RL and held-out evaluation, drawn from the samplers (and irrelevant variants);
- `task_file`: user tasks from JSONL, with their judges;
- `generate`: the procedural teacher, which solves sampled tasks into verified traces; `llm_teacher`: an
  LLM teacher over any environment through an OpenAI-compatible endpoint.

`domains.DOMAINS` registers each built-in domain as (environment class, task sampler), so the generator, RL
and eval find every domain in one place.
"""
