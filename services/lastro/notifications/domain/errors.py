"""The rules a request to the notification service can break, one class each."""

from __future__ import annotations

from lastro.core.errors import Conflict, DomainError, NotFound


class InvalidPreferences(DomainError):
    slug = "invalid-preferences"
    title = "Invalid notification preferences"


class InvalidWebhookUrl(DomainError):
    slug = "invalid-webhook-url"
    title = "Invalid webhook URL"


class WebhookTargetRefused(DomainError):
    """The URL names (or resolves to) a private, loopback, link-local or otherwise
    non-public address: delivering there would let a merchant probe our network."""

    slug = "webhook-target-refused"
    title = "Webhook target refused"


class InvalidEndpoint(DomainError):
    slug = "invalid-webhook-endpoint"
    title = "Invalid webhook endpoint"


class UnknownEndpoint(NotFound):
    slug = "unknown-webhook-endpoint"
    title = "Webhook endpoint does not exist"


class EndpointDisabled(Conflict):
    slug = "webhook-endpoint-disabled"
    title = "Webhook endpoint is disabled"


class UnknownDelivery(NotFound):
    slug = "unknown-delivery"
    title = "Delivery does not exist"


class DeliveryNotReplayable(Conflict):
    slug = "delivery-not-replayable"
    title = "Only dead-lettered deliveries can be replayed"


class UnknownCustomer(NotFound):
    slug = "unknown-customer"
    title = "Customer does not exist"


class UnsupportedDataClass(DomainError):
    slug = "unsupported-data-class"
    title = "This service holds no such data class"


class UnsupportedAction(DomainError):
    slug = "unsupported-retention-action"
    title = "Retention action not supported for this data class"


class InvalidCutoff(DomainError):
    slug = "invalid-cutoff"
    title = "Invalid retention cutoff"
