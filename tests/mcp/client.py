"""A real MCP client (the official Python SDK, pinned in tools/mcp-sdk/requirements.txt)
driving `parhelia mcp-server`, for tests/tests/e2e/mcp.rs.

    client.py stdio PARHELIA_BIN        # spawns `PARHELIA_BIN mcp-server` (cwd, env inherited)
    client.py http URL TOKEN            # streamable HTTP with `Authorization: Bearer TOKEN`

It lists the tools and checks every input schema, checks the error cases (an unknown task:
E201 with its hint; a restore without confirm: E130, nothing done), creates a task against
the scripted model and follows it to its end through events (logging and progress
notifications), lists checkpoints, resumes the session, diffs (file lists, one file, the
conversation, an unknown checkpoint: E205), reads the session's logs (an unknown session:
E202), restores one (with confirm)
and reads the budget. Each step is printed as one JSON line `{"step": …, …}` for the Rust
side to assert on; anything unexpected raises (exit status 1).
"""

import asyncio
import json
import os
import sys

import jsonschema
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client

SEEDS = [
    "parhelia_task_create", "parhelia_task_list", "parhelia_task_show", "parhelia_task_dispatch",
    "parhelia_containers", "parhelia_container_show", "parhelia_container_events",
    "parhelia_events_list", "parhelia_events_subscribe", "parhelia_events_stream",
    "parhelia_checkpoint_create", "parhelia_checkpoint_list", "parhelia_checkpoint_restore",
    "parhelia_budget_status", "parhelia_budget_estimate", "parhelia_health",
    "parhelia_reconciler_status",
]

notifications = []  # (kind, payload)


def out(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


async def logging_callback(params):
    notifications.append(("log", params.model_dump(mode="json")))


async def call(session, name, args, progress=None):
    result = await session.call_tool(name, args, progress_callback=progress)
    structured = result.structuredContent
    text = "".join(c.text for c in result.content if getattr(c, "type", "") == "text")
    return result.isError, structured, text


async def expect_ok(session, name, args, progress=None):
    is_error, structured, text = await call(session, name, args, progress)
    if is_error:
        raise AssertionError(f"{name} {args} failed: {text}")
    return structured


async def scenario(session, mode):
    await session.initialize()
    listed = await session.list_tools()
    names = [t.name for t in listed.tools]
    missing = [s for s in SEEDS if s not in names]
    assert not missing, f"missing seed tools: {missing}"
    for tool in listed.tools:
        # Every input schema is a valid JSON Schema of an object, every property described.
        jsonschema.Draft202012Validator.check_schema(tool.inputSchema)
        assert tool.inputSchema.get("type") == "object", tool.name
        for prop, schema in tool.inputSchema.get("properties", {}).items():
            assert schema.get("description"), f"{tool.name}.{prop} has no description"
    destructive = sorted(
        t.name for t in listed.tools if t.annotations and t.annotations.destructiveHint
    )
    out("tools", count=len(names), names=names, destructive=destructive)

    # Arguments are checked against the schema the server published.
    create_schema = next(t for t in listed.tools if t.name == "parhelia_task_create").inputSchema
    jsonschema.validate({"prompt": "x", "wait": False}, create_schema)

    # An unknown task: a tool error carrying the CLI's code and hint.
    is_error, structured, text = await call(session, "parhelia_task_show", {"task_id": "task-00000000"})
    assert is_error, text
    out("not_found", code=structured["code"], hint=structured["hint"], text=text)

    # A destructive tool without confirm: E130, nothing done.
    is_error, structured, text = await call(
        session, "parhelia_checkpoint_restore", {"checkpoint_id": "cp-whatever"}
    )
    assert is_error, text
    out("unconfirmed", code=structured["code"], text=text)

    if mode == "http":
        # The HTTP run only proves the transport and auth; stdio does the rest.
        health = await expect_ok(session, "parhelia_health", {})
        tasks = await expect_ok(session, "parhelia_task_list", {})
        out("health", health=health, tasks=tasks)
        return

    budget_before = await expect_ok(session, "parhelia_budget_status", {})
    estimate = await expect_ok(session, "parhelia_budget_estimate", {"timeout": "1h", "max_cost": "5"})
    out("estimate", estimate=estimate)

    created = await expect_ok(session, "parhelia_task_create", {"prompt": "Write first.txt"})
    task_id = created["task_id"]
    session_id = created["session_id"]
    out("created", created=created)

    progress = []

    async def on_progress(p, total, message):
        progress.append(message)

    streamed = await expect_ok(
        session,
        "parhelia_events_stream",
        {"task": task_id, "max_seconds": 180},
        progress=on_progress,
    )
    types = [e["type"] for e in streamed["events"]]
    logged = [n for k, n in notifications if k == "log" and n.get("logger") == "parhelia.events"]
    out("streamed", stopped=streamed["stopped"], types=types, progress=len(progress),
        logged=len(logged))

    task = await expect_ok(session, "parhelia_task_show", {"task_id": task_id})
    out("task", task=task)

    cps = (await expect_ok(session, "parhelia_checkpoint_list", {"session_id": session_id}))["checkpoints"]
    assert cps, "no checkpoints"
    first_cp = cps[-1]["id"]

    await expect_ok(session, "parhelia_resume", {"session_id": session_id, "message": "Now write second.txt"})
    streamed = await expect_ok(session, "parhelia_events_stream", {"task": task_id, "max_seconds": 180})
    for _ in range(120):
        task = await expect_ok(session, "parhelia_task_show", {"task_id": task_id})
        if task["status"] == "completed":
            break
        await asyncio.sleep(1)
    cps = (await expect_ok(session, "parhelia_checkpoint_list", {"session_id": session_id}))["checkpoints"]
    second_cp = cps[-1]["id"]
    diff = await expect_ok(session, "parhelia_checkpoint_diff", {"a": first_cp, "b": second_cp})
    out("diff", first=first_cp, second=second_cp, diff=diff, status=task["status"])
    file_diff = await expect_ok(
        session, "parhelia_checkpoint_diff", {"a": first_cp, "b": second_cp, "file": "second.txt"}
    )
    conversation = await expect_ok(
        session, "parhelia_checkpoint_diff", {"a": first_cp, "b": second_cp, "conversation": True}
    )
    out("diff_more", file=file_diff, conversation=conversation)
    # An unknown checkpoint: E205 with its hint; nothing else ran.
    is_error, structured, text = await call(
        session, "parhelia_checkpoint_diff", {"a": first_cp, "b": "cp-00000000-0000"}
    )
    assert is_error, text
    out("diff_not_found", code=structured["code"], hint=structured.get("hint"), text=text)

    # The finished session's last events, as `session logs --json` prints them.
    logs = await expect_ok(session, "parhelia_session_logs", {"session_id": session_id, "lines": 5})
    # A task id works as for the CLI (its current session).
    logs_by_task = await expect_ok(session, "parhelia_session_logs", {"session_id": task_id, "lines": 5})
    is_error, structured, text = await call(
        session, "parhelia_session_logs", {"session_id": "sess-00000000"}
    )
    assert is_error, text
    out("logs", logs=logs, logs_by_task=logs_by_task, not_found_code=structured["code"],
        not_found_text=text)

    restored = await expect_ok(
        session, "parhelia_checkpoint_restore", {"checkpoint_id": first_cp, "confirm": True}
    )
    out("restored", restored=restored, checkpoint=first_cp)

    # A subscription: notifications for new events until unsubscribed.
    sub = await expect_ok(session, "parhelia_events_subscribe", {"task": task_id})
    await asyncio.sleep(1.0)
    await expect_ok(session, "parhelia_events_unsubscribe", {"subscription_id": sub["subscription_id"]})

    budget = await expect_ok(session, "parhelia_budget_status", {})
    tasks = await expect_ok(session, "parhelia_task_list", {})
    health = await expect_ok(session, "parhelia_health", {})
    reconciler = await expect_ok(session, "parhelia_reconciler_status", {})
    out("final", budget=budget, budget_before=budget_before, tasks=tasks, health=health,
        reconciler=reconciler, task_id=task_id, session_id=session_id)


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        params = StdioServerParameters(
            command=sys.argv[2], args=["mcp-server"], env=dict(os.environ), cwd=os.getcwd()
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, logging_callback=logging_callback) as session:
                await scenario(session, mode)
    else:
        url, token = sys.argv[2], sys.argv[3]
        headers = {"Authorization": f"Bearer {token}"}
        async with streamablehttp_client(url, headers=headers) as (read, write, _):
            async with ClientSession(read, write, logging_callback=logging_callback) as session:
                await scenario(session, mode)
    out("done")


if __name__ == "__main__":
    asyncio.run(main())
