"""Policy monotonicity: giving a principal one more group never takes an allow away, nor a role.

Configurations, rules and principals are generated over a small vocabulary of groups and roles so that the rules
actually bite: any role set mapping, any route rule (roles, groups, authenticated), any principal, any extra group
inserted anywhere in the list. Checked on ``Policy.check`` and ``Policy.roles_for``, and end to end from claims
(``principal_from_claims``) below the group cap.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from idgate.config import AllowRule, ClaimPaths, Config, IssuerConfig, RoleSet, RouteConfig, UpstreamConfig
from idgate.policy import Policy
from idgate.principal import MAX_GROUPS, Principal, principal_from_claims

GROUPS = ["staff", "eng", "admins", "ops", "Staff", "staff ", "viewers,admin", ""]
ROLES = ["Viewer", "Editor", "Admin"]

group = st.one_of(st.sampled_from(GROUPS), st.text(max_size=6))
role_sets = st.builds(
    lambda mapping: RoleSet(roles=tuple(ROLES), from_groups=mapping),
    st.dictionaries(st.sampled_from(GROUPS[:6]), st.lists(st.sampled_from(ROLES), unique=True).map(tuple)),
)
rules = st.builds(
    AllowRule,
    authenticated=st.booleans(),
    roles=st.lists(st.sampled_from(ROLES), unique=True).map(tuple),
    groups=st.lists(st.sampled_from(GROUPS), unique=True).map(tuple),
).filter(lambda rule: rule.authenticated or rule.roles or rule.groups)


def policy_for(role_set: RoleSet, rule: AllowRule) -> tuple[Policy, RouteConfig]:
    route = RouteConfig(name="r", path="/", upstream="app", allow=rule)
    config = Config(
        issuers=(IssuerConfig(name="i", issuer="https://idp.test", audiences=("a",)),),
        role_sets={"rs": role_set},
        upstreams={"app": UpstreamConfig(role_set="rs")},
        routes=(route,),
    )
    return Policy(config=config), route


def principal(groups: list[str]) -> Principal:
    return Principal(
        issuer="https://idp.test",
        subject="s",
        username=None,
        email=None,
        name=None,
        groups=tuple(groups),
        expires_at=0.0,
    )


@given(
    role_set=role_sets,
    rule=rules,
    groups=st.lists(group, max_size=6),
    extra=group,
    position=st.integers(min_value=0, max_value=6),
)
@settings(max_examples=400, deadline=None)
def test_one_more_group_never_removes_an_allow_or_a_role(
    role_set: RoleSet, rule: AllowRule, groups: list[str], extra: str, position: int
) -> None:
    policy, route = policy_for(role_set, rule)
    more = [*groups[:position], extra, *groups[position:]]
    before, after = policy.check(route, principal(groups)), policy.check(route, principal(more))
    assert not before.allowed or after.allowed, (groups, extra, before, after)
    assert set(before.roles) <= set(after.roles)
    upstream = policy.upstream(route)
    assert set(policy.roles_for(upstream, tuple(groups))) <= set(policy.roles_for(upstream, tuple(more)))


@given(
    role_set=role_sets,
    rule=rules,
    groups=st.lists(st.one_of(group, st.integers(), st.none()), max_size=6),
    extra=group,
    position=st.integers(min_value=0, max_value=6),
)
@settings(max_examples=200, deadline=None)
def test_one_more_group_claim_never_removes_an_allow(
    role_set: RoleSet, rule: AllowRule, groups: list[object], extra: str, position: int
) -> None:
    """From the token's ``groups`` claim (non-strings and empty strings ignored), below MAX_GROUPS."""
    assert len(groups) + 1 < MAX_GROUPS
    policy, route = policy_for(role_set, rule)
    more = [*groups[:position], extra, *groups[position:]]

    def allowed(claim: list[object]) -> bool:
        p = principal_from_claims({"iss": "https://idp.test", "sub": "s", "groups": claim}, paths=ClaimPaths())
        return policy.check(route, p).allowed

    assert not allowed(groups) or allowed(more), (groups, extra)


def test_the_property_can_fail() -> None:
    """A rule that bites: without the group there is no allow, with it there is."""
    policy, route = policy_for(
        RoleSet(roles=tuple(ROLES), from_groups={"eng": ("Editor",)}), AllowRule(roles=("Editor",))
    )
    assert not policy.check(route, principal(["staff"])).allowed
    assert policy.check(route, principal(["staff", "eng"])).allowed
