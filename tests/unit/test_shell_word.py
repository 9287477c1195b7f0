"""flows/report.py `shell_word`: a name quoted into a command an operator copies from one terminal line
(`prefect gcl update NAME`) is all printable and reads back, in bash, as the very name (adv43)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from flows.report import shell_word

NAMES = ["clusters", "a b", "it's", "back\\slash", "x\x1b]0;owned\x07\x1b[2J", "a\nb", "tab\there", "\u2028"]


@pytest.mark.parametrize("name", NAMES)
def test_a_shell_word_is_printable_and_bash_reads_back_the_name(name: str) -> None:
    word = shell_word(name)
    assert word.isprintable(), repr(word)
    bash = shutil.which("bash")
    assert bash is not None
    said = subprocess.run([bash, "-c", f"printf %s {word}"], capture_output=True, text=True, check=True)
    assert said.stdout == name
