"""The shadow canary's promotion rule as tables: parsing (shared with the health gates' parser),
the per-device verdict, the rollout-level judgement, how a shadow member's state moves, and
fleet.decide with a breach. Pure: no database, no broker, no clock."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fleet.decide import Abort, Advance, Counts, Rollout, decide, shadow_member_state
from fleet.errors import FleetError
from fleet.gates import Gate
from fleet.shadow import Breach, Hold, Promote, Stats, check, judge, parse_rule, parse_rule_clause, promotion

AGREE = parse_rule_clause("top1_agreement>=0.98")
RULE = parse_rule(["top1_agreement>=0.98", "latency_ratio<=1.5"])
N = 200


def stats(requests: int = 300, **kw: Any) -> Stats:
    base = Stats(requests, top1_agreement=0.995, cosine_mean=0.999, max_abs=0.01, latency_ratio=1.1)
    return dataclasses.replace(base, **kw)


# ---- parsing -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, clause",
    [
        ("top1_agreement>=0.98", Gate("top1_agreement", ">=", 0.98)),
        (" cosine_mean > 0.99 ", Gate("cosine_mean", ">", 0.99)),
        ("max_abs<=1e-2", Gate("max_abs", "<=", 0.01)),
        ("latency_ratio<1.2", Gate("latency_ratio", "<", 1.2)),
    ],
)
def test_parse_rule_clause(text: str, clause: Gate) -> None:
    assert parse_rule_clause(text) == clause
    assert parse_rule_clause(str(clause)) == clause  # the stored form parses back


@pytest.mark.parametrize(
    "text, words",
    [
        ("agreement>=0.9", "unknown promotion rule metric 'agreement'"),
        ("error_rate<=0.1", "unknown promotion rule metric 'error_rate'"),  # a gate metric, not a rule one
        ("top1_agreement=0.9", "invalid promotion rule"),
        ("top1_agreement>=", "invalid promotion rule"),
        ("top1_agreement<=0.9", "promotion rule top1_agreement<=0.9 points the wrong way"),
        ("latency_ratio>=1.1", "promotion rule latency_ratio>=1.1 points the wrong way"),
        ("", "invalid promotion rule"),
    ],
)
def test_parse_rule_refuses_in_one_line(text: str, words: str) -> None:
    with pytest.raises(FleetError) as e:
        parse_rule_clause(text)
    assert words in e.value.args[0] and "\n" not in e.value.args[0]


@pytest.mark.parametrize(
    "rule, n, words",
    [
        ((), 200, "needs a promotion rule"),
        (RULE, 0, "--min-shadow-requests must be between 1"),
        (RULE, 10**10, "--min-shadow-requests must be between 1"),
    ],
)
def test_check_refuses_a_rule_that_cannot_promote(rule: tuple[Gate, ...], n: int, words: str) -> None:
    with pytest.raises(FleetError, match=words):
        check(rule, n)


def test_too_many_clauses() -> None:
    with pytest.raises(FleetError, match="at most 16"):
        parse_rule(["max_abs<=1"] * 17)


# ---- the per-device verdict --------------------------------------------------------------------
CASES = [
    ("good over enough requests", RULE, stats(), Promote()),
    ("exactly N requests is enough", RULE, stats(requests=N), Promote()),
    ("bound is inclusive", RULE, stats(top1_agreement=0.98, latency_ratio=1.5), Promote()),
    ("no report yet holds", RULE, None, Hold("0/200 requests compared")),
    ("too few requests holds", RULE, stats(requests=199), Hold("199/200 requests compared")),
    (
        "too few requests holds even if bad",
        RULE,
        stats(requests=50, top1_agreement=0.5),
        Hold("50/200 requests compared"),
    ),
    (
        "worse agreement breaches",
        RULE,
        stats(top1_agreement=0.80),
        Breach("promotion rule top1_agreement>=0.98 breached: top1_agreement=0.8 over 300 requests"),
    ),
    (
        "slower shadow breaches",
        RULE,
        stats(latency_ratio=2.0),
        Breach("promotion rule latency_ratio<=1.5 breached: latency_ratio=2 over 300 requests"),
    ),
    ("unmeasured value holds", RULE, stats(top1_agreement=None), Hold("top1_agreement not measured")),
    (
        "a clause after a breach is not needed",
        parse_rule(["max_abs<=0.001", "top1_agreement>=0.98"]),
        stats(),
        Breach("promotion rule max_abs<=0.001 breached: max_abs=0.01 over 300 requests"),
    ),
    (
        "strict bound",
        parse_rule(["cosine_mean>0.999"]),
        stats(),
        Breach("promotion rule cosine_mean>0.999 breached: cosine_mean=0.999 over 300 requests"),
    ),
]


@pytest.mark.parametrize("name, rule, s, expected", CASES, ids=[c[0] for c in CASES])
def test_promotion(name: str, rule: tuple[Gate, ...], s: Stats | None, expected: Any) -> None:
    assert promotion(rule, N, s) == expected


def test_judge_promotes_the_ready_and_any_breach_stops_every_promotion() -> None:
    members = [("a", stats()), ("b", stats(requests=10)), ("c", None), ("d", stats())]
    assert judge(RULE, N, members) == (["a", "d"], None)
    members.append(("e", stats(top1_agreement=0.8)))
    promote, breach = judge(RULE, N, members)
    assert promote == [] and breach is not None and breach.endswith("on e")


# ---- a shadow member's state, and the rollout's decision ---------------------------------------
MEMBER = [
    ("sent", "downloading", "downloading"),
    ("downloading", "smoke_tested", "smoke_tested"),
    ("smoke_tested", "shadow", "shadow"),
    ("shadow", "shadow", None),  # the heartbeat
    ("sent", "failed", "failed"),
    ("shadow", "rolled_back", "failed"),
    ("sent", "active", "failed"),  # an agent that ignored the mode activated the shadow
    ("shadow", "active", "failed"),
    ("promoting", "active", "active"),  # the promotion manifest's report
    ("promoting", "downloading", None),  # stays a promotion
    ("promoting", "failed", "failed"),
]


@pytest.mark.parametrize("current, reported, expected", MEMBER)
def test_shadow_member_state(current: str, reported: str, expected: str | None) -> None:
    assert shadow_member_state(current, reported) == expected


def test_decide_aborts_on_a_shadow_breach_whatever_on_breach_says() -> None:
    r = Rollout("r-1", "running", 0, (50.0, 100.0), 0.9, 0.1, on_breach="pause")
    shadowing = Counts(dispatched=10, active=9, waiting=1)
    assert decide(r, shadowing, 0.0) == Advance()
    assert decide(r, shadowing, 0.0, None, "promotion rule ... on d") == Abort("promotion rule ... on d")
    # the failure rate is judged first, as for gates
    failing = Counts(dispatched=10, active=5, failed=5)
    assert decide(r, failing, 0.0, None, "x") == Abort("failure rate 5/10 above 10%")
    # shadowing devices wait: no abort for missing the success rule while they do
    assert decide(dataclasses.replace(r, wave=1), Counts(dispatched=10, waiting=10), 0.0) is None
