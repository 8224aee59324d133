"""Status callbacks: every state change of a job told to whoever asked, from a durable outbox in the job store.

`outbox.py` (the delivery record, its idempotent id, ordering), `payload.py` (what a callback and a commit status
say), `backoff.py` (the retry schedule), `routing.py` (which targets a job has, the per-job URL allow-list) are
pure; `senders.py` (the signed webhook and the GitHub/Gitea/GitLab commit-status adapters) and `dispatcher.py`
(the controller's background task) do the I/O.
"""
