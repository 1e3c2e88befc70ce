"""The one error for model weights that cannot be loaded here, with a message saying what to download.

No code path falls back to random weights when real ones are missing; every loader (T5 backbone and tokenizer,
LLM, Stable Diffusion, image captioner, CLIP) raises :class:`ModelNotAvailableError` instead, with the same kind
of message: what could not be loaded, why, and the command that fetches it on a machine with network access.
"""

from __future__ import annotations


class ModelNotAvailableError(FileNotFoundError, RuntimeError):
    """Model weights could not be loaded (offline, or a wrong path). The message says what to download.

    A ``FileNotFoundError`` (an ``OSError``) like the loaders' own errors, and a ``RuntimeError`` like open_clip's.
    """


def _cause(err: BaseException | None) -> str:
    if err is None:
        return ""
    text = str(err).strip()
    return f" ({type(err).__name__}: {text.splitlines()[0]})" if text else f" ({type(err).__name__})"


def model_not_available(
    name: str, what: str, example: str | None = None, err: BaseException | None = None, where: str = ""
) -> ModelNotAvailableError:
    """The error for a Hugging Face model ``name`` that cannot be loaded.

    Args:
        name: the hub name or folder that was asked for.
        what: what it is ("LLM", "tokenizer", "Stable Diffusion model" ...).
        example: the hub repository to download; ``name`` by default.
        err: the loader's own error, quoted in one line.
        where: a hint saying which option takes the downloaded folder (e.g. "the config's `llm`").
    """
    example = example or name
    target = f"pass its path as {where}" if where else f"pass its path instead of {name!r}"
    return ModelNotAvailableError(
        f"Could not load the {what} {name!r}{_cause(err)}. No hub access here and no random weights are "
        f"substituted. On a machine with network access run `hf download {example} --local-dir <dir>` (gated "
        f"models need their licence accepted on huggingface.co first; huggingface_hub < 1.0: `huggingface-cli "
        f"download`), copy <dir> here and {target}, or pre-fill the Hugging Face cache for that name "
        f"($HF_HOME/hub, default ~/.cache/huggingface/hub)."
    )
