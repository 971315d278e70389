"""wb compile's register/spill columns come from ptxas's log, in either form the DSL prints it."""

from workbench.compile.resources import parse_ptxas

NAME = "kernel_cutlass_kernel_stagesfmhastage_d_fmhaFmhaForward_object_at__CopyAtom_0"

PLAIN = f"""ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '{NAME}' for 'sm_90a'
ptxas info    : Function properties for {NAME}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 168 registers, used 16 barriers
"""

# what the DSL printed for a spilling stage D (a remark, wrapped, kernel names on their own lines)
WRAPPED = f"""remark[ptxas]: ptxas detected register spills
  remark: Spilled values are placed in local memory and can add memory traffic and latency.
          ptxas output:
          ptxas info    : 0 bytes gmem
          ptxas info    : Compiling entry function
          '{NAME}'
          for 'sm_90a'
          ptxas info    : Function properties for
          {NAME}
          ptxas         .     368 bytes stack frame, 532 bytes spill stores, 636 bytes spill loads
          ptxas info    : Used 128 registers, used 16 barriers, 368 bytes cumulative stack size
"""


def test_plain_log():
    assert parse_ptxas(PLAIN) == {NAME: {"stack_bytes": 0, "spill_store_bytes": 0, "spill_load_bytes": 0, "registers": 168, "barriers": 16}}


def test_wrapped_remark_with_spills():
    """The spilling case is the one that matters: it used to come out as None / None."""
    got = parse_ptxas(WRAPPED)[NAME]
    assert (got["spill_store_bytes"], got["spill_load_bytes"], got["registers"], got["stack_bytes"]) == (532, 636, 128, 368)


def test_facts_before_any_kernel_name_are_ignored():
    assert parse_ptxas("    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n") == {}


def test_a_spilling_kernel_is_a_warning_of_the_summary_and_a_clean_one_is_not():
    """`wb compile` showed spills only as a table cell (d = 128 with a softcap spilled 24 B in its
    192-row kernel unnoticed): the summary now warns, naming the kernel and the bytes."""
    from workbench.compile.resources import summarize

    spilling = summarize("sm_90a", [], [], WRAPPED)
    (warning,) = [c for c in spilling["checks"] if c["check"] == "spills"]
    assert warning["level"] == "warning" and "532 B stored / 636 B loaded" in warning["message"]
    assert "128 registers at launch" in warning["message"] and "\n" not in warning["message"]
    assert not [c for c in summarize("sm_90a", [], [], PLAIN)["checks"] if c["check"] == "spills"]
