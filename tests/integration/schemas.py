"""Throwaway schema names, so test runs never see each other's rows."""

import uuid


def unique_schema(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
