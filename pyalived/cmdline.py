"""Splitting a script line into its argv, as keepalived 2.2.7 does.

Theory of operation: ``split_command`` splits a script line the way
keepalived 2.2.7 does once the configuration lexer has handled backslashes:
on blanks, with single or double quotes grouping words (the quotes are
removed and adjacent pieces join, so ``g'h i'j`` is one word ``gh ij``); a
backslash is an ordinary character here.  It is pure and imports nothing, so
that the configuration reader (which finds each script's program, see
``pyalived.config.script_check``) and the script runners share it.
"""

from __future__ import annotations


def split_command(line: str) -> list[str]:
    """The argv of a script line (see the module docstring for the rules)."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    quote: str | None = None
    for ch in line:
        if quote is not None:
            if ch == quote:
                quote = None
            else:
                word.append(ch)
        elif ch in "'\"":
            quote = ch
            in_word = True
        elif ch in " \t\n\r":
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        else:
            word.append(ch)
            in_word = True
    if in_word:
        words.append("".join(word))
    return words
