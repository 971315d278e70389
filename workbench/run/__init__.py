"""Isolated execution of stage runs.

supervisor.py (the wb process) starts or reuses a worker process (worker.py) in its own
process group, sends it one job as JSON over a Unix socket, streams its progress events,
and kills the whole group on timeout or Ctrl-C. The worker imports torch and the DSL once
and can serve many jobs (warm), so a hung or crashed kernel costs a new worker, never wb.
"""
