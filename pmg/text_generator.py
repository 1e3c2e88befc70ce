"""Greedy text continuation with a Hugging Face causal LM: PMG's keyword questions and long-text summaries."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from common.weights import model_not_available


@runtime_checkable
class TextGenerator(Protocol):
    """Anything that maps prompts to continuations (the prompt not repeated), in order."""

    def __call__(self, prompts: list[str]) -> list[str]: ...


class HFTextGenerator:
    """Greedy continuation with a transformers causal LM, loaded by name/path on first use.

    Args:
        model: hub name or local folder (e.g. ``meta-llama/Llama-2-7b-chat-hf``), or an already-built model.
        tokenizer: name/path or object; defaults to the model's own name/path.
        max_new_tokens: tokens generated per prompt (the reference code uses 100).
        batch_size: prompts per ``generate`` call (left padding; prompts sorted by length first).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda:0`` ...; ignored for a built model.
        dtype: ``auto`` (bf16 on CUDA, fp32 on CPU), ``float32``, ``bfloat16``, ``float16``.
    """

    def __init__(
        self,
        model: str | Any = "meta-llama/Llama-2-7b-chat-hf",
        tokenizer: str | Any | None = None,
        max_new_tokens: int = 100,
        batch_size: int = 4,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        self._model_arg, self._tok_arg = model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, max(1, batch_size)
        self.device, self.dtype = device, dtype
        self.model = None if isinstance(model, str) else model
        self.tokenizer = None if tokenizer is None or isinstance(tokenizer, str) else tokenizer
        self._ready = False

    @property
    def model_id(self) -> str:
        if isinstance(self._model_arg, str):
            return self._model_arg
        cfg = getattr(self._model_arg, "config", None)
        return getattr(cfg, "_name_or_path", "") or type(self._model_arg).__name__

    @property
    def decoding(self) -> dict:
        return {"do_sample": False, "max_new_tokens": self.max_new_tokens}

    def load(self) -> None:
        """Load missing model/tokenizer (offline errors name what to download) and set left padding."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.model is None:
            device = self.device if self.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
            if self.dtype == "auto":
                dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
            else:
                dtype = getattr(torch, self.dtype)
            try:
                self.model = AutoModelForCausalLM.from_pretrained(self._model_arg, dtype=dtype).to(device)
            except (OSError, ValueError) as e:
                raise model_not_available(self._model_arg, "LLM", "meta-llama/Llama-2-7b-chat-hf", e) from e
        self.model.eval()
        if self.tokenizer is None:
            name = self._tok_arg or (self._model_arg if isinstance(self._model_arg, str) else self.model_id)
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(name)
            except (OSError, ValueError) as e:
                raise model_not_available(name, "tokenizer", "meta-llama/Llama-2-7b-chat-hf", e) from e
        self.tokenizer.padding_side = "left"  # decoder-only batches continue from the right edge
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self._ready = True

    def __call__(self, prompts: list[str]) -> list[str]:
        import torch
        from transformers import GenerationConfig

        if not self._ready:
            self.load()
        tok, model = self.tokenizer, self.model
        gen_cfg = GenerationConfig(
            do_sample=False, max_new_tokens=self.max_new_tokens,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        )
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        device = next(model.parameters()).device
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, return_token_type_ids=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.inference_mode():
                ids = model.generate(**enc, generation_config=gen_cfg)
            texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, t in zip(idx, texts):
                out[i] = t
        return out
