"""Events: CloudEvents 1.0 envelopes, HMAC signatures, outbox, relay and inbox.

The delivery guarantee is *effectively once*:

1. A service writes its state change and the signed event into its outbox
   table in the same transaction (:func:`enqueue`, :func:`enqueue_many`): no
   event without the change, no change without the event.
2. :class:`OutboxRelay` publishes pending rows in id order with aiokafka's
   idempotent producer (``acks=all``) and marks them published. It may publish
   a row again after a crash or a broker outage (at least once), never skip one.
   Each record it publishes for a traced change gets a PRODUCER span, child of
   the change's ``traceparent``, whose context travels in the record's headers.
3. :class:`EventConsumer` verifies each event's signature, then applies it and
   records its id in the inbox in one transaction, and only then commits the
   Kafka offset. A redelivered event finds its id in the inbox and has no
   second effect. Unsigned or tampered events are counted, logged and skipped.

The relay and the consumer each run a monitor beside their loop
(``core/lag.py``): outbox age and consumer-group lag as metrics.

Envelopes are CloudEvents 1.0 structured-mode JSON. The signature extension
``signature`` is ``v<N>:<base64 HMAC-SHA256>`` over the canonical JSON of every
other attribute (sorted keys, no whitespace), keyed by version N of a Transit
HMAC key that services export from the KMS once at start.

Modules: :mod:`~lastro.core.events.envelope` (CloudEvent, signing, the topic
catalogue), :mod:`~lastro.core.events.outbox` (outbox table, enqueue, relay),
:mod:`~lastro.core.events.consumer` (inbox table, consumer),
:mod:`~lastro.core.events.commands` (the command consumer: resumable handlers, in
order per key, concurrent across keys, no inbox). Import from this
package; the names below are its public surface.
"""

from lastro.core.events.commands import COMMANDS_FAILED, CommandConsumer, Handle
from lastro.core.events.consumer import (
    BACKGROUND_GATHER_SECONDS,
    EVENTS_APPLIED,
    EVENTS_DUPLICATE,
    EVENTS_IGNORED,
    EVENTS_REJECTED,
    Apply,
    EventConsumer,
    inbox_table,
)
from lastro.core.events.envelope import (
    CONTENT_TYPE,
    SIGNATURE_ATTR,
    SPEC_VERSION,
    TOPIC_CONFIGS,
    TOPICS,
    CloudEvent,
    EventRejected,
    EventSigner,
    TransitKeys,
    canonical,
    new_event,
)
from lastro.core.events.outbox import (
    EVENTS_PUBLISHED,
    RELAY_FAILURES,
    OutboxMessage,
    OutboxRelay,
    enqueue,
    enqueue_many,
    enqueue_parameters,
    enqueue_statement,
    outbox_table,
)

__all__ = [
    "BACKGROUND_GATHER_SECONDS",
    "COMMANDS_FAILED",
    "CONTENT_TYPE",
    "EVENTS_APPLIED",
    "EVENTS_DUPLICATE",
    "EVENTS_IGNORED",
    "EVENTS_PUBLISHED",
    "EVENTS_REJECTED",
    "RELAY_FAILURES",
    "SIGNATURE_ATTR",
    "SPEC_VERSION",
    "TOPICS",
    "TOPIC_CONFIGS",
    "Apply",
    "CloudEvent",
    "CommandConsumer",
    "EventConsumer",
    "EventRejected",
    "EventSigner",
    "Handle",
    "OutboxMessage",
    "OutboxRelay",
    "TransitKeys",
    "canonical",
    "enqueue",
    "enqueue_many",
    "enqueue_parameters",
    "enqueue_statement",
    "inbox_table",
    "new_event",
    "outbox_table",
]
