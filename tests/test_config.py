"""The plan file: the README's example is valid, and every bad plan says what is wrong, line by line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nxnw.config import PlanError, parse_plan

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_plan() -> str:
    return re.search(r"```toml\n(.*?)```", README.read_text(), re.S).group(1)


def test_the_readme_example_plan_is_valid() -> None:
    plan = parse_plan(readme_plan(), "README.md")
    assert plan.apps == ["guestbook"]
    assert plan.dns is not None and plan.dns.rfc2136 is not None
    assert plan.n1.engine.startswith("cassandra://") and plan.n2.engine.startswith("hbase://")


@pytest.mark.parametrize(("change", "problems"), [
    (lambda t: t.replace('apps = ["guestbook"]', 'apps = ["guestbook", "guestbook", "Bad-App"]'),
     ["apps: app names ['Bad-App'] must match"]),
    (lambda t: t.replace('zookeeper = "10.0.1.5:2181"', 'zookeeper = "10.0.1.5"'),
     ["n2.zookeeper: '10.0.1.5' is not host:port"]),
    (lambda t: t.replace('engine = "hbase://10.0.1.5:9090/appscale_"', 'engine = "cassandra://10.0.0.5:9042/appscale"'),
     ["n1 and n2 name the same engine"]),
    (lambda t: t.replace("[dns.rfc2136]", "[dns.elsewhere]"), ["dns.elsewhere: unknown setting"]),
    (lambda t: t[:t.index("[dns.rfc2136]")] + t[t.index("[thresholds]"):],
     ["provider 'rfc2136' needs a [dns.rfc2136] table"]),
    (lambda t: t.replace("ttl = 5 ", "ttl = 0 "), ["dns.ttl: Input should be greater than or equal to 1"]),
    (lambda t: t + "\nsurprise = 1\n", ["unknown setting"]),
    (lambda t: t.replace("[n1]", "[n1"), ["not valid TOML"]),
])
def test_a_bad_plan_lists_each_problem_naming_the_field(change, problems: list[str]) -> None:
    with pytest.raises(PlanError) as caught:
        parse_plan(change(readme_plan()), "plan.toml")
    text = str(caught.value)
    assert text.startswith("plan.toml: ")
    for problem in problems:
        assert problem in text, text


def test_zookeeper_hosts_may_carry_a_chroot() -> None:
    text = readme_plan().replace('zookeeper = "10.0.0.5:2181"', 'zookeeper = "10.0.0.5:2181,10.0.0.6:2181/appscale"')
    assert parse_plan(text).n1.zookeeper.endswith("/appscale")
