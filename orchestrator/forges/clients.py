"""The forge API clients a config's forge sources name, built once at start (a bad key file stops the start with a
message naming the source)."""

from __future__ import annotations

from orchestrator.config import Config, ConfigError, ForgeConfig
from orchestrator.forges.protocol import ForgeAPI, ForgeError


def build_forge(name: str, forge: ForgeConfig) -> ForgeAPI:
    if forge.kind == "github":
        from orchestrator.forges.github.auth import AppCredentials, AppTokenProvider, GitHubAuth, TokenFileAuth
        from orchestrator.forges.github.client import GitHubForge

        auth: GitHubAuth
        if forge.app_id is not None and forge.private_key_file is not None:
            auth = AppTokenProvider(AppCredentials.from_file(forge.app_id, forge.private_key_file))
        else:
            assert forge.token_file is not None  # the config requires one of the two
            auth = TokenFileAuth(forge.token_file)
        return GitHubForge(
            auth,
            api_url=forge.base_url,
            installation_id=forge.installation_id,
            request_timeout_s=forge.request_timeout_s,
            retry_budget_s=forge.retry_budget_s,
        )
    from orchestrator.forges.gitea.client import GiteaForge

    assert forge.token_file is not None and forge.api_url is not None  # the config requires both for gitea
    return GiteaForge(
        forge.api_url,
        forge.token_file,
        request_timeout_s=forge.request_timeout_s,
        retry_budget_s=forge.retry_budget_s,
    )


def build_forges(config: Config) -> dict[str, ForgeAPI]:
    forges: dict[str, ForgeAPI] = {}
    problems = []
    for name, source in config.sources.items():
        if source.forge is None:
            continue
        try:
            forges[name] = build_forge(name, source.forge)
        except (ForgeError, ValueError) as exc:
            problems.append(f"sources.{name}.forge: {exc}")
    if problems:
        raise ConfigError("forge", problems)
    return forges
