"""Check a learner's exercise function against the package's on random inputs.

Introduced in notebook 00. ``check(my_fn, kd.losses.kd_loss, inputs=..., hint=...)`` prints
a friendly pass/fail line and returns True/False; an untouched stub that raises
NotImplementedError is reported as "not attempted yet" (None), so notebooks still run.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["check"]


def _close(a, b, atol: float, rtol: float) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_close(x, y, atol, rtol) for x, y in zip(a, b))
    return abs(float(a) - float(b)) <= atol + rtol * abs(float(b))


def check(fn: Callable, reference: Callable, *, inputs: Callable[[torch.Generator], tuple | dict],
          trials: int = 5, atol: float = 1e-5, rtol: float = 1e-4, hint: str = "",
          name: str | None = None, verbose: bool = True) -> bool | None:
    """Compare ``fn(*args)`` with ``reference(*args)`` on `trials` random inputs.

    inputs(gen) returns the positional args (tuple) or keyword args (dict) for one trial,
    drawn with the torch.Generator `gen` (seeded 0, 1, ...). Returns True (all match),
    False (a mismatch or an error; the first is printed with `hint`), or None when `fn`
    raises NotImplementedError (exercise not attempted yet). verbose=False prints nothing (used by
    the solution cells to show, silently, that a known wrong answer is rejected).
    """
    say = print if verbose else (lambda *_: None)
    name = name or getattr(fn, "__name__", "your function")
    for trial in range(trials):
        args = inputs(torch.Generator().manual_seed(trial))
        call = (lambda f: f(**args)) if isinstance(args, dict) else (lambda f: f(*args))
        try:
            got = call(fn)
        except NotImplementedError:
            say(f"⏳ {name}: not attempted yet — replace the `raise NotImplementedError` and run again.")
            return None
        except Exception as err:  # a learner's bug: report it, don't crash the notebook
            say(f"❌ {name} raised {type(err).__name__}: {err}" + (f"\n   Hint: {hint}" if hint else ""))
            return False
        want = call(reference)
        if not _close(got, want, atol, rtol):
            say(f"❌ {name} differs from the reference on trial {trial}." + (f"\n   Hint: {hint}" if hint else ""))
            return False
    say(f"✅ {name} matches the reference on {trials} random inputs.")
    return True
