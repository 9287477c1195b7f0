"""Diagnostics redaction as the fault suite records it, so docs/reliability.md carries its recall and
false positives from the same run as everything else (issue #14): the corpus of secret forms and
near misses (tests/unit/redaction_corpus.py) and the forms the adversarial pass found leaking
(tests/unit/test_redaction_adversarial.py), through the streaming redactor diagnostics use. The unit
tests hold the same lines one by one; this measures them as a whole."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.redaction_corpus import NEAR_MISSES, SECRETS
from tests.unit.test_redaction_adversarial import LEAKED, SURVIVE
from tests.unit.test_redaction_corpus import redact

pytestmark = [pytest.mark.faults]

CORPUS = (
    "diagnostics redaction (tasks/redaction.py, detect-secrets rules) on tests/unit/redaction_corpus.py: "
    "secret forms in key=value, JSON, YAML incl. next-line and block values, URLs, command lines, env "
    "dumps, headers, vendor token formats, PEM blocks"
)


def test_recall_on_the_secret_corpus(record: Any) -> None:
    leaked = [(text, secret) for text, secret in SECRETS if secret in redact(text)]
    kept = len(SECRETS) - len(leaked)
    missed = "; missed: " + ", ".join(repr(text) for text, _ in leaked) if leaked else ""
    record(
        "secrets", CORPUS, len(SECRETS), f"recall {kept}/{len(SECRETS)} ({kept / len(SECRETS):.1%}){missed}"
    )
    assert kept / len(SECRETS) >= 0.99, "\n".join(
        f"LEAKED {secret!r} in {redact(t)!r}" for t, secret in leaked
    )


def test_false_positives_on_near_misses(record: Any) -> None:
    changed = [text for text in NEAR_MISSES if redact(text) != text]
    record(
        "secrets",
        "diagnostics redaction: near-miss lines that must survive byte for byte (passed, bypass, "
        "tokenizer, PWD=/path, max_tokens, placeholders, hashes, UUIDs, public keys, certificates)",
        len(NEAR_MISSES),
        f"false positives {len(changed)}/{len(NEAR_MISSES)} ({len(changed) / len(NEAR_MISSES):.1%})",
    )
    assert len(changed) <= len(NEAR_MISSES) // 50, "\n".join(
        f"CHANGED {t!r} -> {redact(t)!r}" for t in changed
    )


def test_forms_the_adversarial_pass_found(record: Any) -> None:
    leaked = [form for form, (text, secret) in LEAKED.items() if secret in redact(text)]
    changed = [line for line in SURVIVE if redact(line) != line]
    record(
        "secrets",
        "diagnostics redaction, adversarial pass: .netrc, XML and .NET appSettings, Cookie headers, "
        "signing/encryption/master keys, tab-separated env dumps, crypt(3) hashes, bare npm_, sk-proj-, "
        "hvs., dop_v1_, shpat_ tokens, and near misses next to them",
        len(LEAKED) + len(SURVIVE),
        f"{len(LEAKED) - len(leaked)}/{len(LEAKED)} forms redacted, {len(SURVIVE) - len(changed)}/"
        f"{len(SURVIVE)} near misses kept",
    )
    assert not leaked and not changed, (leaked, changed)
