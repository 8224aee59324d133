"""The forge API clients a config's forge sources name, built once at start (a bad key file stops the start with a
message naming the source)."""

from __future__ import annotations

from orchestrator.config import Config, ConfigError, ForgeConfig
from orchestrator.forges.protocol import ForgeAPI, ForgeError


def build_forge(forge: ForgeConfig) -> ForgeAPI:
    if forge.kind == "github":
        from orchestrator.forges.github.client import GitHubForge

        return GitHubForge.from_config(forge)
    from orchestrator.forges.gitea.client import GiteaForge

    return GiteaForge.from_config(forge)


def build_forges(config: Config) -> dict[str, ForgeAPI]:
    forges: dict[str, ForgeAPI] = {}
    problems = []
    for name, source in config.sources.items():
        if source.forge is None:
            continue
        try:
            forges[name] = build_forge(source.forge)
        except (ForgeError, ValueError) as exc:
            problems.append(f"sources.{name}.forge: {exc}")
    if problems:
        raise ConfigError("forge", problems)
    return forges
