"""The LLM teacher against a real OpenAI-compatible server (`transformers serve`, tests/openai_server.py), over
a Python environment and the MCP fixture; its verification on right and wrong traces; the response cache;
and a `type: teacher` source through `data build` and an offline `data verify`.

The served model is the 2-layer random test model, so its episodes are rejects: the tests check that every
episode ends as a trace or a reject with a reason, that the cache replays them exactly, and that the verifier
accepts what is right and names what is wrong, on traces written out here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.envs.spec import McpEnvSpec, PythonEnvSpec
from pipelines.errors import BadInput
from pipelines.schema import Message, ThinkingSection, ToolCall, Trace
from pipelines.tasks.llm_teacher import (
    Rejected,
    TeacherOffline,
    TeacherSettings,
    _json_object,
    check_format,
    check_replay,
    offline_teacher,
    teacher_traces,
    verify_proposal,
)
from pipelines.tasks.task_file import load_task_file
from pipelines.thought import load_thought_schema
from tests.openai_server import serve

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_thought_schema("think-plan-reflect")
PY_SHOP = PythonEnvSpec.model_validate(
    {
        "type": "python",
        "class": "tests.fixtures.python_shop:Shop",
        "name": "pyshop",
        "kwargs": {"currency": "EUR"},
    }
)
ROWS = [
    {"id": "py-1", "prompt": "Put two apples in my cart; what is the total?", "answer": "1.0",
     "expected_calls": [{"name": "add_to_cart", "arguments": {"product_id": "apple", "quantity": 2}}],
     "verifier": "tests.fixtures.python_shop:total_is_one"},
    {"id": "py-2", "prompt": "Add a mug.", "expected_calls": [{"name": "add_to_cart", "arguments": {"product_id": "mug"}}]},
    {"id": "py-3", "prompt": "Add a kettle.", "expected_calls": [{"name": "add_to_cart", "arguments": {"product_id": "kettle"}}]},
    {"id": "py-bad", "prompt": "No judge here."},
    {"id": "py-held", "prompt": "Add one apple, what is the total?", "answer": "0.5", "split": "heldout"},
]  # fmt: skip


def tasks_file(tmp_path: Path, rows: list[dict] = ROWS) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    return path


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path):
    with serve(tiny_model_dir) as url:
        yield url, str(tiny_model_dir)  # transformers serve names the model by its folder


def settings(server: tuple[str, str], **extra) -> TeacherSettings:
    url, model = server
    fields = {"temperature": 0.8, "max_tokens": 24, "max_turns": 2, "concurrency": 2, **extra}
    return TeacherSettings(base_url=url, model=model, **fields)


# -- task files ------------------------------------------------------------------------------------------------
def test_task_file_rows_are_checked_and_rejected_with_file_line_and_reason(tmp_path: Path) -> None:
    path = tasks_file(tmp_path)
    rows = [*ROWS, {"id": "py-1", "prompt": "again", "answer": "x"},
            {"id": "py-tools", "prompt": "x", "answer": "x", "tools": ["fly"]},
            {"id": "py-call", "prompt": "x", "expected_calls": [{"get_cart": "oops"}]},
            {"id": "py-leak", "prompt": "Add one apple, what is the total?", "answer": "0.5"}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    task_set = load_task_file(path, PY_SHOP)
    assert [t.task_id for t in task_set.train] == ["py-1", "py-2", "py-3"]
    assert [t.task_id for t in task_set.heldout] == ["py-held"]
    reasons = {(r["line"], r["reason"]) for r in task_set.rejects}
    assert reasons == {(4, "schema"), (6, "duplicate_id"), (7, "tools"), (8, "expected_calls"), (10, "json"),
                       (9, "leaks_heldout")}  # fmt: skip
    bad = next(r for r in task_set.rejects if r["line"] == 4)
    assert "no way to judge success" in bad["detail"] and bad["file"] == str(path)
    (tmp_path / "empty.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(BadInput, match=r"no valid task .*line 1: schema"):
        load_task_file(tmp_path / "empty.jsonl", PY_SHOP)


def test_python_envs_a_toolenv_subclass_as_is_a_plain_class_wrapped() -> None:
    from pipelines.envs.calculator import CalculatorEnv
    from pipelines.envs.spec import env_class

    calculator = PythonEnvSpec.model_validate(
        {"type": "python", "class": "pipelines.envs.calculator:CalculatorEnv"}
    )
    assert env_class(calculator) is CalculatorEnv
    shop = env_class(PY_SHOP)
    assert shop._tool_methods() == ["add_to_cart", "get_cart"]
    env = shop()
    env.reset(task=None)
    env._backend.reset({"cart": {"mug": 1}})
    assert json.loads(env._call_tool("get_cart", {})[0])["total"] == 6.5
    text, is_error = env._call_tool("add_to_cart", {"product_id": "kettle"})
    assert is_error and "no product 'kettle'" in text  # the method's exception, shown to the model
    assert env.get_reward() == 0.0  # no task: the class's own get_reward applies only to a started task
    with pytest.raises(BadInput, match="cannot import 'nowhere'"):
        env_class(PythonEnvSpec.model_validate({"type": "python", "class": "nowhere:Env"}))


def test_the_judge_scores_answer_calls_state_and_verifier(tmp_path: Path) -> None:
    task_set = load_task_file(tasks_file(tmp_path), PY_SHOP)
    env_class = task_set.envs["pyshop"]
    task = task_set.train[0]
    env = env_class()
    env.reset(task=task.to_json())
    env._call_tool("add_to_cart", {"product_id": "apple", "quantity": 2})
    env._record_final_answer("Your total is 1.0 EUR.")
    assert env.get_reward() == 1.0
    env._record_final_answer("Your total is 2.0 EUR.")
    assert env.get_reward() == 0.0  # answer and verifier both fail
    other = env_class()
    other.reset(task=task.to_json())
    other._call_tool("add_to_cart", {"product_id": "apple"})
    other._call_tool("add_to_cart", {"product_id": "apple"})  # two calls where one was expected
    other._record_final_answer("The total is 1.0")
    assert other.get_reward() == 0.0


# -- verification ----------------------------------------------------------------------------------------------
def handmade_trace(task, tools, call_args: dict, final: str, plan: bool = True) -> Trace:
    thinking = [ThinkingSection(section="plan", text="Add the apples with add_to_cart.")] if plan else []
    call = ToolCall(id="call_1", name="add_to_cart", arguments=call_args)
    result = json.dumps(
        {
            "items": {"apple": call_args.get("quantity", 1)},
            "total": 0.5 * call_args.get("quantity", 1),
            "currency": "EUR",
        }
    )
    messages = [
        Message(role="system", content="s"), Message(role="user", content=task.request),
        Message(role="assistant", thinking=thinking, tool_calls=[call]),
        Message(role="tool", content=result, tool_call_id="call_1", name="add_to_cart"),
        Message(role="assistant", content=final, thinking=[ThinkingSection(section="verify", text="It says 1.0.")]),
    ]  # fmt: skip
    return Trace(id="t", source="teacher", kind="tool", cluster="tool", tools=tools, messages=messages)


def test_verification_accepts_a_right_trace_and_names_what_is_wrong(tmp_path: Path) -> None:
    task_set = load_task_file(tasks_file(tmp_path), PY_SHOP)
    env_class, task = task_set.envs["pyshop"], task_set.train[0]
    tools = env_class._tool_schemas()

    def verdict(trace: Trace) -> list[tuple[str, str]]:
        env = env_class()
        env.reset(task=task.to_json())
        return check_format(trace, SCHEMA) or check_replay(trace, env, task, "exact")

    good = handmade_trace(task, tools, {"product_id": "apple", "quantity": 2}, "The total is 1.0 EUR.")
    good = good.model_copy(update={"messages": [*good.messages[:3], good.messages[3].model_copy(
        update={"content": '{"currency": "EUR", "items": {"apple": 2}, "total": 1.0}'}), good.messages[4]]})  # fmt: skip
    assert verdict(good) == []
    wrong_answer = good.model_copy(
        update={
            "messages": [*good.messages[:4], good.messages[4].model_copy(update={"content": "It is 3.0."})]
        }
    )
    assert verdict(wrong_answer)[0][0] == "outcome"
    no_plan = handmade_trace(task, tools, {"product_id": "apple", "quantity": 2}, "1.0", plan=False)
    assert ("structure", "the first turn does not start with a plan") in verdict(no_plan)
    made_up = handmade_trace(task, tools, {"product_id": "apple", "quantity": 2}, "The total is 1.0.")
    made_up = made_up.model_copy(update={"messages": [*made_up.messages[:3], made_up.messages[3].model_copy(update={"content": '{"total": 1.0}'}), made_up.messages[4]]})  # fmt: skip
    assert verdict(made_up)[0][0] == "execution"  # the observation was not what the environment returns
    bad_args = handmade_trace(task, tools, {"product_id": 7}, "1.0")
    assert verdict(bad_args)[0][0] == "format"


def test_a_proposed_task_is_kept_only_when_its_reference_solution_verifies(tmp_path: Path) -> None:
    env_class = load_task_file(tasks_file(tmp_path), PY_SHOP).envs["pyshop"]
    calls = [{"name": "add_to_cart", "arguments": {"product_id": "apple", "quantity": 2}}]
    task = verify_proposal(
        "p-1", {"prompt": "Two apples please; total?", "calls": calls, "answer": "1.0"}, "pyshop", env_class
    )
    assert (
        task.task_id == "p-1" and task.judge["split"] == "train" and task.solution[0][0].tool == "add_to_cart"
    )
    unverified = [
        ({"prompt": "A kettle.", "calls": [{"name": "add_to_cart", "arguments": {"product_id": "kettle"}}]}, "proposal_unverified"),
        ({"prompt": "Apples.", "calls": calls, "answer": "7.5"}, "proposal_unverified"),
        ({"prompt": "Fly.", "calls": [{"name": "fly", "arguments": {}}]}, "proposal_format"),
        ({"prompt": "Nothing.", "calls": []}, "proposal_format"),
    ]  # fmt: skip
    for proposal, reason in unverified:
        with pytest.raises(Rejected) as caught:
            verify_proposal("p-x", proposal, "pyshop", env_class)
        assert caught.value.reason == reason, proposal
    with pytest.raises(Rejected, match="proposal_format"):
        _json_object("Sure! Here is a task: prompt = add apples")
    assert _json_object('Here: {"prompt": "x", "calls": []} done')["prompt"] == "x"


def test_reasoning_in_the_schema_or_mapped_into_it_and_replies_without_any_rejected() -> None:
    from pipelines.tasks.llm_teacher import _calls, _thinking

    sectioned = '<think><plan>Add two apples.</plan></think>\n<tool_call>\n{"name": "add_to_cart", "arguments": {"product_id": "apple"}}\n</tool_call>'
    assert _thinking({}, sectioned, SCHEMA, 0, False, False) == (
        [ThinkingSection(section="plan", text="Add two apples.")],
        "",
    )
    assert _calls({}, sectioned, SCHEMA, 0) == [
        ("add_to_cart", {"product_id": "apple"})
    ]  # parsed from the text
    api = {"tool_calls": [{"type": "function", "function": {"name": "get_cart", "arguments": "{}"}}]}
    assert _calls(api, "", SCHEMA, 1) == [("get_cart", {})]  # the API's own tool_calls
    # Unsectioned reasoning, or a reasoning model's `reasoning_content`, becomes the section the turn calls for.
    assert (
        _thinking({}, "<think>Looks right.</think>\nIt is 1.0.", SCHEMA, 2, False, True)[0][0].section
        == "verify"
    )
    assert (
        _thinking({"reasoning_content": "It failed."}, "", SCHEMA, 1, True, False)[0][0].section == "reflect"
    )
    # A server that parsed the reply (transformers serve, vLLM's reasoning parser) returns the inside of <think>:
    # its sections are the thinking, not one section holding stray tags.
    served = {"reasoning_content": "<plan>Add two apples.</plan>\n<verify>Then read the total.</verify>"}
    assert _thinking(served, "", SCHEMA, 0, False, False) == (
        [ThinkingSection(section="plan", text="Add two apples."),
         ThinkingSection(section="verify", text="Then read the total.")],
        "",
    )  # fmt: skip
    # Sections written after the wrapper closed (a trained 135M adapter served as teacher wrote `</think>`
    # before its `<verify>` lines): still reasoning, by their tags, with the server's split or without it.
    late = "<think><observe>The cart holds 2 apples.</observe></think>\n<verify>2 apples, as asked.</verify>\nDone: 2 apples."
    split = {"reasoning_content": "<observe>The cart holds 2 apples.</observe>"}
    for message, content in (({}, late), (split, late.split("</think>\n")[1])):
        assert _thinking(message, content, SCHEMA, 2, False, True) == (
            [ThinkingSection(section="observe", text="The cart holds 2 apples."),
             ThinkingSection(section="verify", text="2 apples, as asked.")],
            "Done: 2 apples.",
        )  # fmt: skip
    with pytest.raises(Rejected, match="stray '<verify>'"):  # left open: not a section, not an answer
        _thinking({}, "<think><plan>Add.</plan></think>\n<verify>2 apples", SCHEMA, 2, False, True)
    # Sections after a reasoning block, never instead of one.
    with pytest.raises(Rejected, match="no reasoning"):
        _thinking({}, "<verify>2 apples, as asked.</verify>\nDone.", SCHEMA, 2, False, True)
    # A schema whose answer has tags of its own (Reflection-70B's <output>): they come off after the sections.
    reflection = load_thought_schema("reflection70b")
    late = "<thinking>Two apples.</thinking>\n<reflection>2, as asked.</reflection>\n<output>Done.</output>"
    assert _thinking({}, late, reflection, 2, False, True) == (
        [ThinkingSection(section="plan", text="Two apples."), ThinkingSection(section="reflect", text="2, as asked.")],
        "Done.",
    )  # fmt: skip
    with pytest.raises(Rejected) as caught:
        _thinking({}, "The total is 1.0.", SCHEMA, 0, False, True)
    assert caught.value.reason == "thought_schema"
    with pytest.raises(Rejected, match="not JSON"):
        _calls({"tool_calls": [{"function": {"name": "x", "arguments": "{oops"}}]}, "", SCHEMA, 0)


def test_an_endpoint_nobody_listens_on_stops_the_build(tmp_path: Path) -> None:
    from tests.openai_server import free_port

    task_set = load_task_file(tasks_file(tmp_path), PY_SHOP)
    nowhere = TeacherSettings(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", retries=0)
    with pytest.raises(BadInput, match="cannot connect"):
        teacher_traces(task_set.train[:1], task_set.envs, nowhere, tmp_path / "c.jsonl", SCHEMA)


# -- against the server ----------------------------------------------------------------------------------------
def test_teacher_episodes_over_a_real_server_end_as_traces_or_reasoned_rejects_and_replay_from_cache(
    server: tuple[str, str], tmp_path: Path
) -> None:
    task_set = load_task_file(tasks_file(tmp_path), PY_SHOP)
    cache = tmp_path / "cache.jsonl"
    first = teacher_traces(task_set.train, task_set.envs, settings(server), cache, SCHEMA, samples_per_task=2)
    assert len(first.results) == 6 and first.requests >= 6
    for item in first.results:
        assert isinstance(item, Trace) or (item["reason"] and item["detail"] and item["id"].startswith("py-"))
    assert cache.is_file() and len(cache.read_text().splitlines()) == first.requests
    again = teacher_traces(task_set.train, task_set.envs, settings(server), cache, SCHEMA, samples_per_task=2)
    assert again.requests == 0 and again.cache_sha256 == first.cache_sha256
    assert [r if isinstance(r, dict) else r.to_json() for r in again.results] == [
        r if isinstance(r, dict) else r.to_json() for r in first.results
    ]
    with offline_teacher(), pytest.raises(TeacherOffline, match="has no response"):
        teacher_traces(task_set.train, task_set.envs, settings(server), tmp_path / "empty.jsonl", SCHEMA)


def test_teacher_over_the_mcp_fixture(server: tuple[str, str], tmp_path: Path) -> None:
    spec = McpEnvSpec(
        type="mcp", name="shop", command=["{python}", str(ROOT / "tests/fixtures/mcp_shop_server.py")]
    )
    task_set = load_task_file(ROOT / "configs/tasks/shop.jsonl", spec)
    run = teacher_traces(
        task_set.train[:2],
        task_set.envs,
        settings(server, max_turns=1),
        tmp_path / "c.jsonl",
        SCHEMA,
        propose=2,
    )
    proposals = [r for r in run.results if isinstance(r, dict) and r["id"].startswith("proposed-shop-")]
    assert len(proposals) == 2 and all(r["reason"].startswith("proposal_") for r in proposals)
    assert len(run.results) == 4 and run.requests == 4
    assert all(isinstance(r, Trace) or r["reason"] for r in run.results)


# -- reflexion retries -----------------------------------------------------------------------------------------
class _ScriptedTeacher:
    """An OpenAI-compatible endpoint (stdlib HTTP, real requests from the real client) whose replies are chosen
    by the test, so that a retry certainly succeeds: it answers "Add a mug." without calling a tool; after
    feedback it calls `add_to_cart(mug)` and then answers. Which requests arrived is recorded."""

    def __init__(self, fixes: bool = True, first_call: str | None = None) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        teacher = self
        self.fixes, self.first_call = fixes, first_call
        self.bodies: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                teacher.bodies.append(body)
                reply = json.dumps({"choices": [{"message": teacher.reply(body["messages"])}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reply(self, messages: list[dict]) -> dict:
        told = any(m["role"] == "user" and m["content"].startswith("Your previous attempt") for m in messages)
        if self.first_call and messages[-1]["role"] == "user" and not told:  # a wrong call that succeeds
            arguments = json.dumps({"product_id": self.first_call})
            call = {"type": "function", "function": {"name": "add_to_cart", "arguments": arguments}}
            return {
                "role": "assistant",
                "content": "<think><plan>Add it.</plan></think>",
                "tool_calls": [call],
            }
        if not told or not self.fixes:
            return {"role": "assistant", "content": "<think><plan>A mug is easy.</plan></think>Added a mug."}
        if messages[-1]["role"] == "user":
            call = {
                "type": "function",
                "function": {"name": "add_to_cart", "arguments": '{"product_id": "mug"}'},
            }
            return {"role": "assistant", "content": "<think><reflect>I never called the tool.</reflect></think>",
                    "tool_calls": [call]}  # fmt: skip
        return {
            "role": "assistant",
            "content": "<think><verify>The mug is in the cart.</verify></think>Done.",
        }


@pytest.mark.integration
def test_a_judged_failure_is_retried_with_the_judges_words_and_kept_as_a_recovery_trace(
    tmp_path: Path,
) -> None:
    task_set = load_task_file(tasks_file(tmp_path), PY_SHOP)
    mug = [t for t in task_set.train if t.task_id == "py-2"]
    teacher = _ScriptedTeacher()
    try:
        plain = TeacherSettings(base_url=teacher.url, model="scripted", retries=0)
        without = teacher_traces(mug, task_set.envs, plain, tmp_path / "c0.jsonl", SCHEMA)
        (reject,) = without.results
        assert reject["reason"] == "outcome" and "after" not in reject["detail"]

        cache = tmp_path / "c1.jsonl"
        retrying = plain.model_copy(update={"reflexion_retries": 2})
        run = teacher_traces(mug, task_set.envs, retrying, cache, SCHEMA)
        (trace,) = run.results
        assert isinstance(trace, Trace), trace
        assert trace.meta["pattern"] == "recovery" and trace.cluster == "reflect"
        assert trace.meta["reflexion"]["retries"] == 1
        roles = [m.role for m in trace.messages]
        assert roles == ["system", "user", "assistant", "user", "assistant", "tool", "assistant"]
        feedback = trace.messages[3].content
        # The judge's words name the missing tool, never the expected arguments.
        assert "`add_to_cart`" in feedback and "mug" not in feedback
        assert trace.messages[4].thinking[0].section == "reflect"
        # The retry's request carried the failed attempt and the feedback; the cache replays the run offline.
        assert teacher.bodies[-2]["messages"][-1] == {"role": "user", "content": feedback}
        with offline_teacher():
            again = teacher_traces(mug, task_set.envs, retrying, cache, SCHEMA)
        assert again.requests == 0 and again.results[0].to_json() == trace.to_json()
    finally:
        teacher.server.shutdown()


@pytest.mark.integration
def test_a_recovery_trace_trains_only_the_fix_and_hopeless_retries_are_not_asked_for(
    tmp_path: Path, tokenizer
) -> None:
    from pipelines.chat import render_trace

    task_set = load_task_file(tasks_file(tmp_path), PY_SHOP)
    mug = [t for t in task_set.train if t.task_id == "py-2"]
    teacher = _ScriptedTeacher()
    try:
        retrying = TeacherSettings(base_url=teacher.url, model="scripted", retries=0, reflexion_retries=1)
        (trace,) = teacher_traces(mug, task_set.envs, retrying, tmp_path / "c.jsonl", SCHEMA).results
        assert trace.meta["loss_from_turn"] == 1
        trained = render_trace(trace, tokenizer, SCHEMA)
        everything = render_trace(trace.model_copy(update={"meta": {}}), tokenizer, SCHEMA)
        in_loss = tokenizer.decode(
            [t for t, m in zip(trained.input_ids, trained.assistant_masks, strict=True) if m]
        )
        assert trained.input_ids == everything.input_ids and sum(trained.assistant_masks) < sum(
            everything.assistant_masks
        )
        assert "Added a mug." not in in_loss and "never called the tool" in in_loss
    finally:
        teacher.server.shutdown()

    stubborn = _ScriptedTeacher(fixes=False)  # the retry answers without calling again: retries run out
    try:
        settings = TeacherSettings(base_url=stubborn.url, model="scripted", retries=0, reflexion_retries=2)
        (reject,) = teacher_traces(mug, task_set.envs, settings, tmp_path / "s.jsonl", SCHEMA).results
        assert reject["reason"] == "outcome" and reject["detail"].endswith("(after 2 reflexion retries)")
        assert len(stubborn.bodies) == 3
    finally:
        stubborn.server.shutdown()

    wrong = _ScriptedTeacher(
        first_call="apple"
    )  # a successful wrong call: the replay keeps it, no fix can pass
    try:
        settings = TeacherSettings(base_url=wrong.url, model="scripted", retries=0, reflexion_retries=2)
        (reject,) = teacher_traces(mug, task_set.envs, settings, tmp_path / "w.jsonl", SCHEMA).results
        assert reject["reason"] == "outcome" and "reflexion" not in reject["detail"]
        assert len(wrong.bodies) == 2  # the call and the answer; no retry asked for
    finally:
        wrong.server.shutdown()


def test_feedback_on_a_task_file_task_names_a_wrong_answer_not_the_right_calls(tmp_path: Path) -> None:
    from pipelines.rl.feedback import verbal_feedback
    from pipelines.rl.rewards import Call, Rollout

    task_set = load_task_file(tasks_file(tmp_path), PY_SHOP)
    env_class, task = task_set.envs["pyshop"], task_set.train[0]  # two apples, answer 1.0
    env = env_class()
    env.reset(task=task.to_json())
    arguments = {"product_id": "apple", "quantity": 2}
    result, _ = env._call_tool("add_to_cart", arguments)
    rollout = Rollout([Call("add_to_cart", arguments)], 0, [("add_to_cart", result)], "It is 3.0.", True)
    text = verbal_feedback(rollout, task, env)
    assert "final answer does not state" in text and "arguments" not in text
    wrong_args = {"product_id": "apple", "quantity": 1}
    env.reset(task=task.to_json())
    result, _ = env._call_tool("add_to_cart", wrong_args)
    rollout = Rollout([Call("add_to_cart", wrong_args)], 0, [("add_to_cart", result)], "It is 0.5.", True)
    assert "arguments do not all match" in verbal_feedback(rollout, task, env)
