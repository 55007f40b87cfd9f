"""Chat-template families: TRL's own table of templates and their `_training` twins, and the family
check behind issue 11 (`python -m sft_helpers.templates` prints it).

TRL ships, in `trl/chat_templates/`, the chat templates of the model families it knows (`qwen3.jinja`,
`llama3.jinja`, `gptoss.jinja`, ...) and, for most of them, a `*_training.jinja` twin with
`{% generation %}` markers that `SFTTrainer(assistant_only_loss=True)` swaps in when the tokenizer's
template is byte-identical to an original. `trl_twin` does that lookup (read from the installed TRL,
never copied here); `family_table` checks, for every family, that the package's assistant-only masks
equal TRL's, that a patched template renders byte-identically to the original (or is refused with a
reason), and that the sentinel-span method passes the mask self-check.
"""

from __future__ import annotations

from .trl_templates import PROBE_CONVERSATIONS, trl_families, with_template
from .masking import (
    MaskError,
    _text_of,
    assistant_only_labels,
    choose_assistant_method,
    generation_template,
    same_rendering,
)


def family_conversations(tokenizer, conversations: list[list[dict]] | None = None) -> list[list[dict]]:
    """`conversations` (default `PROBE_CONVERSATIONS`) in a shape the tokenizer's template renders:
    without the system message where the template refuses one (Gemma), and with content as a list of
    text blocks where the template ignores or rejects plain strings (Idefics3, SmolVLM, LLaVA-NeXT)."""
    def renders(msgs):
        try:
            text = tokenizer.apply_chat_template(msgs, tokenize=False)
        except Exception:  # the template's own refusal (TemplateError, TypeError, ...)
            return False
        return all(_text_of(m["content"]).strip() in text for m in msgs if m["role"] == "assistant")

    out = []
    for msgs in conversations or PROBE_CONVERSATIONS:
        candidates = [msgs, [m for m in msgs if m["role"] != "system"]]
        candidates += [[{**m, "content": [{"type": "text", "text": m["content"]}]} for m in c]
                       for c in candidates]
        out.append(next((c for c in candidates if renders(c)), msgs))
    return out


def family_row(family: str, tokenizer, conversations: list[list[dict]] | None = None, trl_masks=None) -> dict:
    """One family's checks on `conversations` (default `PROBE_CONVERSATIONS`, shaped by
    `family_conversations`) with `tokenizer`; `trl_masks`: TRL's masks or ValueError if already known.

    * `trl`: how TRL trains it: "own markers", "twin", or "refuses" (TRL raises ValueError);
    * `path`: the path `assistant_only_labels(method="auto")` takes (`choose_assistant_method`);
    * `patch`: "identical" when `generation_template` returns a template that renders byte-identically
      (`same_rendering`), "refused (...)" when it refuses, with the reason, "DIFFERS" otherwise;
    * `masks`: "== TRL" when ours equal TRL's ids and masks on every conversation (TRL-supported
      families), "self-check ok" when TRL refuses and our sentinel spans pass the self-check;
    * `spans`: the sentinel-span method on the original template: "ok" or the MaskError;
    * `green`: patch not DIFFERS and masks as required.
    """
    from .reference import trl_training_masks  # TRL is a dev dependency

    original, twin = trl_families()[family]
    tok = with_template(tokenizer, original)
    convs = family_conversations(tok, conversations)
    row = {"family": family}
    if trl_masks is None:
        try:
            trl_masks = trl_training_masks(tok, convs)
        except ValueError as e:
            trl_masks = e
    theirs = None if isinstance(trl_masks, ValueError) else trl_masks
    row["trl"] = "refuses" if theirs is None else "own markers" if twin is None else "twin"
    row["path"] = choose_assistant_method(tok)[2]
    try:
        patched, _ = generation_template(original)
        same_rendering(tok, patched, convs)
        row["patch"] = "identical"
    except ValueError as e:
        row["patch"] = "refused (twin renders differently)" if "renders differently" in str(e) else "refused"
    except AssertionError:
        row["patch"] = "DIFFERS"
    try:
        ours = [assistant_only_labels(tok, m) for m in convs]
        if theirs is None:
            row["masks"] = "self-check ok"
        else:
            same = all(o["input_ids"] == ids and [int(x != -100) for x in o["labels"]] == mask
                       for o, (ids, mask) in zip(ours, theirs))
            row["masks"] = "== TRL" if same else "DIFFER from TRL"
    except MaskError as e:
        row["masks"] = f"MaskError: {e}"
    try:
        for m in convs:
            assistant_only_labels(tok, m, method="offsets")
        row["spans"] = "ok"
    except MaskError as e:
        row["spans"] = f"MaskError: {str(e)[:50]}"
    row["green"] = row["patch"] != "DIFFERS" and row["masks"] in ("== TRL", "self-check ok")
    return row


def family_table(tokenizer=None, conversations: list[list[dict]] | None = None) -> list[dict]:
    """`family_row` for every family in the installed TRL's `chat_templates` folder (default
    tokenizer: the course's, `load_tokenizer("tiny")`)."""
    if tokenizer is None:
        from .models import load_tokenizer

        tokenizer = load_tokenizer("tiny", verbose=False)
    from .reference import _quiet

    _quiet()
    return [family_row(name, tokenizer, conversations) for name in trl_families()]


def format_table(rows: list[dict]) -> str:
    """The family table as fixed-width text, one family a line."""
    cols = ["family", "trl", "path", "patch", "masks", "spans", "green"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
    widths["green"] = 5
    line = lambda r: "  ".join(str(r[c]).ljust(widths[c]) for c in cols)  # noqa: E731
    return "\n".join([line({c: c for c in cols})] + [line({**r, "green": "yes" if r["green"] else "NO"})
                                                      for r in rows])


def main() -> None:
    rows = family_table()
    print(format_table(rows))
    print(f"{sum(r['green'] for r in rows)}/{len(rows)} families green")


if __name__ == "__main__":
    main()
