"""Gitea (and Forgejo, where it is the same) as a forge: single-use runners for Gitea Actions' act_runner."""

from orchestrator.forges.gitea.client import RUNNER_FILE, GiteaForge

__all__ = ["RUNNER_FILE", "GiteaForge"]
