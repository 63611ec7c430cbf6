"""An Ollama ``Modelfile`` for an exported GGUF: the chat template in Ollama's Go-template form, stop tokens.

Ollama's templates are Go templates, not Jinja, so the base's chat template
is translated for the families traitgraph knows; ChatML (``<|im_start|>``,
the template of SmolLM2 and Qwen) is the one shipped. For another template
the Modelfile has no ``TEMPLATE`` line and Ollama falls back to the chat
template stored in the GGUF's metadata (``tokenizer.chat_template``).

>>> print(modelfile_text("p-f16.gguf", "{{'<|im_start|>' + message['role']}}", "<|im_end|>").splitlines()[0])
FROM ./p-f16.gguf
"""

from __future__ import annotations

import re

CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


def default_system_prompt(chat_template: str) -> str | None:
    """The system prompt a ChatML Jinja template inserts when the chat has none, if it has one."""
    match = re.search(r"<\|im_start\|>system\\n(.*?)<\|im_end\|>", chat_template) or re.search(
        r"<\|im_start\|>system\n(.*?)<\|im_end\|>", chat_template, re.S
    )
    return match.group(1) if match else None


def modelfile_text(gguf_name: str, chat_template: str | None, eos_token: str | None) -> str:
    """The Modelfile beside ``gguf_name`` (a file name in the same directory)."""
    lines = [f"FROM ./{gguf_name}", ""]
    stops = [eos_token] if eos_token else []
    if chat_template and "<|im_start|>" in chat_template:
        lines += [f'TEMPLATE """{CHATML_TEMPLATE}"""', ""]
        system = default_system_prompt(chat_template)
        if system:
            lines += [f'SYSTEM """{system}"""', ""]
        stops += ["<|im_end|>", "<|im_start|>"]
    else:
        lines += ["# the chat template is the one in the GGUF's metadata (tokenizer.chat_template)", ""]
    for stop in dict.fromkeys(stops):
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines).rstrip() + "\n"
