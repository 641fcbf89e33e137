"""Chat turns: a prompt as the tokenizer's chat template renders it for an instruct model.

``chat_text`` is one user turn (after an optional system prompt) followed by the opening of the
assistant's turn, so the model's next tokens are its answer. The rendered text carries the
template's own special tokens (a BOS where the template writes one); ``tokens.ids`` then adds
none twice.
"""

from __future__ import annotations

from kedit.errors import UsageError

CHAT_NEW_TOKENS = 24  # a chat answer restates the question before the fact: longer than a completion


def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def chat_text(tok, user: str, system: str | None = None) -> str:
    """``user`` as a chat turn, ready for the assistant's answer."""
    if not has_chat_template(tok):
        raise UsageError("this model's tokenizer has no chat template, so it cannot be asked as a chat",
                         hint="ask without --chat (a plain completion prompt)")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_rewrite_template(tok, template: str, subject: str) -> str:
    """A rewrite prompt as a chat answer: the user asks ``template`` (filled with the subject) and
    the assistant's turn restates it with ``{}`` still in place, the way instruct models answer
    ("The Eiffel Tower is located in the city of Paris."), so the target follows the subject."""
    return chat_text(tok, template.replace("{}", subject)) + template


def chat_restated(tok, prompt: str, system: str | None = None) -> str:
    """``prompt`` asked as a chat turn, with the assistant's answer begun by restating it: the
    teacher-forced form of a chat answer ("…assistant\\nThe Eiffel Tower is located in the city of")."""
    return chat_text(tok, prompt, system) + prompt
