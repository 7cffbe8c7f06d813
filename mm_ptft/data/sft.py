"""Instruction-tuning data for causal LMs: prompt/response rows or chat ``messages`` turned into token ids with the
prompt masked out of the loss, a padding collator, and packing several samples into one row.

**Templates.** A tokenizer with a chat template formats both forms through ``apply_chat_template`` (the prompt:
every message but the last, with the generation prompt; the response: what the whole conversation adds to it).
A tokenizer without one uses the plain template ``PLAIN_TEMPLATE`` (system text, then each turn as
``### <Role>:\\n<text>\\n``, then ``### Assistant:\\n``) — documented in docs/generative.md. The response always ends
with the tokenizer's EOS token, so a trained model stops.

**Sample** (one record): ``text`` prompt+response ids, ``labels`` the same ids with -100 on the prompt,
``prompt_len``, ``reference`` (the response text, for generation metrics)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from mm_ptft.data.tables import DataError
from mm_ptft.types import IGNORE_INDEX as IGNORE, LABELS, POSITIONS, PROMPT, PROMPT_MASK, REFERENCE, TEXT, \
    TEXT_MASK

ROLES = ("system", "user", "assistant")
PLAIN_TEMPLATE = "### {Role}:\n{content}\n"  # one turn of the plain template; the prompt ends with "### Assistant:\n"
#: the plain template as a Jinja chat template (what ``encode_chat`` renders without one), written into an exported
#: tokenizer so that ``apply_chat_template(messages, add_generation_prompt=True)`` gives the prompts ``predict`` gives
PLAIN_CHAT_TEMPLATE = ("{% if bos_token %}{{ bos_token }}{% endif %}{% for m in messages %}"
                       "### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n{% endfor %}"
                       "{% if add_generation_prompt %}### Assistant:\n{% endif %}")
UNPACKED = "_unpacked"  # a sample key: collate this one padded even where training packs (evaluation samples)


def bad_row(where: str, row: int, what: str) -> DataError:
    return DataError(f"{where}: row {row}: {what} (set data.skip_bad_samples=true to skip such rows)")


def check_messages(messages: Any, where: str, row: int) -> list[dict[str, str]]:
    """A chat: a list of ``{role, content}`` with known roles, ending with a non-empty assistant turn."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise bad_row(where, row, "messages must be a non-empty list of {role, content}")
    out = []
    for m in messages:
        role, content = (m.get("role"), m.get("content")) if isinstance(m, Mapping) else (None, None)
        if role not in ROLES:
            raise bad_row(where, row, f"unknown message role {role!r} (known: {list(ROLES)})")
        if not isinstance(content, str):
            raise bad_row(where, row, f"a {role} message without text content")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant" or not out[-1]["content"].strip():
        raise bad_row(where, row, "the last message must be a non-empty assistant turn (the response to learn)")
    return out


def plain_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """The plain template of every turn, then the assistant header the response follows."""
    turns = "".join(PLAIN_TEMPLATE.format(Role=m["role"].capitalize(), content=m["content"]) for m in messages)
    return turns + "### Assistant:\n"


def template_texts(rows: int = 1) -> list[str]:
    """The plain template's own text (every role's header and the assistant prompt), ``rows`` times: what a vocabulary
    learned from the data must also learn, so that the template never tokenises to unknown tokens (a corpus of digit
    sums has no ``#`` nor the letters of ``User``). Repeated per data row, as often as the template occurs in it."""
    headers = "".join(PLAIN_TEMPLATE.format(Role=r.capitalize(), content="") for r in ROLES)
    return [headers] * max(int(rows), 1)


def check_template(tokenizer: Any, where: str) -> None:
    """A tokenizer without a chat template must tokenise the plain template's headers without unknown tokens (else a
    trained model could not tell the turns apart): a ValueError naming ``where`` otherwise."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if getattr(tokenizer, "chat_template", None) or unk is None:
        return
    text = template_texts()[0]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if unk in ids:
        raise ValueError(f"{where}: the tokenizer turns the plain prompt template {text!r} into unknown tokens "
                         f"({tokenizer.convert_ids_to_tokens(ids)}); give a tokenizer with a chat template or "
                         f"one whose vocabulary covers the template, or leave {where}.tokenizer unset to learn one")


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a checked chat: the tokenizer's chat template where it has one, else plain."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)
        full = tokenizer.apply_chat_template(messages, tokenize=True)
        prompt, full = list(_ids(prompt)), list(_ids(full))
        if full[: len(prompt)] != prompt:
            raise DataError("the tokenizer's chat template renders the prompt differently inside the whole chat; "
                            "the response cannot be told apart (give a tokenizer whose template is prefix-stable)")
        return prompt, full[len(prompt):]
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    prompt = bos + tokenizer(plain_prompt(messages[:-1]), add_special_tokens=False)["input_ids"]
    response = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"] + eos
    return prompt, response


def _ids(x: Any) -> Sequence[int]:
    return x["input_ids"] if isinstance(x, Mapping) else x


def as_messages(row: Mapping[str, Any], cols: Mapping[str, str]) -> list[dict[str, str]]:
    """A prompt/response row as a two-turn chat (the messages column as it is)."""
    if cols["messages"] in row:
        return row[cols["messages"]]
    prompt, response = row.get(cols["prompt"]), row.get(cols["response"])
    return [{"role": "user", "content": prompt if isinstance(prompt, str) else None},
            {"role": "assistant", "content": response if isinstance(response, str) else ""}]


def sft_sample(tokenizer: Any, row: Mapping[str, Any], cols: Mapping[str, str], max_length: int, where: str,
               index: int, counters: dict[str, int], truncate: str = "left") -> dict[str, Any]:
    """One record of a row. A sample over ``max_length`` tokens loses prompt tokens from the left (counted as
    ``truncated_prompts``) when ``truncate="left"``, else is a DataError; a response alone over the limit always is."""
    messages = check_messages(as_messages(row, cols), where, index)
    prompt, response = encode_chat(tokenizer, messages)
    if len(response) >= max_length:
        raise bad_row(where, index, f"the response is {len(response)} tokens, the context limit {max_length} "
                                 f"(raise data.max_length)")
    over = len(prompt) + len(response) - max_length
    if over > 0:
        if truncate != "left":
            raise bad_row(where, index, f"prompt+response is {over} tokens over data.max_length={max_length} "
                                     f"(data.truncate=left drops the prompt's first tokens instead)")
        prompt = prompt[over:]
        counters["truncated_prompts"] = counters.get("truncated_prompts", 0) + 1
    ids = prompt + response
    return {TEXT: ids, LABELS: [IGNORE] * len(prompt) + response, "prompt_len": len(prompt),
            REFERENCE: messages[-1]["content"]}


def sft_records(tokenizer: Any, rows: Sequence[Mapping[str, Any]], cols: Mapping[str, str], max_length: int,
                where: str, skip_bad: bool, counters: dict[str, int], truncate: str = "left",
                row_numbers: Optional[Sequence[int]] = None) -> list[dict[str, Any]]:
    """``sft_sample`` of every row; a bad row is its DataError, or with ``skip_bad`` a ``skipped_bad_samples`` count."""
    return counted_records(lambda row, i: sft_sample(tokenizer, row, cols, max_length, where, i, counters, truncate),
                           rows, skip_bad, counters, row_numbers)


def counted_records(sample: Callable[[Mapping[str, Any], int], dict[str, Any]], rows: Sequence[Mapping[str, Any]],
                    skip_bad: bool, counters: dict[str, int],
                    row_numbers: Optional[Sequence[int]] = None) -> list[dict[str, Any]]:
    """``sample(row, row number)`` of every row; a bad row is its DataError, or with ``skip_bad`` a counted skip
    (``skipped_bad_samples``)."""
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(sample(row, row_numbers[i] if row_numbers else i))
        except DataError:
            if not skip_bad:
                raise
            counters["skipped_bad_samples"] = counters.get("skipped_bad_samples", 0) + 1
    return out


def pad_rows(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    """(B, L) long tensor of ``rows`` padded with ``value`` to the longest (on the left for generation prompts)."""
    longest = max(len(r) for r in rows)
    out = torch.full((len(rows), longest), value, dtype=torch.long)  # (B, L)
    for i, r in enumerate(rows):
        if len(r):
            (out[i, longest - len(r):] if left else out[i, : len(r)]).copy_(torch.as_tensor(r))
    return out


class SFTCollator:
    """Right-padded ``text``/``text_mask``/``labels`` (-100 on prompt and padding) for the loss, and the left-padded
    prompts (``prompt``/``prompt_mask``) with their ``reference`` responses for generation.

    ``pack=True`` (training; samples marked ``UNPACKED`` are padded): the samples are laid end to end in rows of at most ``pack_length`` tokens (first fit,
    in the order given), with ``position_ids`` restarting at 0 for each sample and no attention mask; the model's
    attention then keeps each sample to itself (checked by ``CausalLMTask.check_packing`` when the task is built)."""

    def __init__(self, pad_id: int, pack: bool = False, pack_length: int = 0, multiple_of: int = 1) -> None:
        self.pad_id, self.pack, self.pack_length, self.multiple_of = pad_id, pack, pack_length, multiple_of

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if self.pack and not items[0].get(UNPACKED):
            return self.packed(items)
        batch = {TEXT: pad_rows([it[TEXT] for it in items], self.pad_id),  # (B, L)
                 LABELS: pad_rows([it[LABELS] for it in items], IGNORE)}  # (B, L)
        batch[TEXT_MASK] = pad_rows([[1] * len(it[TEXT]) for it in items], 0)  # (B, L)
        prompts = [it[TEXT][: it["prompt_len"]] for it in items]
        batch[PROMPT] = pad_rows(prompts, self.pad_id, left=True)  # (B, P)
        batch[PROMPT_MASK] = pad_rows([[1] * len(p) for p in prompts], 0, left=True)  # (B, P)
        batch[REFERENCE] = [it[REFERENCE] for it in items]
        return batch

    def packed(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        rows: list[list[dict[str, Any]]] = []
        for it in items:
            room = [r for r in rows if sum(len(x[TEXT]) for x in r) + len(it[TEXT]) <= self.pack_length]
            (room[0] if room else rows.append([]) or rows[-1]).append(it)
        ids = [[t for x in r for t in x[TEXT]] for r in rows]
        # a sample's first label is never learned from the previous sample's last token
        labels = [[t for x in r for t in [IGNORE, *x[LABELS][1:]]] for r in rows]
        pos = [[p for x in r for p in range(len(x[TEXT]))] for r in rows]
        longest = max(len(r) for r in ids)
        tail = [list(range(longest - len(r))) for r in ids]  # padding: one more "sample", never learned
        return {TEXT: pad_rows(ids, self.pad_id), LABELS: pad_rows(labels, IGNORE),  # (B, L)
                POSITIONS: pad_rows([p + t for p, t in zip(pos, tail)], 0),  # (B, L)
                "packed_samples": torch.tensor([len(r) for r in rows])}  # (B,)


def sft_length(item: Mapping[str, Any]) -> int:
    return len(item[TEXT])



class SFTRow:
    """A streamed record → an SFT sample (``data.stream`` map function), with ``sft_sample``'s checks: a bad row is
    its DataError naming the shard and row, or with ``skip_bad`` a counted skip (None)."""

    def __init__(self, tokenizer: Any, cols: Mapping[str, str], max_length: int, skip_bad: bool,
                 truncate: str = "left") -> None:
        self.tokenizer, self.cols, self.max_length, self.skip_bad, self.truncate = (
            tokenizer, dict(cols), max_length, skip_bad, truncate)

    def __call__(self, shard: Any, row: int, record: dict[str, Any], counters: dict[str, int]) -> Optional[dict]:
        out = sft_records(self.tokenizer, [record], self.cols, self.max_length, shard.name, self.skip_bad, counters,
                          self.truncate, [row])
        return out[0] if out else None


__all__ = ["IGNORE", "PLAIN_CHAT_TEMPLATE", "PLAIN_TEMPLATE", "ROLES", "SFTCollator", "SFTRow", "bad_row",
           "check_messages", "check_template", "counted_records", "encode_chat", "pad_rows", "plain_prompt", "sft_length", "sft_records",
           "sft_sample", "template_texts"]
