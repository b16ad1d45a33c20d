"""Lambda's SNS trigger: SNS invokes the function asynchronously with one notification per event.

Locally the topic delivers to an SQS queue the runtime owns (SNS → SQS works in every emulator); a
poller turns each notification into Lambda's SNS event and invokes the function with Lambda's
asynchronous semantics (`local/async_invoke.py`, shared with the Lambda API's `Event` invokes and
schedules): 3 attempts, then the function's `DeadLetterQueue` / `OnFailure` destination if the
template declares one, else the event is dropped with an error line, as AWS does.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import async_invoke
from .invoker import FunctionPool
from .supervise import supervised

log = logging.getLogger("local.sns")


@dataclass
class SnsSource:
    topic_arn: str
    queue_url: str  # the runtime's delivery queue
    subscription_arn: str
    dead_letter_arn: str | None = None


def lambda_record(notification: dict[str, Any], subscription_arn: str) -> dict[str, Any]:
    """An SNS notification (the JSON SNS delivers to SQS) as Lambda hands it to a function."""
    return {
        "EventSource": "aws:sns",
        "EventVersion": "1.0",
        "EventSubscriptionArn": subscription_arn,
        "Sns": {
            "Type": notification.get("Type", "Notification"),
            "MessageId": notification.get("MessageId"),
            "TopicArn": notification.get("TopicArn"),
            "Subject": notification.get("Subject"),
            "Message": notification.get("Message"),
            "Timestamp": notification.get("Timestamp"),
            "SignatureVersion": notification.get("SignatureVersion", "1"),
            "Signature": notification.get("Signature", ""),
            "SigningCertUrl": notification.get("SigningCertURL", ""),
            "UnsubscribeUrl": notification.get("UnsubscribeURL", ""),
            "MessageAttributes": notification.get("MessageAttributes", {}),
        },
    }


def subscribe(stack: Any, clients: Any, function_lid: str, event_name: str, props: dict[str, Any],
              dead_letter_arn: str | None) -> SnsSource:
    """Creates the delivery queue and the topic's subscription to it (with the event's FilterPolicy)."""
    sqs, sns = clients("sqs"), clients("sns")
    name = f"{stack.name}-{function_lid}-{event_name}-sns"[:80]
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attributes = {}
    if props.get("FilterPolicy"):
        attributes["FilterPolicy"] = json.dumps(props["FilterPolicy"])
        if props.get("FilterPolicyScope"):
            attributes["FilterPolicyScope"] = str(props["FilterPolicyScope"])
    sub = sns.subscribe(TopicArn=props["Topic"], Protocol="sqs", Endpoint=arn, Attributes=attributes,
                        ReturnSubscriptionArn=True)["SubscriptionArn"]
    return SnsSource(props["Topic"], url, sub, dead_letter_arn)


class SnsPoller:
    def __init__(self, sqs: Any, pool: FunctionPool, source: SnsSource, dead_letter_url: str | None,
                 concurrency: int = 4) -> None:
        self.sqs, self.pool, self.source = sqs, pool, source
        self.dead_letter_url = dead_letter_url  # unused: async_invoke reads the function's own DeadLetterQueue
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="sns-invoke")
        self._slots = threading.Semaphore(concurrency)
        run = supervised(self._run, self._stop, log, {"function": pool.spec.name, "topic": source.topic_arn})
        self._thread = threading.Thread(target=run, name=f"sns:{source.topic_arn}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                got = self.sqs.receive_message(QueueUrl=self.source.queue_url, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=1).get("Messages", [])
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("receive failed", extra={"topic": self.source.topic_arn, "error": str(exc)})
                self._stop.wait(1)
                continue
            for message in got:
                self._slots.acquire()
                try:
                    self._pool.submit(self._deliver, message)
                except BaseException:
                    self._slots.release()  # the message comes back after its visibility timeout
                    raise

    def _deliver(self, message: dict[str, Any]) -> None:
        try:
            notification = json.loads(message["Body"])
            event = {"Records": [lambda_record(notification, self.source.subscription_arn)]}
            async_invoke.invoke_async(self.pool, event, trigger="sns", source=self.source.topic_arn, stop=self._stop)
            self.sqs.delete_message(QueueUrl=self.source.queue_url, ReceiptHandle=message["ReceiptHandle"])
        except Exception:
            log.exception("SNS delivery failed", extra={"topic": self.source.topic_arn})
        finally:
            self._slots.release()
