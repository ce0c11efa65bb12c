"""Full re-run of a ruleset over all source records: clustering and stable naming (plan_rerun, pure)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from services.identity import matching
from services.identity import probabilistic as fs
from services.identity.matching import Rule
from services.identity.model import (
    DEFAULT_MAX_BLOCK,
    DEFAULT_MAX_CLUSTER,
    Config,
    Key,
    MergeRecord,
    StoredSource,
    new_individual_id,
)

RERUN_RULE = "ruleset_run"


@dataclass
class TenantData:
    """Everything a re-run reads: records, survivors (id -> created_at), aliases, separations, identity owners."""

    records: list[StoredSource]
    survivors: dict[str, datetime]
    aliases: dict[str, str]
    separated: set[frozenset[str]]
    identity_owners: dict[Key, str]


@dataclass
class RerunPlan:
    """What a re-run writes."""

    record_owner: dict[str, str]  # changed records only
    identity_owner: dict[Key, str]  # changed unique identities only
    new_individuals: list[tuple[str, int]]  # (id, record count)
    survivor_counts: dict[str, int]  # existing ids that are survivors after the run
    redirects: dict[str, str]  # existing individual (survivor or alias) -> survivor
    blocks: list[tuple[str, str]]  # (block key, record id), the whole rebuilt index
    merges: list[MergeRecord]
    records: int = 0
    comparisons: int = 0
    clusters: int = 0
    kept_ids: int = 0
    new_ids: int = 0
    refused: int = 0


@dataclass
class Progress:
    """Progress of a run, updated by the matching thread and read by the streaming use case."""

    phase: str = "LOADING"
    records_processed: int = 0
    records_total: int = 0
    comparisons: int = 0
    done: RerunPlan | None = None


class _Clusters:
    """Union-find over record indexes with sizes, survivor anchors and the separations to respect."""

    def __init__(self, anchors: list[str], separated: set[frozenset[str]], max_cluster: int):
        self.parent = list(range(len(anchors)))
        self.size = [1] * len(anchors)
        self.anchors = [{a} for a in anchors]
        self.separated = separated
        self.max_cluster = max_cluster
        self.refusals: dict[tuple[int, int], str] = {}

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self.size[ra] + self.size[rb] > self.max_cluster:
            self.refusals.setdefault((min(ra, rb), max(ra, rb)), (
                f"the cluster would have {self.size[ra] + self.size[rb]} source records, above the limit of "
                f"{self.max_cluster}"))
            return False
        if self.separated and any(
            frozenset((x, y)) in self.separated for x in self.anchors[ra] for y in self.anchors[rb]
        ):
            self.refusals.setdefault((min(ra, rb), max(ra, rb)), "the two were split apart by an unmerge")
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        self.anchors[ra] |= self.anchors[rb]
        return True


def _link_probabilistic(rule: Rule, records: list[StoredSource], groups: list[list[int]], clusters: _Clusters,
                        max_block: int) -> int:
    """Scores every blocked pair of a probabilistic rule at once (numpy, rapidfuzz) and links those reaching the
    threshold, as real time scores them one by one; returns the pairs scored."""
    spec, model = rule.probabilistic, rule.model
    assert spec is not None and model is not None
    a, b = fs.candidate_pairs(groups, max_block)
    if not len(a):
        return 0
    values = [matching.spec_values(r.record, spec) for r in records]
    scores = fs.pair_scores(spec, model, values, a, b)
    for x, y in zip(a[scores >= spec.threshold].tolist(), b[scores >= spec.threshold].tolist()):
        clusters.union(x, y)
    return len(a)


def plan_rerun(
    data: TenantData,
    config: Config,
    *,
    new_id: Callable[[], str] = new_individual_id,
    max_cluster: int = DEFAULT_MAX_CLUSTER,
    max_block: int = DEFAULT_MAX_BLOCK,
    progress: Progress | None = None,
) -> RerunPlan:
    """Clusters every record from scratch (unique identities, then each rule within its blocks) and names the clusters.

    Naming keeps ids stable: each cluster takes the oldest existing survivor among its records' individuals that
    no other cluster took first (an individual split in two goes to the cluster holding most of its records);
    clusters without one get a new id; survivors left without a cluster become aliases of where most of their
    records went. Records are taken oldest first, so ties are decided the same way in every run.
    """
    progress = progress or Progress()
    records = sorted(data.records, key=lambda r: (r.created_at, r.record_id))
    n = len(records)
    progress.phase, progress.records_total = "MATCHING", n
    anchors = [data.aliases.get(r.individual_id, r.individual_id) for r in records]
    clusters = _Clusters(anchors, data.separated, max_cluster)

    # 1. Unique identities link every record carrying them.
    first_carrier: dict[Key, int] = {}
    for i, r in enumerate(records):
        for id_type, values in r.record.identities.items():
            kind = config.types.get(id_type)
            if kind is None or not kind.unique:
                continue
            for value in values:
                j = first_carrier.setdefault((id_type, value), i)
                if j != i:
                    clusters.union(j, i)
    # 2. Rules, within blocks.
    blocks: dict[str, list[int]] = defaultdict(list)
    block_rows: list[tuple[str, str]] = []
    # The rules of each key, by index: one, or (shared_blocks) every rule blocking on the key's fields.
    rules_of_key: dict[str, dict[int, Rule]] = defaultdict(dict)
    for i, r in enumerate(records):
        for index, key in matching.block_keys(config.ruleset, r.record):
            members = blocks[key]
            if not members or members[-1] != i:  # a key of several rules is listed once per record
                members.append(i)
                block_rows.append((key, r.record_id))
            rules_of_key[key][index] = config.ruleset.rules[index]
        progress.records_processed = i + 1
    comparisons = 0
    scored: dict[int, list[list[int]]] = defaultdict(list)  # probabilistic rules: scored at once below
    for block, members in blocks.items():
        key_rules = list(rules_of_key[block].values())
        rule = key_rules[0]
        if rule.probabilistic is not None:
            if rule.model is not None:
                scored[id(rule)].append(members)
            continue
        members = members[:max_block]
        for x in range(1, len(members)):
            b = members[x]
            for a in members[:x]:
                if clusters.find(a) == clusters.find(b):
                    continue
                comparisons += 1
                if any(matching.rule_holds(k, records[b].record, records[a].record) for k in key_rules):
                    clusters.union(a, b)
        progress.comparisons = comparisons
    model_version = 0
    for rule in config.ruleset.rules:
        if id(rule) in scored and rule.probabilistic is not None and rule.model is not None:
            comparisons += _link_probabilistic(rule, records, scored[id(rule)], clusters, max_block)
            model_version = rule.model.version
    progress.comparisons = comparisons

    # 3. Name the clusters.
    by_cluster: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        by_cluster[clusters.find(i)].append(i)
    overlap: dict[tuple[str, int], int] = defaultdict(int)
    for root, members in by_cluster.items():
        for i in members:
            overlap[(anchors[i], root)] += 1
    pairs = sorted(overlap, key=lambda p: (data.survivors.get(p[0], datetime.max.replace(tzinfo=UTC)), p[0],
                                           -overlap[p], by_cluster[p[1]][0]))
    name: dict[int, str] = {}
    taken: set[str] = set()
    for individual, root in pairs:
        if root not in name and individual not in taken and individual in data.survivors:
            name[root] = individual
            taken.add(individual)
    new_individuals = []
    for root in sorted(by_cluster, key=lambda r: by_cluster[r][0]):
        if root not in name:
            name[root] = new_id()
            new_individuals.append((name[root], len(by_cluster[root])))
    # Survivors that lost their name follow most of their records.
    redirects: dict[str, str] = {}
    merges: list[MergeRecord] = []
    best: dict[str, tuple[int, int]] = {}
    for (individual, root), k in overlap.items():
        if individual not in taken and (individual not in best or k > best[individual][0]):
            best[individual] = (k, root)
    for individual, (_, root) in sorted(best.items()):
        redirects[individual] = name[root]
        merges.append(MergeRecord(name[root], individual, RERUN_RULE, (), "MERGE", model_version=model_version))
    # Aliases of a redirected survivor follow it (chains stay flat).
    for alias, survivor in data.aliases.items():
        if survivor in redirects:
            redirects[alias] = redirects[survivor]
    refusal_events = []
    for (a, b), reason in sorted(clusters.refusals.items()):
        ra, rb = name[clusters.find(a)], name[clusters.find(b)]
        if ra != rb:
            refusal_events.append(MergeRecord(ra, rb, RERUN_RULE, (), "REFUSED", reason))
    merges += refusal_events[:1000]

    record_owner = {}
    for root, members in by_cluster.items():
        for i in members:
            if records[i].individual_id != name[root]:
                record_owner[records[i].record_id] = name[root]
    identity_owner: dict[Key, str] = {}
    for identity, i in first_carrier.items():
        owner = name[clusters.find(i)]
        if data.identity_owners.get(identity) != owner:
            identity_owner[identity] = owner
    new_set = {i for i, _ in new_individuals}
    plan = RerunPlan(
        record_owner=record_owner,
        identity_owner=identity_owner,
        new_individuals=new_individuals,
        survivor_counts={name[r]: len(m) for r, m in by_cluster.items() if name[r] not in new_set},
        redirects=redirects,
        blocks=block_rows,
        merges=merges,
        records=n,
        comparisons=comparisons,
        clusters=len(by_cluster),
        kept_ids=len(by_cluster) - len(new_individuals),
        new_ids=len(new_individuals),
        refused=len(clusters.refusals),
    )
    progress.phase = "WRITING"
    return plan
