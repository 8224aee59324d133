"""The pool-matching rule (forges/matching.py), case by case."""

from __future__ import annotations

from orchestrator.forges.matching import Matched, RunnerPool, Unmatched, choose_pool

LINUX = RunnerPool.of("linux", "gh", ["linux", "x64"], ["acme/*"], [])
GPU = RunnerPool.of("gpu", "gh", ["linux", "x64", "gpu"], ["acme/*"], [])
ORG = RunnerPool.of("org", "gh", ["linux"], [], ["Widgets-Inc"])
OTHER_SOURCE = RunnerPool.of("gitea", "gitea", ["linux", "x64"], ["acme/*"], [])
POOLS = [GPU, LINUX, ORG, OTHER_SOURCE]


def choose(labels: list[str], repository: str = "acme/app", source: str = "gh") -> Matched | Unmatched:
    return choose_pool(POOLS, source=source, repository=repository, labels=labels)


def test_every_label_must_be_the_pools_and_self_hosted_is_implied() -> None:
    assert choose(["self-hosted", "linux"]) == Matched("linux")
    assert choose(["Self-Hosted", "LINUX", "X64"]) == Matched("linux")  # case-insensitive
    assert choose(["self-hosted"]) == Matched("linux")  # fewest extra labels among the allowed
    assert choose([]) == Matched("linux")
    assert choose(["linux", "gpu"]) == Matched("gpu")


def test_most_specific_then_config_order() -> None:
    # GPU comes first in the list, but LINUX has fewer labels the job did not ask for.
    assert choose(["linux", "x64"]) == Matched("linux")
    twin = RunnerPool.of("linux-2", "gh", ["x64", "linux"], ["acme/*"], [])
    assert choose_pool([twin, LINUX], source="gh", repository="acme/app", labels=["linux"]) == Matched("linux-2")
    assert choose_pool([LINUX, twin], source="gh", repository="acme/app", labels=["linux"]) == Matched("linux")


def test_labels_no_pool_has() -> None:
    result = choose(["ubuntu-latest"])
    assert isinstance(result, Unmatched) and result.reason == "no_pool_for_labels"
    assert "ubuntu-latest" in result.message and "linux" in result.message
    assert isinstance(choose(["linux", "arm64"]), Unmatched)


def test_a_repository_not_allowed_never_gets_a_runner_whatever_its_labels() -> None:
    for labels in (["linux"], ["self-hosted"], []):
        result = choose(labels, repository="evil/app")
        assert isinstance(result, Unmatched) and result.reason == "repository_not_allowed"
        assert "evil/app" in result.message
    # Globs match the whole name: acme/* is not acme-evil/*, nor a prefix trick.
    assert isinstance(choose(["linux"], repository="acme-evil/app"), Unmatched)
    assert isinstance(choose(["linux"], repository="acme"), Unmatched)


def test_organizations_allow_every_repository_of_the_owner_case_insensitively() -> None:
    assert choose(["linux"], repository="widgets-inc/anything") == Matched("org")
    assert choose(["linux"], repository="Widgets-Inc/Other") == Matched("org")
    assert isinstance(choose(["linux"], repository="widgets-inc-fork/x"), Unmatched)


def test_only_pools_of_the_delivering_source() -> None:
    assert choose(["linux"], source="gitea") == Matched("gitea")
    result = choose(["linux"], source="nobody")
    assert isinstance(result, Unmatched) and result.reason == "repository_not_allowed"
