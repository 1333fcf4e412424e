"""The "last-digit calculator": a tiny reasoning task with a scratchpad. Introduced in notebook 08.

A question is a start digit and `n_ops` operations, each ``+d`` (d in 1..9) or ``*d`` (d in
{3, 7, 9}), applied left to right keeping only the last digit::

    3*7+2*9*3+4=            question (prompt)
    1;3;7;1;#5$             scratchpad answer: every intermediate last digit, then "#", the answer, EOS
    #5$                     direct answer: the answer alone

The tokenizer maps each character to one token of a 17-symbol vocabulary. Everything is
generated locally from a seed; nothing is downloaded.
"""
from __future__ import annotations

import torch

__all__ = ["VOCAB", "PAD", "EOS", "Tokenizer", "tokenizer", "make_questions", "solve", "scratchpad",
           "completion", "encode_examples", "encode_prompts", "final_answer", "is_correct"]

VOCAB = "_$0123456789+*=;#"   # "_" pads, "$" ends an answer
PAD, EOS = 0, 1
MUL_DIGITS = (3, 7, 9)


class Tokenizer:
    """Character-level tokenizer over `VOCAB`: encode(str) -> list[int], decode(list[int]) -> str."""

    def __init__(self, vocab: str = VOCAB):
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocabulary symbols must be distinct")
        self.vocab = vocab
        self.index = {c: i for i, c in enumerate(vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; a symbol outside the vocabulary raises a KeyError naming it."""
        bad = sorted({c for c in text if c not in self.index})
        if bad:
            raise KeyError(f"symbols {bad} are not in the vocabulary {self.vocab!r}")
        return [self.index[c] for c in text]

    def decode(self, ids, *, strip: bool = True) -> str:
        """Text of token ids (a list or 1-D tensor); `strip` drops pads and stops at the first EOS."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if strip:
            ids = [i for i in ids if i != PAD]
            if EOS in ids:
                ids = ids[:ids.index(EOS) + 1]
        return "".join(self.vocab[i] for i in ids)


tokenizer = Tokenizer()


def make_questions(n: int, *, n_ops: int = 5, seed: int = 0, exclude=()) -> list[str]:
    """`n` distinct random questions like "3*7+2*9*3+4=" (none of them in `exclude`)."""
    if n < 0 or n_ops < 1:
        raise ValueError(f"need n >= 0 and n_ops >= 1, got n={n}, n_ops={n_ops}")
    if n > 0.5 * 10 * 12 ** n_ops:
        raise ValueError(f"{n} distinct questions is too many for n_ops={n_ops}")
    g = torch.Generator().manual_seed(seed)
    seen, out = set(exclude), []
    while len(out) < n:
        r = torch.randint(0, 1 << 30, (1 + 2 * n_ops,), generator=g).tolist()
        q = str(r[0] % 10)
        for k in range(n_ops):
            mul = r[1 + 2 * k] % 2 == 1
            d = MUL_DIGITS[r[2 + 2 * k] % 3] if mul else 1 + r[2 + 2 * k] % 9
            q += f"{'*' if mul else '+'}{d}"
        q += "="
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out


def solve(question: str) -> list[int]:
    """The last digit after each operation of `question`; the final answer is the last entry."""
    body = question.rstrip("=")
    if len(body) < 3 or len(body) % 2 == 0 or not body[0].isdigit():
        raise ValueError(f"malformed question {question!r}; expected e.g. '3*7+2='")
    x, steps = int(body[0]), []
    for op, d in zip(body[1::2], body[2::2]):
        if op not in "+*" or not d.isdigit():
            raise ValueError(f"malformed question {question!r}: bad operation {op}{d}")
        x = (x + int(d)) % 10 if op == "+" else (x * int(d)) % 10
        steps.append(x)
    return steps


def scratchpad(question: str) -> str:
    """The step-by-step answer "1;3;7;1;#5$": intermediate digits, then "#", the answer and EOS."""
    steps = solve(question)
    return "".join(f"{s};" for s in steps[:-1]) + f"#{steps[-1]}$"


def completion(question: str, *, cot: bool) -> str:
    """The target completion: the scratchpad (`cot=True`) or the direct answer "#5$"."""
    return scratchpad(question) if cot else f"#{solve(question)[-1]}$"


def encode_examples(prompts, completions, *, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing tensors for prompt + completion texts: inputs x and targets y, both (N, length).

    x = tokens[:-1] right-padded with PAD; y = tokens[1:] with -100 on the prompt (no loss on the
    question) and on the padding, so only completion tokens are learned.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    x = torch.full((len(prompts), length), PAD, dtype=torch.long)
    y = torch.full((len(prompts), length), -100, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids = tokenizer.encode(p + c)
        if len(ids) - 1 > length:
            raise ValueError(f"example {p + c!r} needs length {len(ids) - 1} > {length}")
        x[i, :len(ids) - 1] = torch.tensor(ids[:-1])
        y[i, len(p) - 1:len(ids) - 1] = torch.tensor(ids[len(p):])
    return x, y


def encode_prompts(prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt tokens (B, L) and their validity mask (B, L) (False on the left pads)."""
    ids = [tokenizer.encode(p) for p in prompts]
    length = max(len(i) for i in ids)
    x = torch.full((len(ids), length), PAD, dtype=torch.long)
    valid = torch.zeros((len(ids), length), dtype=torch.bool)
    for r, i in enumerate(ids):
        x[r, length - len(i):] = torch.tensor(i)
        valid[r, length - len(i):] = True
    return x, valid


def final_answer(text: str) -> int | None:
    """The digit after the last "#" of a generated completion, or None when there is none."""
    k = text.rfind("#")
    return int(text[k + 1]) if k >= 0 and k + 1 < len(text) and text[k + 1].isdigit() else None


def is_correct(question: str, text: str) -> bool:
    """Exact match of the final answer of completion `text` with the true answer of `question`."""
    return final_answer(text) == solve(question)[-1]
