"""Compiling stages: the one compile path (compiler.compile_stage), the cross-process cache,
`wb compile` / `wb shapes` jobs and records, probes and the trace of the DSL's IR, readable
trace errors, layout strings, and the resource checks (smem, TMA, SASS)."""
