"""The rule matches of a whole real-time batch at once (pure): block-key joins in numpy, fuzzy criteria by rapidfuzz's
cpdist, probabilistic rules by the re-run's vectorised scorer, instead of one rule check per pair in Python."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
from rapidfuzz.distance import JaroWinkler
from rapidfuzz.process import cpdist

from services.identity import matching
from services.identity import probabilistic as fs
from services.identity.matching import Record, Rule, Ruleset

STORED, BATCH = 0, 1  # where a matched record is: a stored candidate, or an earlier subject of the batch


def _expand(lo: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows with ranges [lo, lo + count): (row of each element, its position), concatenated."""
    rows = np.repeat(np.arange(len(lo)), counts)
    starts = np.cumsum(counts) - counts
    return rows, lo[rows] + np.arange(int(counts.sum())) - starts[rows]


def batch_matches(ruleset: Ruleset, records: Sequence[Record], blocks: Sequence[Sequence[tuple[int, str]]],
                  stored: Sequence[Record], stored_blocks: Sequence[Collection[str]]
                  ) -> list[list[tuple[int, int, Rule]]]:
    """Every subject's matches at once (BatchMatcher.matches over the whole batch)."""
    return BatchMatcher(ruleset, records, blocks, stored, stored_blocks).matches(0, len(records))


class BatchMatcher:
    """The rule matches of a batch's subjects, a run of subjects at a time (the plan is made and written in parts).

    The block keys of every subject and stored record are indexed once; matches(start, end) compares only the pairs
    of subjects start..end-1, with the stored records and with every earlier subject of the batch."""

    def __init__(self, ruleset: Ruleset, records: Sequence[Record], blocks: Sequence[Sequence[tuple[int, str]]],
                 stored: Sequence[Record], stored_blocks: Sequence[Collection[str]]):
        self.ruleset, self.records = ruleset, records
        key_id: dict[str, int] = {}
        flat = [pair for keys in blocks for pair in keys]
        self.sk = np.array([key_id.setdefault(key, len(key_id)) for _, key in flat], dtype=np.int64)
        self.sr = np.array([index for index, _ in flat], dtype=np.int64)
        counts = np.fromiter(map(len, blocks), dtype=np.int64, count=len(blocks))
        self.si = np.repeat(np.arange(len(blocks)), counts)
        self.sp = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)  # position among its keys
        self.key_id = key_id
        self.stored: list[Record] = []
        self.ck = self.cr = np.empty(0, dtype=np.int64)
        self.add_stored(stored, stored_blocks)
        # The distinct (key, subject) codes, sorted (a key of several rules is one code per subject).
        self.codes = np.unique(self.sk * len(records) + self.si)

    def add_stored(self, stored: Sequence[Record], stored_blocks: Sequence[Collection[str]]) -> None:
        """More stored records (read while earlier subjects were matched), after those given before."""
        get = self.key_id.get
        c_key = np.array([get(key, -1) for keys in stored_blocks for key in keys], dtype=np.int64)
        c_ref = len(self.stored) + np.repeat(np.arange(len(stored_blocks)), np.fromiter(
            map(len, stored_blocks), dtype=np.int64, count=len(stored_blocks)))
        shared = c_key >= 0  # the stored keys no subject has are left out
        ck, cr = np.concatenate((self.ck, c_key[shared])), np.concatenate((self.cr, c_ref[shared]))
        # Stored records sharing each key, in the stored order.
        order = np.lexsort((cr, ck))
        self.ck, self.cr = ck[order], cr[order]
        self.stored = [*self.stored, *stored]

    def matches(self, start: int, end: int) -> list[list[tuple[int, int, Rule]]]:
        """Per subject start..end-1, the records it matches as (STORED or BATCH, index, rule), each record once (by
        the first rule that matched it), in the order resolving the subjects one by one meets them: by the subject's
        block keys in order, each key's stored records (in their order) before the batch's earlier subjects (in batch
        order). The caller skips earlier subjects that added no record.

        A rule with exact criteria blocks on exactly their values, so records sharing one of its keys agree on them:
        only its fuzzy criteria are compared. A fuzzy-only rule blocks on prefixes: all its criteria are compared."""
        out: list[list[tuple[int, int, Rule]]] = [[] for _ in range(start, end)]
        chosen = np.flatnonzero((self.si >= start) & (self.si < end))
        if not len(chosen):
            return out
        sk, si, sp, sr = self.sk[chosen], self.si[chosen], self.sp[chosen], self.sr[chosen]
        ck, cr = self.ck, self.cr
        lo = np.searchsorted(ck, sk, "left")
        rows, at = _expand(lo, np.searchsorted(ck, sk, "right") - lo)
        stored_pairs = (si[rows], sp[rows], sr[rows], np.full(len(rows), STORED), cr[at])
        # Earlier subjects sharing each key: each row's run of its key's codes before its own.
        n, codes = len(self.records), self.codes
        lo = np.searchsorted(codes, sk * n, "left")
        rows, at = _expand(lo, np.searchsorted(codes, sk * n + si, "left") - lo)
        batch_pairs = (si[rows], sp[rows], sr[rows], np.full(len(rows), BATCH), codes[at] % n)
        sub, pos, rule_of, source, ref = (np.concatenate(x) for x in zip(stored_pairs, batch_pairs))
        if not len(sub):
            return out
        # Only a subject's first match with a record counts (a later one finds the record's survivor already found),
        # and a subject's keys come in rule order: a pair an earlier rule matched is not compared by the later ones.
        width = max(len(self.stored), n) + 1
        pair = (sub * 2 + source) * width + ref
        held = np.zeros(len(sub), dtype=bool)
        matched = np.empty(0, dtype=np.int64)
        rules = self.ruleset.rules
        for index, rule in enumerate(rules):
            which = np.flatnonzero(rule_of == index)
            if len(which) and len(matched):
                which = which[~np.isin(pair[which], matched)]
            if len(which):
                held[which] = _holds(rule, self.records, self.stored, sub[which], source[which], ref[which])
                matched = np.union1d(matched, pair[which[held[which]]])
        keep = np.flatnonzero(held)
        keep = keep[np.lexsort((ref[keep], source[keep], pos[keep], sub[keep]))]
        _, first = np.unique(pair[keep], return_index=True)
        keep = keep[np.sort(first)]
        for i, src, j, r in zip(sub[keep].tolist(), source[keep].tolist(), ref[keep].tolist(), rule_of[keep].tolist()):
            out[i - start].append((src, j, rules[r]))
        return out


def _holds(rule: Rule, records: Sequence[Record], stored: Sequence[Record], sub: np.ndarray, source: np.ndarray,
           ref: np.ndarray) -> np.ndarray:
    """Whether each pair (records[sub], stored[ref] or records[ref]) satisfies the rule."""
    if rule.probabilistic is not None:
        if rule.model is None:
            return np.zeros(len(sub), dtype=bool)
        spec = rule.probabilistic
        values = [matching.spec_values(x, spec) for x in stored] + [matching.spec_values(x, spec) for x in records]
        other = np.where(source == STORED, ref, ref + len(stored))
        return fs.pair_scores(spec, rule.model, values, sub + len(stored), other) >= spec.threshold
    ok = np.ones(len(sub), dtype=bool)
    for criterion in (c for c in rule.criteria if c.method == matching.FUZZY):
        ok &= _criterion(criterion, records, stored, sub, source, ref)
    return ok


def _criterion(criterion: matching.Criterion, records: Sequence[Record], stored: Sequence[Record], sub: np.ndarray,
               source: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Whether each pair satisfies one fuzzy criterion (as matching.criterion_holds decides it).

    Pairs repeat the same two values often (a common name against the records of its block): each distinct pair of
    values is scored once."""
    base = len(stored)
    left, right = sub + base, np.where(source == STORED, ref, ref + base)
    size = base + len(records)
    involved = np.zeros(size, dtype=bool)  # only the records of some pair (marked: no sort)
    involved[left] = True
    involved[right] = True
    at = np.flatnonzero(involved).tolist()
    lists: dict[int, list[str]] = {}
    if criterion.kind == "attribute":  # one value per record, as record_values reads it
        name = criterion.name
        values = [matching.normalized_value(stored[n] if n < base else records[n - base], name) for n in at]
    else:
        for n in at:
            lists[n] = matching.record_values(stored[n] if n < base else records[n - base], criterion)
        values = [found[0] if found else "" for found in lists.values()]
    code_of: dict[str, int] = {}
    codes = np.zeros(size, dtype=np.int64)
    codes[at] = [code_of.setdefault(value, len(code_of)) for value in values]
    lc, rc = codes[left], codes[right]
    width = len(code_of)
    distinct, back = np.unique(lc * width + rc, return_inverse=True)
    texts = np.array(list(code_of), dtype=object)
    threshold = matching.THRESHOLDS[criterion.precision]
    ok = (cpdist(texts[distinct // width], texts[distinct % width], scorer=JaroWinkler.normalized_similarity,
                 dtype=np.float64) >= threshold)[back]
    blank = code_of.get("")
    if blank is not None:
        ok &= (lc != blank) & (rc != blank)
    if lists:  # a field with several values: any pair
        several = np.zeros(size, dtype=bool)
        several[[n for n, found in lists.items() if len(found) > 1]] = True
        for n in np.flatnonzero(several[left] | several[right]).tolist():
            ok[n] = matching.criterion_holds(criterion, lists[int(left[n])], lists[int(right[n])])
    return ok
