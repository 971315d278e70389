"""Work on other machines and many GPUs: hosts (wb.yaml entries), ssh/rsync (transport), the
host-side agent, the local side of a remote command (client), sweeps, and pid files (procs).
Details: docs/remote.md."""
