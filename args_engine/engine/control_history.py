"""The tokens of the sequences whose logit controls read them (repetition, presence / frequency, no-repeat
n-grams), kept on the device as vLLM v1's persistent batch keeps its sampling state: each such sequence holds a
slot of a [slots, width] token table. Its tokens are copied once, inside the step's one host-to-device copy, the
first time it steps (or when the table no longer matches it); after that the step itself appends each chosen
token, so a step copies no history however long the sequences grow. Owned by the model runner; host bookkeeping
(slots, what is in sync) and device writes only, never a read.

A slot holds the padding id past its sequence's length: a first copy writes the whole row, and the step appends
only at the length. A step that never confirmed its appends (it failed) leaves its rows out of sync, so the next
step copies them again."""
from __future__ import annotations

import numpy as np
import torch

from .sequence import Sequence


class ControlHistory:
    def __init__(self, device: torch.device, vocab_size: int, slots: int = 8, width: int = 256):
        self.device, self.pad_id = device, vocab_size
        self.tokens = torch.full((slots, width), vocab_size, dtype=torch.int64, device=device)  # [S, W]
        self.slot_of: dict[int, int] = {}  # seq_id -> slot
        self.synced: dict[int, int] = {}  # seq_id -> how many of its tokens the slot holds
        self.unconfirmed: list[int] = []  # seq_ids the last prepared step appends to (until `stepped`)
        self.free = list(range(slots - 1, -1, -1))

    def arrays(self, seqs: list[Sequence], rows: np.ndarray, lens: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
        """Host: the controlled rows (`rows` of `seqs`, with `lens` tokens each) -> (ctl_slot [C]; ctl_init_slot
        [I] and ctl_init [I, W] (whole rows) for the rows whose tokens the table does not hold yet; the history's
        width)."""
        need_width = int(lens.max()) + 1  # the step appends at position len
        for seq_id in self.unconfirmed:  # a step that failed may have appended: copy those rows again
            self.synced.pop(seq_id, None)
        self.unconfirmed = [seqs[b].seq_id for b in rows.tolist()]
        slots, init = [], []
        for b, n in zip(rows.tolist(), lens.tolist()):
            s = seqs[b]
            if s.seq_id not in self.slot_of:
                self.slot_of[s.seq_id] = self._take_slot()
            if self.synced.get(s.seq_id) != n:
                init.append(b)
            slots.append(self.slot_of[s.seq_id])
        self._ensure(need_width)
        a = {"ctl_slot": np.array(slots, dtype=np.int64)}
        if init:  # whole rows: padding past each length, whatever the slot held before
            table = np.full((len(init), self.tokens.shape[1]), self.pad_id, dtype=np.int64)
            for i, b in enumerate(init):
                table[i, :seqs[b].num_tokens] = seqs[b].token_ids
            a["ctl_init_slot"] = np.array([self.slot_of[seqs[b].seq_id] for b in init], dtype=np.int64)
            a["ctl_init"] = table
        return a, int(lens.max())

    def history(self, t: dict[str, torch.Tensor], width: int) -> torch.Tensor:
        """Device: write the new rows' tokens, then -> the controlled rows' tokens [C, width], pad_id past each
        row's length."""
        if "ctl_init" in t:
            self.tokens[t["ctl_init_slot"]] = t["ctl_init"]  # [I, W]: whole rows
        return self.tokens[:, :width].index_select(0, t["ctl_slot"])  # [C, width]: only the columns in use

    def append(self, t: dict[str, torch.Tensor], tokens: torch.Tensor) -> None:
        """Device: each controlled row's chosen token (tokens [B]) at its position len."""
        rows = t["ctl_rows"]
        tokens = tokens.to(self.device)
        self.tokens[t["ctl_slot"], t["ctl_len"]] = tokens if len(rows) == len(tokens) else tokens.index_select(0, rows)

    def stepped(self, seqs: list[Sequence], rows: np.ndarray, lens: np.ndarray) -> None:
        """Host, after the step's read: the slots hold one more token each."""
        for b, n in zip(rows.tolist(), lens.tolist()):
            self.synced[seqs[b].seq_id] = n + 1
        self.unconfirmed = []

    def release(self, seq_id: int) -> None:
        """The sequence is finished: its slot goes back."""
        slot = self.slot_of.pop(seq_id, None)
        self.synced.pop(seq_id, None)
        if slot is not None:
            self.free.append(slot)

    @property
    def num_slots_in_use(self) -> int:
        return len(self.slot_of)

    def _take_slot(self) -> int:
        if not self.free:  # double the slots
            S = self.tokens.shape[0]
            self.tokens = torch.cat([self.tokens, torch.full_like(self.tokens, self.pad_id)])
            self.free = list(range(2 * S - 1, S - 1, -1))
        return self.free.pop()

    def _ensure(self, width: int) -> None:
        W = self.tokens.shape[1]
        if width > W:  # double the width until it fits
            grown = W
            while grown < width:
                grown *= 2
            pad = torch.full((self.tokens.shape[0], grown - W), self.pad_id, dtype=torch.int64, device=self.device)
            self.tokens = torch.cat([self.tokens, pad], 1)
