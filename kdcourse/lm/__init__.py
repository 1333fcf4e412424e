"""Distilling language models on a CPU: a tiny GPT, a reasoning task, token- and sequence-level KD.

Introduced in notebook 08. Sub-modules: `task` (tokenizer and the last-digit calculator),
`model` (minGPT-like transformer, KV-cached sampling), `losses` (masked token-level forward KL,
reverse KL, generalized JSD), `train` (training loop, exact match, checksummed cache).
"""
from . import losses, model, task, train
from .losses import masked_mean, token_divergence, token_forward_kl, token_gjsd, token_kd_loss, token_reverse_kl
from .model import GPT, generate
from .task import (EOS, PAD, VOCAB, Tokenizer, completion, encode_examples, encode_prompts, final_answer,
                   is_correct, make_questions, scratchpad, solve, tokenizer)
from .train import (TEACHER_RECIPE, answer, cached_lm, exact_match, get_lm_teacher, lm_cache_paths, lr_at,
                    teacher_forced_accuracy, teacher_logits, tokens_per_answer, train_lm, train_student)

__all__ = ["losses", "model", "task", "train", "masked_mean", "token_divergence", "token_forward_kl",
           "token_gjsd", "token_kd_loss", "token_reverse_kl", "GPT", "generate", "EOS", "PAD", "VOCAB",
           "Tokenizer", "completion", "encode_examples", "encode_prompts", "final_answer", "is_correct",
           "make_questions", "scratchpad", "solve", "tokenizer", "answer", "cached_lm", "exact_match",
           "lm_cache_paths", "lr_at", "teacher_logits", "tokens_per_answer", "train_lm", "TEACHER_RECIPE",
           "get_lm_teacher", "train_student", "teacher_forced_accuracy"]
