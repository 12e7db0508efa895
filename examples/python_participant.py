#!/usr/bin/env python3
"""A minimal Sagaflow saga participant in Python (confluent_kafka only).

It serves one participant name: it consumes `<prefix>.commands.<participant>`,
decides each command and replies on the command's `reply_to` topic (normally
`<prefix>.replies`), keyed by the saga id, as described in docs/wire-protocol.md.

Behaviour:
  * a command whose `type` is listed in --fail-types is refused with a
    non-retryable failure (the saga then compensates; refusing a compensation
    type makes the coordinator retry it and finally fail the saga);
  * any other forward command succeeds with the output
    {"<step>_handled_by": "<participant>"}, merged into the saga context;
  * a compensation (message id `.../undo/<n>`) always succeeds, even when the
    forward command never arrived, and blocks a late forward command for the
    same saga and step, which is then refused;
  * a redelivered command (same message_id) gets the same reply again;
  * the offset is committed only after the reply is acknowledged (acks=all).

State is kept in memory for brevity. A real participant must store the
processed message id, its effect and the reply it owes in one durable
transaction, like Sagaflow's built-in participants do.

Usage:
  pip install confluent-kafka
  python3 examples/python_participant.py --bootstrap localhost:9092 \
      --participant shipping --fail-types CancelShipment
"""

import argparse
import json
import logging
import signal
from datetime import datetime, timezone

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger("participant")


def now_rfc3339():
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def phase_of(command):
    """'do' or 'undo', from Sagaflow's message id format {saga_id}/{step}/{do|undo}/{attempt}."""
    parts = command["message_id"].rsplit("/", 2)
    if len(parts) == 3 and parts[1] in ("do", "undo"):
        return parts[1]
    return "undo" if "compensation_reason" in (command.get("payload") or {}) else "do"


def parse_command(body):
    command = json.loads(body)
    if not isinstance(command, dict):
        raise ValueError("the body is not a JSON object")
    for field in ("message_id", "saga_id", "step", "type"):
        if not isinstance(command.get(field), str) or not command[field]:
            raise ValueError(f"missing or empty field '{field}'")
    if command.get("kind") != "command":
        raise ValueError("expected a command, got " + repr(command.get("kind")))
    return command


class Participant:
    def __init__(self, name, fail_types):
        self.name = name
        self.fail_types = fail_types
        self.replies = {}  # command message_id -> reply already sent (dedup per message id)
        self.applied = set()  # (saga_id, step) whose forward effect is applied (dedup per business key)
        self.undone = set()  # (saga_id, step) compensated: a late forward command is refused

    def decide(self, command):
        """Returns (outcome, output) for a command seen for the first time."""
        key = (command["saga_id"], command["step"])
        if command["type"] in self.fail_types:
            return {"status": "failure", "reason": f"{self.name} refuses {command['type']}", "retryable": False}, None
        if phase_of(command) == "undo":
            self.applied.discard(key)  # undo the effect (if any) ...
            self.undone.add(key)  # ... and remember it, so that a late command cannot apply
            return {"status": "success"}, {}
        if key in self.undone:
            return {"status": "failure", "reason": "this step was already compensated", "retryable": False}, None
        self.applied.add(key)  # a retry (new message id, higher attempt) finds it applied and succeeds again
        return {"status": "success"}, {f"{command['step']}_handled_by": self.name}

    def reply_for(self, command):
        if command["message_id"] not in self.replies:
            outcome, output = self.decide(command)
            self.replies[command["message_id"]] = {
                "message_id": command["message_id"] + "/reply",
                "saga_id": command["saga_id"],
                "kind": "reply",
                "step": command["step"],
                "type": command["type"],
                "attempt": command.get("attempt", 1),
                "in_reply_to": command["message_id"],
                "payload": output,
                "outcome": outcome,
                "sent_at": now_rfc3339(),
            }
        return self.replies[command["message_id"]]


def ensure_topic(bootstrap, topic, partitions, replication):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic in admin.list_topics(timeout=10).topics:
        return
    for future in admin.create_topics([NewTopic(topic, partitions, replication)]).values():
        try:
            future.result()
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="localhost:9092", help="Kafka bootstrap servers")
    parser.add_argument("--prefix", default="sagaflow", help="Sagaflow topic prefix")
    parser.add_argument("--participant", required=True, help="participant name, as in the saga definition")
    parser.add_argument("--fail-types", default="", help="comma-separated command types to refuse")
    parser.add_argument("--group", help="consumer group id (default: <prefix>.participant.<participant>)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions if the command topic must be created")
    parser.add_argument("--replication-factor", type=int, default=1, help="replication if the topic must be created")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    commands_topic = f"{args.prefix}.commands.{args.participant}"
    replies_topic = f"{args.prefix}.replies"
    dead_letter_topic = f"{args.prefix}.dead-letter"
    participant = Participant(args.participant, {t.strip() for t in args.fail_types.split(",") if t.strip()})
    ensure_topic(args.bootstrap, commands_topic, args.partitions, args.replication_factor)

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group or f"{args.prefix}.participant.{args.participant}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "acks": "all"})

    def send(topic, key, value, headers):
        errors = []
        producer.produce(topic, key=key, value=value, headers=headers,
                         on_delivery=lambda err, _msg: err and errors.append(err))
        producer.flush()
        if errors:  # not durable: stop without committing; the command is delivered again
            raise KafkaException(errors[0])

    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    consumer.subscribe([commands_topic])
    log.info("serving %s on %s", args.participant, commands_topic)
    try:
        while running:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                log.warning("consumer error: %s", msg.error())
                continue
            headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])}
            try:
                command = parse_command(msg.value() or b"")
            except (ValueError, UnicodeDecodeError) as e:
                log.warning("dead-lettering %s:%s:%s: %s", msg.topic(), msg.partition(), msg.offset(), e)
                headers["dead-letter-reason"] = str(e)
                headers["dead-letter-source"] = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"
                send(dead_letter_topic, msg.key() or b"", msg.value() or b"", list(headers.items()))
            else:
                reply = participant.reply_for(command)
                send(
                    command.get("reply_to") or replies_topic,
                    command["saga_id"],
                    json.dumps(reply, separators=(",", ":")),
                    [
                        ("message_id", reply["message_id"]),
                        ("content-type", "application/json"),
                    ]
                    # Copied as is: the engine's decision on the reply joins the command's trace.
                    + ([("traceparent", headers["traceparent"])] if headers.get("traceparent") else []),
                )
                log.info("%s %s attempt %s -> %s", command["message_id"], command["type"],
                         command.get("attempt", 1), reply["outcome"]["status"])
            consumer.commit(message=msg, asynchronous=False)  # only after the reply is durable
    finally:
        consumer.close()
        producer.flush(10)


if __name__ == "__main__":
    main()
