"""Diagnostics redaction measured on a corpus (tests/unit/redaction_corpus.py): every secret form
removed, every near-miss line kept byte for byte. The numbers go to docs/reliability.md."""

from __future__ import annotations

import io

from tasks.redaction import Redactor
from tests.unit.redaction_corpus import NEAR_MISSES, SECRETS


def redact(text: str) -> str:
    out = io.BytesIO()
    Redactor().stream(io.BytesIO(text.encode() + b"\n"), out)
    return out.getvalue().decode()[:-1] if out.getvalue().endswith(b"\n") else out.getvalue().decode()


def test_the_corpus_is_large_enough() -> None:
    assert len(SECRETS) >= 100 and len(NEAR_MISSES) >= len(SECRETS)


def test_recall_on_secret_forms() -> None:
    leaked = [(text, secret) for text, secret in SECRETS if secret in redact(text)]
    recall = 1 - len(leaked) / len(SECRETS)
    print(f"redaction recall: {len(SECRETS) - len(leaked)}/{len(SECRETS)} = {recall:.1%}")
    assert recall >= 0.99, "\n".join(f"LEAKED {secret!r} in {redact(text)!r}" for text, secret in leaked)


def test_false_positives_on_near_misses() -> None:
    changed = [(text, redact(text)) for text in NEAR_MISSES if redact(text) != text]
    print(f"redaction false positives: {len(changed)}/{len(NEAR_MISSES)}")
    assert len(changed) <= len(NEAR_MISSES) // 50, "\n".join(f"CHANGED {a!r} -> {b!r}" for a, b in changed)
