"""Lambda's SNS trigger: SNS invokes the function asynchronously with one notification per event.

Locally the topic delivers to an SQS queue the runtime owns (SNS → SQS works in every emulator); a
poller turns each notification into Lambda's SNS event and invokes the function with Lambda's
asynchronous semantics (`Trigger.invoke_async`, shared with the Lambda API's `Event` invokes and
schedules): 3 attempts, then the function's `DeadLetterQueue` / `OnFailure` destination if the
template declares one, else the event is dropped with an error line, as AWS does. The event's
`FilterPolicy` (and `FilterPolicyScope`) is set on the subscription, where SNS applies it (Lambda's
FilterCriteria do not exist for SNS).
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import Trigger
from .sqs import LongPoll

if TYPE_CHECKING:
    from ..invoker import FunctionPool

log = logging.getLogger("samlocal.sns")


@dataclass
class SnsSource:
    topic_arn: str
    queue_url: str = ""  # the runtime's delivery queue (set by `subscribe`)
    subscription_arn: str = ""  # (set by `subscribe`)
    queue_name: str = ""
    filter_policy: Any = None
    filter_policy_scope: str | None = None


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


def subscribe(clients: Any, source: SnsSource) -> SnsSource:
    """Creates the delivery queue and the topic's subscription to it (with the event's FilterPolicy)."""
    sqs, sns = clients("sqs"), clients("sns")
    source.queue_url = sqs.create_queue(QueueName=source.queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=source.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attributes = {}
    if source.filter_policy:
        attributes["FilterPolicy"] = json.dumps(source.filter_policy)
        if source.filter_policy_scope:
            attributes["FilterPolicyScope"] = source.filter_policy_scope
    source.subscription_arn = sns.subscribe(TopicArn=source.topic_arn, Protocol="sqs", Endpoint=arn,
                                            Attributes=attributes, ReturnSubscriptionArn=True)["SubscriptionArn"]
    return source


class SnsPoller(Trigger):
    """Delivers one topic's notifications (through the runtime's delivery queue) to one function."""

    kind = "sns"
    event_types = ("SNS",)
    log = log

    def __init__(self, sqs: Any, pool: FunctionPool, source: SnsSource, concurrency: int = 4,
                 long_poll: LongPoll = LongPoll()) -> None:
        super().__init__(pool, source)
        self.source: SnsSource = source
        self.sqs = sqs
        self.long_poll = long_poll  # the subscription's queue: sqs.LongPoll's waits and wake
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="sns-invoke")
        self._slots = threading.Semaphore(concurrency)

    @classmethod
    def source_from(cls, stack: Any, function_lid: str, event_name: str, event_type: str,
                    props: dict[str, Any]) -> SnsSource:
        scope = props.get("FilterPolicyScope")
        return SnsSource(str(props["Topic"]), queue_name=f"{stack.name}-{function_lid}-{event_name}-sns"[:80],
                         filter_policy=props.get("FilterPolicy"), filter_policy_scope=str(scope) if scope else None)

    @property
    def name(self) -> str:
        return self.source.topic_arn

    def log_fields(self, **fields: Any) -> dict[str, Any]:
        return super().log_fields(topic=self.source.topic_arn, **fields)

    def interrupt(self) -> None:
        self.long_poll.wake(self.source.queue_url)

    def stopped(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                got = self.sqs.receive_message(QueueUrl=self.source.queue_url, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=self.long_poll.seconds).get("Messages", [])
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("receive failed", extra=self.log_fields(error=str(exc)))
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
            self.invoke_async({"Records": [lambda_record(notification, self.source.subscription_arn)]})
            self.sqs.delete_message(QueueUrl=self.source.queue_url, ReceiptHandle=message["ReceiptHandle"])
        except Exception:
            log.exception("SNS delivery failed", extra=self.log_fields())
        finally:
            self._slots.release()
