"""Tool environments at run time: what a rollout, a generated trace or a chat talks to.

A built-in domain's environment lives here (`calculator`, `filesystem`, `sqlite_db`, `calendar_todo`,
`docsearch`, `code_runner`, `api_pool`); its task sampler lives in `pipelines.tasks`, which also registers each
domain as (environment, sampler) in `pipelines.tasks.DOMAINS`. User environments come from an `env:` block
(`spec`): MCP servers (`mcp_env`), Python classes (`python_env`), wrapped by `external`. The contract is
`base.ToolEnv`.
"""
