"""An agent that answers every mail its inbox receives, live over the WebSocket, with the agentmail SDK.

Run it against a local server started with `make run` (API on 127.0.0.1:8080, MX on 127.0.0.1:2525):

    .venv/bin/agentpost key create                        # prints an organisation API key
    .venv/bin/agentpost inbox create agent@agents.example  # adds the domain if needed
    export AGENTMAIL_API_KEY=...                           # the key printed above
    export AGENTPOST_URL=http://127.0.0.1:8080             # the default; the WebSocket URL follows it
    .venv/bin/python examples/agent_websocket.py agent@agents.example

(`--create` makes the inbox through the SDK instead of the CLI.) Then send it a mail, e.g.

    swaks --server 127.0.0.1:2525 --to agent@agents.example --from you@remote.example \\
          --header 'Subject: hello' --body 'are you there?'

and the agent replies in the same thread. It subscribes to `message.received` for that one
inbox only, and replies to each event once (events carry a stable `event_id`).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from agentmail import AsyncAgentMail
from agentmail.environment import AgentMailEnvironment
from agentmail.events.types.message_received_event import MessageReceivedEvent
from agentmail.inboxes.types import CreateInboxRequest
from agentmail.websockets.types import Subscribe, Subscribed


def environment(http_url: str) -> AgentMailEnvironment:
    # The WebSocket is served on the HTTP port at /v0: same host, ws:// for http://.
    ws_url = "ws" + http_url.removeprefix("http")
    return AgentMailEnvironment(http=http_url, websockets=ws_url)


def answer(subject: str | None, text: str | None) -> str:
    """What the agent says: here an echo; a real agent would call its model."""
    quoted = "\n".join("> " + line for line in (text or "").strip().splitlines())
    return f"Hello! I received your message{f' about {subject!r}' if subject else ''}:\n\n{quoted}\n"


async def run(inbox_id: str, create: bool) -> None:
    client = AsyncAgentMail(
        api_key=os.environ["AGENTMAIL_API_KEY"],
        environment=environment(os.environ.get("AGENTPOST_URL", "http://127.0.0.1:8080").rstrip("/")),
    )
    if create:
        username, domain = inbox_id.split("@", 1)
        inbox = await client.inboxes.create(request=CreateInboxRequest(username=username, domain=domain))
        inbox_id = inbox.inbox_id
    answered: set[str] = set()
    async with client.websockets.connect() as socket:
        await socket.send_subscribe(Subscribe(event_types=["message.received"], inbox_ids=[inbox_id]))
        async for event in socket:  # first the "subscribed" confirmation, then events as they commit
            if isinstance(event, Subscribed):
                print(f"listening on {inbox_id}", flush=True)
                continue
            if not isinstance(event, MessageReceivedEvent) or event.event_type != "message.received":
                continue  # the spam/blocked variants share the class; those are not answered
            if event.event_id in answered:
                continue
            answered.add(event.event_id)
            message = event.message
            sent = await client.inboxes.messages.reply(
                message.inbox_id,
                message.message_id,
                text=answer(message.subject, message.extracted_text or message.text),
            )
            print(f"replied to {message.message_id} from {message.from_} with {sent.message_id}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Reply to every mail an inbox receives.")
    parser.add_argument("inbox_id", help="the inbox address, e.g. agent@agents.example")
    parser.add_argument("--create", action="store_true", help="create the inbox first (through the SDK)")
    args = parser.parse_args()
    try:
        asyncio.run(run(args.inbox_id, args.create))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
