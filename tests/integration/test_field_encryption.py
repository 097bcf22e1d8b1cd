"""Field encryption against the dev stack: real KMS keys, real PostgreSQL rows.

Each test gets a throwaway schema with a small ``subjects`` table and its own Transit keys
(random names: the KMS keeps its keys), so runs never interfere.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import hvac
import pytest
from schemas import unique_schema
from sqlalchemy import Column, Index, MetaData, Table, Text, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateSchema, DropSchema

from lastro.core.config import Settings
from lastro.core.security.fields import (
    BlindIndex,
    SubjectKeys,
)
from lastro.core.security.transit import TransitClient

SEALED = ("name", "email", "document")
PEOPLE = [
    {"name": "Maria da Silva", "email": "Maria.Silva@Example.com", "document": "123.456.789-09"},
    {"name": "João Pereira", "email": "joao.pereira@example.org", "document": "987.654.321-00"},
    {"name": "Ana Beatriz Costa", "email": "ana@costa.example", "document": "111.444.777-35"},
    {"name": "Carlos Eduardo", "email": "carlos@example.net", "document": "529.982.247-25"},
]


@dataclass(frozen=True)
class Subjects:
    schema: str
    table: Table
    pii_key: str
    index: BlindIndex


@pytest.fixture
async def subjects(engine: AsyncEngine, transit: TransitClient) -> AsyncIterator[Subjects]:
    schema = unique_schema("fields_test")
    metadata = MetaData(schema=schema)
    table = Table(
        "subjects",
        metadata,
        Column("id", Text, primary_key=True),
        Column("data_key", Text, nullable=True),
        *(Column(name, Text, nullable=False) for name in SEALED),
        Column("email_bi", Text, nullable=True),
        Column("document_bi", Text, nullable=True),
        Index("subjects_email_bi", "email_bi"),
        Index("subjects_document_bi", "document_bi"),
    )
    suffix = secrets.token_hex(6)
    pii_key = f"lastro-pii-test-{suffix}"
    await transit.ensure_key(pii_key)
    index = await BlindIndex.from_transit(transit, f"lastro-blind-index-test-{suffix}")
    async with engine.begin() as conn:
        await conn.execute(CreateSchema(schema))
        await conn.run_sync(metadata.create_all)
    yield Subjects(schema, table, pii_key, index)
    async with engine.begin() as conn:
        await conn.execute(DropSchema(schema, cascade=True))


async def enrol(
    engine: AsyncEngine, keys: SubjectKeys, subjects: Subjects, person: dict[str, str]
) -> str:
    """What the account service does on customer creation."""
    row_id = f"cus_{secrets.token_hex(8)}"
    data_key = await keys.create_subject_key()
    cipher = await keys.cipher(data_key.ciphertext)
    sealed = {
        column: cipher.seal(person[column], table="subjects", column=column, row_id=row_id)
        for column in SEALED
    }
    async with engine.begin() as conn:
        await conn.execute(
            subjects.table.insert().values(
                id=row_id,
                data_key=data_key.ciphertext,
                email_bi=subjects.index.compute(person["email"], purpose="email"),
                document_bi=subjects.index.compute(person["document"], purpose="document"),
                **sealed,
            )
        )
    return row_id


async def read_person(
    engine: AsyncEngine, keys: SubjectKeys, subjects: Subjects, row_id: str
) -> dict[str, str]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(subjects.table).where(subjects.table.c.id == row_id))
        ).one()
    cipher = await keys.cipher(row.data_key)
    return {
        column: cipher.open_text(
            getattr(row, column), table="subjects", column=column, row_id=row_id
        )
        for column in SEALED
    }


async def find_by(
    engine: AsyncEngine, subjects: Subjects, column: str, value: str, purpose: str
) -> list[str]:
    candidates = subjects.index.candidates(value, purpose=purpose)
    query = select(subjects.table.c.id).where(subjects.table.c[column].in_(candidates))
    async with engine.connect() as conn:
        return list((await conn.execute(query)).scalars())


def fresh_keys(transit: TransitClient, subjects: Subjects) -> SubjectKeys:
    """A reader with an empty cache, so every unwrap really goes to the KMS."""
    return SubjectKeys(transit, subjects.pii_key)


async def enrol_everyone(
    engine: AsyncEngine, transit: TransitClient, subjects: Subjects
) -> dict[str, dict[str, str]]:
    keys = fresh_keys(transit, subjects)
    return {await enrol(engine, keys, subjects, person): person for person in PEOPLE}


async def test_no_plaintext_is_stored_in_any_column(
    engine: AsyncEngine, transit: TransitClient, subjects: Subjects
) -> None:
    keys = fresh_keys(transit, subjects)
    enrolled = await enrol_everyone(engine, transit, subjects)
    data_keys = [await keys.unwrap(wrapped) for wrapped in await wrapped_keys(engine, subjects)]
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text(f'SELECT s::text FROM "{subjects.schema}".subjects s'))
        ).all()
    stored = "\n".join(row[0] for row in rows).lower()
    assert len(rows) == len(PEOPLE)
    for person in enrolled.values():
        for column in SEALED:
            value = person[column]
            forms = {value, value.strip(), "".join(ch for ch in value if ch.isalnum())}
            for form in forms:
                assert form.lower() not in stored, f"{column} {form!r} stored in plaintext"
            for word in value.replace("@", " ").replace(".", " ").split():
                if len(word) >= 4:
                    assert word.lower() not in stored
    for key in data_keys:
        assert key.hex() not in stored
        assert base64.b64encode(key).decode().lower() not in stored
    reader = fresh_keys(transit, subjects)
    for row_id, person in enrolled.items():
        assert await read_person(engine, reader, subjects, row_id) == person


async def test_lookup_by_blind_index_finds_the_subject(
    engine: AsyncEngine, transit: TransitClient, subjects: Subjects
) -> None:
    enrolled = await enrol_everyone(engine, transit, subjects)
    maria = next(rid for rid, p in enrolled.items() if p["name"] == "Maria da Silva")
    assert await find_by(engine, subjects, "email_bi", "  maria.silva@EXAMPLE.COM", "email") == [
        maria
    ]
    assert await find_by(engine, subjects, "document_bi", "12345678909", "document") == [maria]
    assert await find_by(engine, subjects, "email_bi", "nobody@example.com", "email") == []
    # The document number used as an e-mail index does not match: purposes are separated.
    assert await find_by(engine, subjects, "email_bi", "123.456.789-09", "email") == []


async def wrapped_keys(engine: AsyncEngine, subjects: Subjects) -> list[str]:
    query = select(subjects.table.c.data_key).where(subjects.table.c.data_key.is_not(None))
    async with engine.connect() as conn:
        return list((await conn.execute(query)).scalars())


async def sealed_columns(engine: AsyncEngine, subjects: Subjects) -> set[tuple[str, ...]]:
    columns = [subjects.table.c.id, *(subjects.table.c[name] for name in SEALED)]
    async with engine.connect() as conn:
        return {tuple(row) for row in (await conn.execute(select(*columns))).all()}


async def test_rotation_keeps_rows_readable_and_rewrap_moves_them_to_the_new_version(
    engine: AsyncEngine, transit: TransitClient, subjects: Subjects, settings: Settings
) -> None:
    enrolled = await enrol_everyone(engine, transit, subjects)
    assert all(w.startswith("vault:v1:") for w in await wrapped_keys(engine, subjects))
    sealed_before = await sealed_columns(engine, subjects)

    await transit.rotate(subjects.pii_key)
    reader = fresh_keys(transit, subjects)
    for row_id, person in enrolled.items():
        assert await read_person(engine, reader, subjects, row_id) == person

    keys = fresh_keys(transit, subjects)
    assert await keys.rewrap_all(engine, subjects.table, "data_key", batch_size=3) == len(PEOPLE)
    assert all(w.startswith("vault:v2:") for w in await wrapped_keys(engine, subjects))
    assert await sealed_columns(engine, subjects) == sealed_before
    assert await keys.rewrap_all(engine, subjects.table, "data_key") == 0

    # Version 1 is no longer needed: retire it, and everything still opens.
    admin = hvac.Client(
        url=settings.vault_addr, token=settings.vault_token, verify=str(settings.ca_file)
    )
    await asyncio.to_thread(
        admin.secrets.transit.update_key_configuration,
        subjects.pii_key,
        min_decryption_version=2,
    )
    reader = fresh_keys(transit, subjects)
    for row_id, person in enrolled.items():
        assert await read_person(engine, reader, subjects, row_id) == person


class ErasureDuringRewrap(SubjectKeys):
    """Real KMS rewraps, with one subject erased by another transaction while its key is
    being rewrapped: the race a rotation job must lose."""

    def __init__(self, transit: TransitClient, engine: AsyncEngine, subjects: Subjects) -> None:
        super().__init__(transit, subjects.pii_key)
        self.engine = engine
        self.subjects = subjects
        self.victim: str | None = None

    async def rewrap(self, wrapped: str) -> str:
        new = await super().rewrap(wrapped)
        if self.victim is None:
            table = self.subjects.table
            async with self.engine.begin() as conn:
                self.victim = (
                    await conn.execute(
                        update(table)
                        .where(table.c.data_key == wrapped)
                        .values(data_key=None)
                        .returning(table.c.id)
                    )
                ).scalar_one()
        return new


async def test_rewrap_job_never_resurrects_a_key_shredded_meanwhile(
    engine: AsyncEngine, transit: TransitClient, subjects: Subjects
) -> None:
    await enrol_everyone(engine, transit, subjects)
    await transit.rotate(subjects.pii_key)
    job = ErasureDuringRewrap(transit, engine, subjects)
    assert await job.rewrap_all(engine, subjects.table, "data_key") == len(PEOPLE) - 1
    table = subjects.table
    async with engine.connect() as conn:
        rows = (await conn.execute(select(table.c.id, table.c.data_key))).all()
    keys = {row_id: wrapped for row_id, wrapped in rows}
    assert job.victim is not None
    assert keys.pop(job.victim) is None
    assert all(wrapped.startswith("vault:v2:") for wrapped in keys.values())
