"""The shared rule limits: positions in refusals, the cost estimate, the run-time check, short messages."""

from __future__ import annotations

import asyncio
import time

import cel
import pytest

from shared import context as ctx
from shared import rule_limits as rl
from shared.errors import DeadlineExceeded


def refusal(rule: str) -> rl.RuleTooCostly:
    with pytest.raises(rl.RuleTooCostly) as info:
        rl.check(rule)
    return info.value


def literal(n: int) -> str:
    return "[" + ",".join(str(i) for i in range(n)) + "]"


def test_a_rule_past_the_length_limit_names_where_the_limit_falls():
    error = refusal("true && " * 600)
    assert str(error) == ("rule is 4800 characters long, past the limit at column 4097; at most 4096 are allowed")


def test_depth_is_counted_outside_strings_and_refused_at_the_first_bracket_too_deep():
    assert rl.check('"' + "(" * 40 + '" == ""') == rl.FREE
    error = refusal("x == " + "[" * 40 + "]" * 40)
    assert error.offset == 5 + 32 and "at column 38" in str(error)


def test_comprehension_count_and_nesting_name_the_offending_macro():
    many = " || ".join(f"a.exists(x, x == {i})" for i in range(9))
    assert f"comprehension number 9 at column {many.rindex('exists') + 1};" in str(refusal(many))
    nested = "a.all(x, b.all(y,\n c.exists(z, true)))"
    assert str(refusal(nested)) == "comprehensions nest 3 deep at line 2, column 4; at most 2 levels are allowed"


@pytest.mark.parametrize("rule, degree_terms", [
    ("insights.spend >= 10.0", ()),
    ('"vip" in segments', ((1, 1),)),
    ("attributes.tags.exists(t, t == 'a')", ((1, 1),)),
    ("attributes.tags.map(t, t + 'a').size() > 0", ((1, 1), (2, 1))),
    ("attributes.tags.all(x, x in attributes.tags)", ((1, 1), (2, 1))),
    (f"{literal(50)}.all(x, {literal(50)}.exists(y, x == y))", ((0, 2550),)),
    (f"{literal(10)}.map(x, x * 2).filter(y, y > 3).size() > 0", ((0, 220),)),
])
def test_the_estimate_counts_steps_by_literal_size_and_by_data_size(rule, degree_terms):
    assert rl.check(rule).terms == degree_terms


def test_a_rule_estimated_past_the_budget_is_refused_at_its_costliest_comprehension():
    rule = "attributes.x > 1 && attributes.tags.map(x, attributes.tags.map(y, x + y)).size() > 0"
    error = refusal(rule)
    assert error.offset == rule.index("map")
    assert str(error) == ("estimated cost 1,020,100 steps (collections of 100 elements assumed) exceeds 20,000; the "
                          "costliest part is at column 37: 'map(x, attributes.tags.map(y, x …'")
    long_literals = str(refusal(f"{literal(300)}.all(x, x in {literal(300)})"))
    assert long_literals.endswith("'all(x, x in [0,1,2,3,4,5,6,7,8,9…'") and len(long_literals) < 200


def test_a_rule_at_the_budget_runs_in_milliseconds():
    rule = f"{literal(140)}.all(x, {literal(140)}.exists(y, x == y + 1000))"
    assert rl.check(rule).at(rl.ASSUMED_SIZE) <= rl.MAX_RULE_COST
    program = cel.compile(rule)
    started = time.perf_counter()
    program.execute({})
    assert time.perf_counter() - started < 0.05


def test_superlinear_rules_fit_only_data_within_the_run_budget():
    cost = rl.check("attributes.tags.all(x, x in attributes.tags)")
    assert rl.fits(cost, [{"tags": list(range(200))}])
    assert not rl.fits(cost, [{"tags": list(range(300))}])
    assert not rl.fits(cost, [{"deep": {"er": [{"tags": list(range(300))}]}}])
    assert rl.fits(rl.check('"a" in segments'), [{"tags": list(range(100_000))}])


def test_compiler_messages_keep_the_position_and_drop_the_echo_of_the_rule():
    rule = "attributes.x == '" + "y" * 3000 + "' +"
    with pytest.raises(ValueError) as info:
        cel.compile(rule)
    message = rl.compiler_message(info.value, rule)
    assert message.startswith(f"does not parse at column {len(rule) + 1}: Syntax error: mismatched input '<EOF>'")
    assert len(message) < 220 and "y" * 40 not in message


def test_an_excerpt_is_cut_to_a_few_dozen_characters():
    assert rl.excerpt("abc", 0) == "'abc'"
    assert rl.excerpt("x" * 100, 10) == repr("x" * 32 + "…")


async def test_slices_yield_the_loop_and_stop_at_the_deadline():
    ticks = []

    async def other():
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0)

    beside = asyncio.create_task(other())
    slices = ctx.Slices("the test", seconds=0.001)
    ctx.deadline_var.set(time.monotonic() + 0.05)
    try:
        with pytest.raises(DeadlineExceeded) as info:
            while True:
                time.sleep(0.0005)    # a step of work that holds the loop
                await slices.tick()
    finally:
        beside.cancel()
        ctx.deadline_var.set(None)
    assert str(info.value) == "the deadline passed during the test; the work was stopped"
    assert len(ticks) > 5
