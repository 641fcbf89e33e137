"""An Ollama ``Modelfile`` for an exported GGUF: ``FROM ./model.gguf`` and the chat template.

A GGUF carries its chat template as Jinja (``tokenizer.chat_template``); Ollama wants Go
template syntax. The two families kedit recognises are converted: ChatML (``<|im_start|>``:
SmolLM2, Qwen) and Llama-3 headers (``<|start_header_id|>``), with their stop token and the
default system prompt the Jinja adds when a conversation has none. Any other template is passed
through as a comment with a note: Ollama then uses its own detection on the GGUF's metadata.
"""

from __future__ import annotations

import re

_CHATML = '''{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
'''
_LLAMA3 = '''{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

'''


def modelfile(chat_template: str | None, gguf_name: str = "model.gguf") -> str:
    lines = [f"FROM ./{gguf_name}", ""]
    if not chat_template:
        return "\n".join(lines + ["# The GGUF carries no chat template: Ollama will use the model for plain completion.", ""])
    if "<|im_start|>" in chat_template:
        lines += _with_template(_CHATML, "<|im_end|>", _default_system(chat_template, r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>"))
    elif "<|start_header_id|>" in chat_template:
        system = _default_system(chat_template, r"<\|start_header_id\|>system<\|end_header_id\|>(?:\n|\\n)+(.*?)<\|eot_id\|>")
        lines += _with_template(_LLAMA3, "<|eot_id|>", system)
    else:
        lines += [
            "# The chat template this GGUF carries (Jinja) is not one kedit converts to Ollama's Go template syntax.",
            "# Ollama reads the template from the GGUF's metadata when it recognises it; otherwise write a TEMPLATE",
            "# line here (https://github.com/ollama/ollama/blob/main/docs/template.md). The Jinja template:",
            *("#   " + line for line in chat_template.splitlines()),
            "",
        ]
    return "\n".join(lines)


def _with_template(template: str, stop: str, system: str | None) -> list[str]:
    out = [f'TEMPLATE """{template}"""', f'PARAMETER stop "{stop}"']
    if system:
        out.append(f'SYSTEM """{system}"""')
    return out + [""]


def _default_system(jinja: str, pattern: str) -> str | None:
    """The literal system prompt a Jinja template inserts when the conversation has none."""
    m = re.search(pattern, jinja, flags=re.S)
    if m is None or "{{" in m.group(1) or "{%" in m.group(1):
        return None
    return m.group(1).strip() or None
