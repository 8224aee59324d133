"""Tests for the job state machine (orchestrator/jobs/states.py): pure, no I/O."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from orchestrator.jobs.spec import JobSpec
from orchestrator.jobs.states import (
    FINAL_STATES,
    Approval,
    InvalidTransitionError,
    Job,
    JobState,
    exit_reason,
    new_job,
    state_for_exit,
    transition,
)

Q, ST, R = JobState.QUEUED, JobState.STARTING, JobState.RUNNING
OK, F, TO, C, E = JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED, JobState.ERROR

# The whole machine, written out independently of the module's ALLOWED table.
AW, RJ = JobState.AWAITING_APPROVAL, JobState.REJECTED
EXPECTED_ALLOWED: dict[JobState, set[JobState]] = {
    AW: {Q, RJ, C, E},
    Q: {ST, C, E},
    ST: {R, Q, OK, F, TO, C, E},
    R: {Q, OK, F, TO, C, E},
    OK: set(),
    F: set(),
    TO: set(),
    C: set(),
    E: set(),
    RJ: set(),
}

ALL_PAIRS = list(itertools.product(list(JobState), repeat=2))
ALLOWED_PAIRS = [(a, b) for a, b in ALL_PAIRS if b in EXPECTED_ALLOWED[a]]
FORBIDDEN_PAIRS = [(a, b) for a, b in ALL_PAIRS if b not in EXPECTED_ALLOWED[a]]

T0 = 1_000.0


def spec(job_id: str = "job-1") -> JobSpec:
    return JobSpec(
        id=job_id,
        pool="default",
        repository="example/app",
        ref="refs/heads/main",
        sha="abcdef1",
        commands=["true"],
    )


def job_in(state: JobState, **fields: object) -> Job:
    job = new_job(spec(), source="src", controller_id="ctl", timeout_s=60, now=T0)
    return dataclasses.replace(job, state=state, **fields)  # type: ignore[arg-type]


def _pair_id(pair: tuple[JobState, JobState]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def test_state_values() -> None:
    assert [s.value for s in JobState] == [
        "awaiting_approval",
        "queued",
        "starting",
        "running",
        "succeeded",
        "failed",
        "timed_out",
        "cancelled",
        "error",
        "rejected",
    ]
    assert set(EXPECTED_ALLOWED) == set(JobState)


def test_table_sizes() -> None:
    assert len(ALL_PAIRS) == 100
    assert len(ALLOWED_PAIRS) == 4 + 3 + 7 + 6
    assert len(FORBIDDEN_PAIRS) == 100 - 20


def test_final_states() -> None:
    assert frozenset({OK, F, TO, C, E, RJ}) == FINAL_STATES
    for state in JobState:
        assert state.final is (state in {OK, F, TO, C, E, RJ})


def test_new_job() -> None:
    s = spec()
    job = new_job(s, source="gh", controller_id="ctl-1", timeout_s=90, now=T0)
    assert job.state is Q
    assert job.spec is s
    assert job.id == "job-1"
    assert job.pool == "default"
    assert job.source == "gh"
    assert job.controller_id == "ctl-1"
    assert job.timeout_s == 90
    assert job.created_at == T0
    assert job.updated_at == T0
    assert job.started_at is None
    assert job.finished_at is None
    assert job.exit_code is None
    assert job.reason is None
    assert job.container_id is None
    assert job.credentials_accessor is None
    assert job.attempt == 1


@pytest.mark.parametrize("pair", ALLOWED_PAIRS, ids=_pair_id)
def test_allowed_transition(pair: tuple[JobState, JobState]) -> None:
    current, new = pair
    job = job_in(current)
    moved = transition(job, new, now=T0 + 5)
    assert moved.state is new
    assert moved.updated_at == T0 + 5
    assert job.state is current, "transition must not mutate its input"


@pytest.mark.parametrize("pair", FORBIDDEN_PAIRS, ids=_pair_id)
def test_forbidden_transition(pair: tuple[JobState, JobState]) -> None:
    current, new = pair
    job = job_in(current)
    with pytest.raises(InvalidTransitionError) as exc:
        transition(job, new, now=T0 + 5)
    assert exc.value.current is current
    assert exc.value.new is new
    assert str(exc.value) == f"job job-1: cannot go from {current.value} to {new.value}"


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_final_states_are_final(state: JobState) -> None:
    job = job_in(state)
    for target in JobState:
        with pytest.raises(InvalidTransitionError):
            transition(job, target, now=T0 + 1)


def test_no_self_transitions() -> None:
    for state in JobState:
        with pytest.raises(InvalidTransitionError):
            transition(job_in(state), state, now=T0 + 1)


# --- timestamps -----------------------------------------------------------------------------------


def test_started_at_set_on_running_only() -> None:
    job = job_in(Q)
    starting = transition(job, ST, now=T0 + 1)
    assert starting.started_at is None
    assert starting.finished_at is None
    running = transition(starting, R, now=T0 + 2)
    assert running.started_at == T0 + 2
    assert running.finished_at is None
    assert running.updated_at == T0 + 2
    assert running.created_at == T0


@pytest.mark.parametrize("final", sorted(FINAL_STATES - {JobState.REJECTED}))
def test_finished_at_set_on_final_and_started_at_kept(final: JobState) -> None:
    running = transition(transition(job_in(Q), ST, now=T0 + 1), R, now=T0 + 2)
    done = transition(running, final, now=T0 + 9)
    assert done.finished_at == T0 + 9
    assert done.updated_at == T0 + 9
    assert done.started_at == T0 + 2
    assert done.created_at == T0


@pytest.mark.parametrize("final", [C, E])
def test_final_from_queued_sets_finished_without_start(final: JobState) -> None:
    done = transition(job_in(Q), final, now=T0 + 3)
    assert done.finished_at == T0 + 3
    assert done.started_at is None


def test_non_final_moves_leave_finished_at_none() -> None:
    job = job_in(Q)
    for new in (ST, R, Q, ST):
        job = transition(job, new, now=T0 + 1)
        assert job.finished_at is None


# --- optional fields ------------------------------------------------------------------------------


def test_reason_exit_code_container_accessor_recorded() -> None:
    starting = transition(job_in(Q), ST, now=T0 + 1, container_id="c1", credentials_accessor="acc")
    assert starting.container_id == "c1"
    assert starting.credentials_accessor == "acc"
    running = transition(starting, R, now=T0 + 2)
    assert running.container_id == "c1", "fields not passed are kept"
    assert running.credentials_accessor == "acc"
    done = transition(running, F, now=T0 + 3, reason="exit code 1", exit_code=1)
    assert done.reason == "exit code 1"
    assert done.exit_code == 1
    assert done.container_id == "c1"


def test_exit_code_zero_is_recorded() -> None:
    running = job_in(R)
    assert transition(running, OK, now=T0 + 1, exit_code=0).exit_code == 0


def test_transition_keeps_identity_fields() -> None:
    job = job_in(R, container_id="c", attempt=3)
    done = transition(job, OK, now=T0 + 1)
    assert done.spec is job.spec
    assert done.source == job.source
    assert done.controller_id == job.controller_id
    assert done.timeout_s == job.timeout_s
    assert done.attempt == 3


# --- requeue --------------------------------------------------------------------------------------


@pytest.mark.parametrize("from_state", [ST, R])
def test_requeue_resets_attempt_state(from_state: JobState) -> None:
    job = job_in(
        from_state,
        started_at=T0 + 1,
        container_id="abc123",
        exit_code=137,
        credentials_accessor="accessor-1",
        attempt=2,
    )
    requeued = transition(job, Q, now=T0 + 10, reason="controller restarted")
    assert requeued.state is Q
    assert requeued.attempt == 3
    assert requeued.container_id is None
    assert requeued.exit_code is None
    assert requeued.credentials_accessor is None
    assert requeued.started_at is None
    assert requeued.finished_at is None
    assert requeued.reason == "controller restarted"
    assert requeued.updated_at == T0 + 10
    assert requeued.created_at == T0


def test_requeue_then_run_again() -> None:
    job = job_in(Q)
    for expected_attempt in (1, 2, 3):
        assert job.attempt == expected_attempt
        job = transition(job, ST, now=T0 + expected_attempt, container_id=f"c{expected_attempt}")
        job = transition(job, R, now=T0 + expected_attempt + 0.5)
        assert job.started_at == T0 + expected_attempt + 0.5
        job = transition(job, Q, now=T0 + expected_attempt + 0.7)
        assert job.container_id is None
    assert job.attempt == 4


# --- exit codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "state"),
    [(0, OK), (1, F), (2, F), (127, F), (137, F), (143, F), (255, F), (-1, F)],
)
def test_state_for_exit(code: int, state: JobState) -> None:
    assert state_for_exit(code) is state


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, None),
        (1, "exit code 1"),
        (2, "exit code 2"),
        (126, "exit code 126"),
        (127, "exit code 127: command not found"),
        (128, "exit code 128"),
        (129, "exit code 129: terminated by signal 1"),
        (137, "exit code 137: killed (SIGKILL), often the pool's memory limit"),
        (143, "exit code 143: terminated by signal 15"),
        (192, "exit code 192: terminated by signal 64"),
    ],
)
def test_exit_reason(code: int, text: str | None) -> None:
    assert exit_reason(code) == text


@pytest.mark.parametrize("code", [200, 255])
def test_exit_reason_does_not_invent_signals(code: int) -> None:
    assert "signal" not in (exit_reason(code) or "")


def test_approval_queues_the_job_without_a_new_attempt() -> None:
    waiting = new_job(
        spec(), source="t", controller_id="c", timeout_s=60, now=T0, awaiting="pool 'prod' needs approval"
    )
    assert (waiting.state, waiting.reason) == (JobState.AWAITING_APPROVAL, "pool 'prod' needs approval")
    decision = Approval("approved", T0 + 5, "carol", "ship it")
    queued = transition(waiting, JobState.QUEUED, now=T0 + 5, reason="approved by carol", approval=decision)
    assert (queued.state, queued.attempt, queued.approval) == (JobState.QUEUED, 1, decision)
    rejected = transition(waiting, JobState.REJECTED, now=T0 + 5)
    assert rejected.state.final and rejected.finished_at == T0 + 5
    assert Approval.from_json(decision.to_json()) == decision
