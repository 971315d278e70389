#!/usr/bin/env bash
# Stage D tuning on one GPU, through wb (records in runs/, speeds in MEMORY.md): the
# candidates of docs/perf-notes.md "Tuning round 2", each checked for correctness by a
# `wb sweep` before `wb bench` times it beside the current default and the peers.
# Run from the repository root on the device machine, environment set up:
#     . benchmarks/gpu_env.sh && bash benchmarks/gpu_tune_d.sh PHASE
# PHASE d64:    192-row Q tiles (consumers=3, serial and pingpong) and deeper KV rings at
#               d=64 -- correctness sweep, then bench at s 1024, 4096 (about 5 minutes)
# PHASE d128:   o_rescale=end at d=128 (sweep + bench s 4096, 8192), longest-first tile
#               order for causal (sweep + bench), the CUTLASS example as a peer when
#               WB_CUTLASS_EXAMPLES is set (about 5 minutes)
# PHASE defaults: the correctness sweep of the new defaults (84 cases), kv_load=k_ahead,
#               and d=128 variants timed side by side with 50 repeats (about 6 minutes)
# PHASE probe:  k_release=early against the pinned release, and the per-CTA fixed cost from
#               short sequences beside FA4 (about 3 minutes)
# PHASE persist: correctness of the new defaults and of persistent=on (80 cases), then both
#               timed, d=128 both masks and d=64 (about 6 minutes)
# PHASE causal: causal persistent (round robin) against the default, then the whole default
#               sweep and a causal persistent sweep (about 7 minutes)
# PHASE ab:     two versions of stages/fmha (BEFORE/AFTER folders and commits in the
#               environment), d=128 and d=64 (AB_D64_VARIANTS: -V options) timed interleaved, after a
#               correctness sweep of AFTER (about 5 minutes)
# PHASE dynamic: persistent=dynamic (global tile counter) checked and timed against off/on
# PHASE verify: the whole default sweep (112 cases), d=128 non-causal's long kernel with tails and
#               softcap (10 cases), and a bench of the defaults (about 7 minutes; VERIFY_NO_BENCH=1:
#               the sweeps alone)
# PHASE verify96: d = 96's default sweep (16 cases) and d = 64 / 96 softcap with a window, varlen and
#               16-key pages (sum_init=alpha is their default; about 3 minutes)
# PHASE r27:    d = 96's defaults swept (16 cases), p_sync=warp on its non-causal window / varlen / paged launches
#               (10 cases), then d = 128 s = 4096 and d = 64 s = 8192 in turn beside FA4 under the default,
#               kv_load=k_ahead and lazy_rescale=on (about 5 minutes)
# PHASE r28:    d = 96 non-causal's defaults (p_sync=auto, now warp on every launch) swept on window / varlen /
#               paged launches (10 cases), then every schedule variant in turn beside FA4 at d = 64 s = 8192
#               and d = 128 s = 4096, one process each (about 7 minutes)
# PHASE r28b:   non-causal d = 64's round-robin long kernel (from m = 8192) under the defaults: swept (n 4096 /
#               8192 / 9000, m 8192 against n 17 / 1000; 8 cases), then timed in turn beside FA4 against the
#               dynamic kernel for every m (-V persistent=dynamic), two rounds (about 3 minutes)
# PHASE pagedlens: paged KV with unequal lengths (cache_seqlens per sequence): tests/test_paged_gpu.py, then a
#               sweep (n = 1000 room, lengths 0 / 17 / 1000 / 650, d = 64 / 128, pages 16 / 256, both masks and
#               dtypes, GQA; 16 cases), packed queries over pages (16 cases), then `wb run --exported` through a
#               CPU-exported paged package
#               (WB_PAGED_PREBUILT, default .gpu/export-paged: d = 64 / 128 x causal x varlen, 64-key pages, 4 / 2 heads)
#               (about 4 minutes)
# PHASE r30:    on an H200 (the goal table's card): every non-causal cell of the goal table, d = 64 / 128 at
#               s = 4096 / 8192, both dtypes, in turn beside FA4, two rounds (about 4 minutes); then `perf`
# PHASE softcapfit: the softcap defaults moved off 3 consumer WGs (they spilled 12-112 B at 160 registers):
#               sweeps (d = 64 non-causal 2 WGs, n 17 ... 8200; d = 64 / 96 causal and d = 128 non-causal without the
#               3-WG long kernels; d = 64 varlen), then each against its old 3-WG kernel in turn beside FA4, two
#               rounds (about 8 minutes)
# PHASE softcapmini: softcapfit's sweeps cut to 10 cases, for a short device budget (about 2 minutes)
# PHASE cluster: -V cluster=2 (each K / V tile loaded half by each of two CTAs on neighbouring Q tiles and
#               multicast into both; FlashAttention-3's cluster at d >= 128): sweeps (d = 128 n 17 ... 8200 both
#               dtypes GQA round robin and one CTA per tile, d = 64 / 96 / 192 / 256, m != n, softcap), then the
#               default against it in turn beside FA4, d = 128 s 4096 / 8192 and d = 64 / 192 / 256 s 8192, two rounds
#               (about 8 minutes)
# PHASE exportvarlen: the varlen op from a CPU-exported package (WB_EXPORT_PREBUILT, default .gpu/export-pkg:
#               d = 64 / 128 x causal x varlen, 4 heads / 2 KV heads, bf16): tests/test_export_gpu.py -k varlen,
#               `wb run --exported` of a mixed varlen batch, and export_launch_cost.py --varlen (about 1 minute)
# PHASE r29:    round robin (-V persistent=on) against each non-causal default scheduler in turn beside FA4,
#               alternating over two rounds: d = 128 s = 4096 / 8192, d = 96 / 192 / 256 s = 8192 (round 28 found
#               +2 % bf16 at d = 64 s = 8192, where earlier rounds timed one after the other read equal), then
#               `perf` for docs/perf.md with d = 64's round-robin twin (about 9 minutes: two calls, PHASE r29 then perf)
# PHASE alphafinal: for a device budget of one call: `perf`, then the sweep of the kernels whose default
#               became sum_init=alpha (d = 64 / 96, 32 cases) in what time is left (about 7 minutes)
# PHASE lazyexact96: d = 96 / 192 only, one call: lazy_rescale=on with row_sum=rounded swept (32 cases),
#               then the default, that, and lazy alone timed at s = 8192 beside FA4, two rounds (about 7 min)
# PHASE default64: d = 64 non-causal under its round-22 default (dynamic, short_tile=split): sweeps (20 cases), then
#               s 1024 / 4096 beside cuDNN and FA4 over PROCS (3) processes (about 5 minutes)
# PHASE lazy96: lazy_rescale=on at d = 96 non-causal, swept (9 cases) and timed beside the default and FA4
#               over PROCS (3) processes (about 4 minutes)
# PHASE rows128: d = 128 non-causal with 192-row Q tiles (3 WGs, P through shared memory, O in Q): 4 sweep cases,
#               then timed beside the default and FA4 (about 3 minutes)
# PHASE long192: non-causal d = 128's 192 x 128 long kernel (from m = n = 8192) under the defaults: 18 sweep cases,
#               timed beside FA4 over 3 processes, the exported op at m = n = 8192 and m = 4096 n = 8192 (about 6 minutes)
# PHASE tracecheck: tests/test_timeline_gpu.py (wb run --trace of stage D and moe stage C; about 1 minute)
# PHASE clocks: the mixed varlen batch both masks beside FA4 with nvidia-smi sampling the SM clock, power and
#               throttle reasons (are its two timing modes the card's clocks? about 2 minutes)
# PHASE clockbench: the contested cells (d = 128 s 4096 / 8192, d = 96 s 8192) in ROUNDS (3) fresh processes with the
#               SM clock of every timing (wb bench's MHz column and clock notes; about 4 minutes)
# PHASE interleave: the same cells one after the other and with wb bench --interleave, ROUNDS (3) processes each,
#               after the GPU tests of the timer (about 6 minutes)
# PHASE turnscan: the cells short of a goal timed in turn with FA4, ROUNDS (3) processes, then d = 96 p_sync=warp and
#               d = 128 s = 4096 q_buffers=2 in turn, 2 rounds (about 7 minutes)
# PHASE stalls: ncu's PC sampling per SASS instruction of one non-causal bf16 shape (STALL_D, STALL_S: d = 128
#               s = 4096), ours and FA4's, exported to $OUT and summed by benchmarks/stall_map.py (about 1 minute)
# PHASE kv192: d = 128 non-causal with a 192-key tile, O in Q: 16 sweep cases, then s 8192 / 16384 beside the
#               defaults, the 176-key kernel and FA4 over 3 processes (about 7 minutes)
# PHASE d96k160: d = 96 non-causal's 192-row tile with 160 keys (P in shared memory, O in Q): 16 sweep cases, then
#               s 4096 / 8192 beside the default and FA4 over 3 processes (about 5 minutes)
# PHASE contested: the non-causal cells short of their goal (d = 128 s 4096 / 8192, d = 96 / 192 s 8192,
#               d = 64 s 1024 against cuDNN), both dtypes, FA4 and cuDNN beside, ROUNDS (4) processes each
# PHASE dynfinal: one call for persistent auto = dynamic at d = 128 non-causal: its defaults' sweep (36 cases, the
#               long kernel, softcap and a window: 4 more), then the perf sweep for docs/perf.md (about 9 minutes)
# PHASE qbuf128: q_buffers=2 at d = 128 non-causal (s 1024 / 4096) over the dynamic scheduler: its sweep, then
#               two rounds beside the default and FA4 (about 3 minutes)
# PHASE dynscan: persistent=dynamic at d = 64 / 96 / 192 / 256 non-causal: a sweep (16 cases), then two rounds
#               beside the default and FA4 (about 5 minutes)
# PHASE dyn96: d = 96 non-causal's default now dynamic: verify96, then two rounds beside FA4 and persistent=off
#               (about 5 minutes)
# PHASE paged_gaps: paged KV's gaps: fp16 (24 cases), softcap with a window (8), FA4's paged path as a peer
#               (about 4 minutes)
# PHASE emptyrows: rows that see no key (LSE -inf) after compare.metrics' stricter rule: varlen with empty key
#               sequences, bottom-right m > n, stages a-c (about 3 minutes)
# PHASE split: -V split_tail=on (the last, partial wave's work tiles cut along the keys, combined by
#               the last piece to finish; stages/fmha/split_kv.py): sweeps where 132 CTAs leave a
#               tail (m = 4096 with 5 / 7 heads; n 17 ... 8192, both dtypes, GQA, softcap; d = 64 /
#               96 with the dynamic scheduler) (about 3 minutes)
# PHASE splitbench: d = 128 s 1024 / 4096 / 8192 non-causal both dtypes, the default and FA4 against
#               split_tail=on, SPLIT_ROUNDS (2) rounds; then few waves (batch 1, 5 and 6 heads at
#               s = 4096: 160 / 192 tiles on 132 CTAs) (about 4 minutes)
# PHASE splittest: tests/test_split_kv_gpu.py (the planned pieces written, the counts reset, O / LSE
#               against the unsplit kernel and the reference; 14 compiles, about 4 minutes)
# PHASE splitauto: split_tail=auto (on at d = 96 and 128 non-causal) as the default: its sweeps (n 17 ...
#               9000 with tails, both dtypes, GQA, 5 / 7 heads at m = 4096 where the kernel cuts and the
#               defaults' shapes where it does not), then the default and FA4 against -V split_tail=off
#               at d = 128 s 1024 / 4096 / 8192 and d = 96 s 4096 / 8192 both dtypes, and batch 1 with
#               few waves (d = 128 5 heads, d = 96 7 heads) (about 6 minutes)
# PHASE splitab: the split-capable default against -V split_tail=off where nothing is cut or little
#               gained (d = 128 s 1024 / 4096, both dtypes), each timed in 3 fresh processes
#               (--processes 3), default, off, default again (about 3 minutes)
# PHASE scan128: d = 128 s = 4096 non-causal bf16, the default and FA4 against seven variants, two
#               rounds (about 4 minutes)
# PHASE d64short: d = 64 s = 1024 non-causal, the default (192-row tiles) against consumers=2 (128-row),
#               cuDNN and FA4 beside, three rounds (about 2 minutes)
# PHASE trace128: tile traces (trace_tiles.py) of d = 128 s = 4096 with sum_init zero and alpha,
#               d = 128 s = 8192, d = 96 s = 8192 and d = 64 s = 4096, non-causal bf16 (about 4 minutes)
# PHASE alphamini: alphafinal cut to a device budget of 5 minutes: perf's bf16 rows, then 24 sweep cases
# PHASE round3: a fresh S accumulator per overlap step (no spills at 160 registers) and causal
#               192-row Q tiles: sweeps of consumers=3 with every schedule, both masks, and of
#               the d=128 defaults, then d=64 benches (about 6 minutes)
# PHASE idle:   sweeps with m not a multiple of 192 or 128 (consumer WGs with no row inside m),
#               every schedule and persistence mode (about 3 min). It checked consume_idle, a
#               skip of those WGs' math that measured no faster and was reverted (perf-notes)
# PHASE qbuf:   q_buffers=2 (the next work tile's Q loads during this one): sweep (16 cases),
#               then default vs q_buffers=2 interleaved twice (about 3 minutes)
# PHASE perf:   `wb bench d --sweep` over DESIGN.md's table, both dtypes, every peer:
#               writes docs/perf.md (about 5 minutes)
# PHASE d96:    d = 96 causal, the largest gap left (x0.96 of FA4, which runs 192 x 128 with P in
#               shared memory there): 192-row causal candidates checked by a sweep, then timed
#               beside the default and FA4 twice, interleaved, and a trace of the default and of
#               the 3-WG kernel (about 5 minutes)
# PHASE d128q:  d = 128 non-causal, short of 1.03x FA4 at s 4096/8192 (x1.01-1.02): O staged
#               in Q frees 32 KiB, room for a third K/V stage (225 KiB) or 144/160/176-key tiles
#               (176: FlashAttention-3's d = 128 non-causal tile; each compiles without spills
#               or serialized wgmma): a sweep of each, then two interleaved rounds of benches
#               beside the default and FA4 (5 minutes; run 2026-12-05: perf-notes round 8)
# PHASE long128: d = 128 non-causal's long kernel (128 x 176 from n = 8192 keys) against the one
#               128 x 128 kernel (-V kv_tile=128), s 8192 and 16384, both dtypes, FA4 beside, two
#               interleaved rounds (about 4 minutes)
# PHASE mn128:  is the 128 x 176 tile's gain a matter of m (the grid, what dispatches it today) or of
#               n (the KV loop it shortens)? d = 128 non-causal bf16 at m/n 8192/4096 and
#               4096/16384: the 176-key kernel forced (-V kv_tile=176 -V o_staging=q) against
#               kv_tile=128, FA4 beside, two interleaved rounds (about 1 minute on an H100; run
#               2026-12-05: the gain follows n, perf-notes round 9)
# PHASE psync:  p_sync=warp (the PV MMA waits for the warp's own P stores, not the WG's 128
#               threads; FlashAttention-3/4's choice) where P goes through shared memory: d = 96
#               non-causal and the causal long kernel. A sweep first (a race shows as wrong
#               rows), then two interleaved rounds beside the default and FA4 (about 3 minutes;
#               run 2026-12-05 on an H100: correct, at most +1%, perf-notes round 9)
# PHASE varlen: the mixed varlen batch (13 sequences, 64k tokens) and its equal-length twin,
#               causal and not, both dtypes, beside FA4, each timed in 5 worker processes
#               (--processes: the median of their medians; one process's level moves by 10%)
#               (about 5 minutes; not yet run)
# PHASE lazy:   lazy_rescale=on (a row's max moves only past 2^8; a warp skips O *= alpha when
#               none of its rows moved: FlashAttention-4's conditional rescale): sweeps of every
#               head dim, both masks, both dtypes, softcap and a window, then d = 128 and 256
#               (LAZY_DIMS) at s = 8192 timed against off beside FA4, twice interleaved (over
#               7 minutes: the 2026-12-05 run was cut at 400 s before d = 256; round 8)
# PHASE byn:    d = 128 non-causal's long kernel keyed on n (from n = 8192 keys, whatever m): the
#               default swept at m != n (m 1000 / 4096 with n 8192 / 9000 take the 176-key kernel,
#               m = 8192 with n = 4096 the 128-key one), then timed against kv_tile=128 at
#               m / n 4096 / 16384 and 8192 / 4096, FA4 beside, two rounds (about 3 minutes)
# PHASE wide:   d = 192 and 256 without the WGs' pingpong turns (schedule=overlap: FlashAttention-4's
#               sm90 choice above d = 128), with and without o_rescale=mid (its O rescale before the
#               PV MMA), and lazy_rescale=on at d = 256: sweeps of the schedules (n with tails, both
#               masks, GQA), then s = 8192 benches beside the default and FA4, two rounds (about 6
#               minutes)
# PHASE lazy256: d = 256's default with lazy_rescale on (auto, dv = 256) and stage D's rtol:
#               sweeps of fixed lengths (n 17 ... 8192, both masks, both dtypes, GQA), softcap and
#               a window, varlen (a zero-length sequence, k lengths != q lengths), paged (16-key
#               pages) and 256/128; then the default against -V lazy_rescale=off at s 4096 / 8192,
#               both masks, both dtypes, FA4 beside, two rounds (about 6 minutes; LAZY256_ROUNDS=0:
#               the sweeps alone)
# PHASE d64wide: d = 64 non-causal (x1.01-1.02 of FA4 at s = 4096 on an H100, round 11) with wider KV
#               tiles: 192 x 160 / 176 / 192 spill 240-496 B with P in registers (3 WGs at 160
#               registers) and compile clean with P through shared memory (-V p_operand=smem); 192 x
#               128 with P in shared memory isolates that cost. A sweep of each (n with tails, both
#               dtypes, GQA; 6 cases each), then s 1024 / 4096 / 8192 beside the default and FA4, two
#               rounds (about 5 minutes)
# PHASE lazyexact: lazy_rescale=on with row_sum=rounded (O normalised by the sum of P as rounded for the
#               PV MMA; the LSE from the fp32 sum) at d = 96 and 192, and row_sum=rounded at d = 256 (lazy on
#               there by default): sweeps of fixed lengths (n 17 ... 8200, both masks, both dtypes, GQA),
#               softcap and a window, varlen, 16-key pages (round 12: lazy alone failed 2 of 58 at d = 96)
#               (about 6 minutes)
# PHASE lazyexact_bench: d = 96 / 192 / 256 at s = 8192, both masks and dtypes: lazy + rounded (FA4
#               beside), lazy alone, lazy off (about 4 minutes)
# PHASE d64trace: where a d = 64 steady step's time goes (stamps inside steady step 2: K wait + MMA issue
#               + S, softmax, previous PV wait, P hand-over + O rescale; stages/fmha/trace.py): traces of
#               d = 64 s 4096 / 8192 both masks and d = 128 s 8192 for comparison, their stamps packed
#               into $OUT/traces.tgz (benchmarks/trace_tiles.py --from-json ... --perfetto reads each)
#               (about 3 minutes)
# PHASE sumalpha: -V sum_init=alpha (a tile's row sum starts from alpha l, FlashAttention-4's order: alpha's
#               exp2 and O *= alpha issue among the P exps; d = 64's steady loop ends 7 instructions after
#               its last P exp2 instead of 44, perf-notes round 14): sweeps of d = 64 / 128 (n with tails,
#               both masks, both dtypes, GQA) and of d = 96 / 192 / 256, softcap and a window; then d = 64
#               s 1024 / 4096 / 8192 both masks, the default and FA4 then sum_init=alpha, two rounds
#               (about 7 minutes)
# PHASE sumalpha_short: the one-call form of sumalpha for a short device budget: d = 64 s 1024 / 4096 /
#               8192 both masks both dtypes (the default and FA4, then sum_init=alpha), d = 96 / 128 s = 8192
#               both masks, then sweeps of d = 64 / 128 (24 cases) and d = 96 / 192 / 256 (12) (about 6 minutes)
# PHASE sumalpha_d64: the least of sumalpha, for a device budget of minutes: d = 64 s 4096 / 8192 both
#               masks bf16, the default and FA4 then sum_init=alpha (each checked first) (about 3 minutes)
# PHASE sumalpha_wide: d = 96 / 128 / 192 / 256 at s = 8192 both masks, bf16: the default and FA4, then
#               sum_init=alpha, and d = 96 with p_sync=warp too (FA4's d = 96 loop: the same tile, P in
#               shared memory, alpha first, no WG-wide barrier after P's store; perf-notes round 14), two
#               rounds (about 5 minutes)
# Every command has its own hang timeout; `timeout` bounds each step as a backstop.
set -u
export COLUMNS=${COLUMNS:-220}
command -v wb >/dev/null 2>&1 || wb() { python3 -m workbench "$@"; }
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
PEERS=${PEERS:-fa4,sdpa-cudnn}
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader 2>/dev/null
LOG=${OUT:-/tmp}/sweeps.log
# a sweep's failing rows, then the running count of passing cases (the full table goes to $LOG)
sweep_verdicts() { tee -a "$LOG" | grep -a -E "FAIL|HANG|CRASH|ERROR" | head -20; echo "cases PASS so far: $(grep -ac '│ PASS │' "$LOG")"; }
# a bench's case rows cut to WIDTH characters, each prefixed with LABEL when given
table_rows() { grep -a -E "^│ d=" | cut -c1-"$1" | sed "s/^/${2:+$2 }/"; }
# a bench's case rows and its clock notes (wb bench's `clock:` lines), cut to 230 characters
clocked_rows() { grep -a -E "^│ d=|clock" | cut -c1-230; }
# d = 96 non-causal's launches beside the fixed-length one, swept with the variants given as arguments: softcap 30
# with a 300 / 100 window at n 1000 / 8200, varlen with empty sequences on either side, 16-key pages (10 cases)
d96_launch_sweeps() {
  timeout 80 wb sweep d --n 1000,8200 --d 96 --dtype bf16,fp16 -p causal=false -p softcap=30 -p window_left=300 \
    -p window_right=100 "$@" --timeout 40 | sweep_verdicts
  timeout 80 wb sweep d -p varlen=true -p seqlens=1:17:1000:0:4096 -p seqlens_k=5:0:1000:33:4000 -p heads=8 -p kv_heads=2 \
    --d 96 --dtype bf16,fp16 -p causal=false "$@" --timeout 40 | sweep_verdicts
  timeout 80 wb sweep d -p page_size=16 --n 17,1000 --d 96 --dtype bf16,fp16 -p causal=false -p heads=2 -p kv_heads=1 \
    "$@" --timeout 40 | sweep_verdicts
}
# tile_trial D NS SWEPT [LABEL VARIANTS ...]: a candidate tile at head dim D, non-causal: SWEPT's variants swept
# (n with tails, both dtypes, GQA, softcap 0 / 30), then the sizes NS timed, the default with FA4, then each
# LABEL's VARIANTS, PROCS (3) fresh processes each
tile_trial() {
  local d=$1 ns=$2 swept=$3
  shift 3
  step "sweep d=$d non-causal $swept, n 17/1000/4100/8200 both dtypes GQA, softcap 0 / 30"
  timeout 120 wb sweep d --n 17,1000,4100,8200 --d "$d" --dtype bf16,fp16 -p causal=false -p kv_heads=2 -p softcap=0,30 \
    $swept --timeout 40 | sweep_verdicts
  step "d=$d s ${ns//,/ / } non-causal both dtypes, the default with FA4, then each candidate, ${PROCS:-3} processes"
  timeout 150 wb bench d -p d="$d" -p n="$ns" -p causal=false -p dtype=bf16,fp16 --peers fa4 --processes "${PROCS:-3}" \
    --timeout 60 | table_rows 200 default
  while [ $# -ge 2 ]; do
    timeout 120 wb bench d -p d="$d" -p n="$ns" -p causal=false -p dtype=bf16,fp16 $2 --peers "" \
      --processes "${PROCS:-3}" --timeout 60 | table_rows 200 "$1"
    shift 2
  done
}
# d = 256's fixed-length sweep (n with a tail, both masks and dtypes, GQA) and its softcap / window
# sweep, with the -V options given (lazy256: none; lazyexact: row_sum=rounded)
d256_sweeps() {
  timeout 150 wb sweep d --n 17,1000,4096,8192 --d 256 --dtype bf16,fp16 -p causal=false,true -p kv_heads=2 \
    "$@" --timeout 40 | sweep_verdicts
  timeout 90 wb sweep d --n 1000,8192 --d 256 --dtype fp16 -p causal=true -p softcap=30,0 -p window_left=-1,300 \
    "$@" --timeout 40 | sweep_verdicts
}
# trace_tiles.py of each SPEC (its arguments), SECONDS at most each; the JSON saves go back in
# $OUT/traces.tgz:  trace_specs SECONDS SPEC...
trace_specs() {
  local seconds=$1 spec name
  shift
  rm -rf /tmp/traces && mkdir -p /tmp/traces
  for spec in "$@"; do
    name=$(echo "$spec" | tr -d ' -')
    step "trace $spec"
    timeout "$seconds" python3 benchmarks/trace_tiles.py $spec --json "/tmp/traces/$name.json"
  done
  tar czf "${OUT:-/tmp}/traces.tgz" -C /tmp traces
}

case "${1:-}" in
d64)
  step "sweep d=64: consumers=3 (serial, pingpong), consumers=2 kv_stages=4"
  timeout 170 wb sweep d --n 1,17,128,1000,4096 --d 64 --dtype bf16,fp16 -p kv_heads=4,2 \
    -V consumers=3 -V schedule=serial,pingpong --timeout 40 | tail -25
  timeout 60 wb sweep d --n 17,1000,4096 --d 64 --dtype bf16 -p kv_heads=4,2 -p causal=false,true \
    -V kv_stages=4 --timeout 40 | tail -12
  for v in "consumers=2" "consumers=3 -V schedule=serial" "consumers=3" "kv_stages=4" "kv_stages=5"; do
    peers=""; [ "$v" = "consumers=2" ] && peers=$PEERS
    step "bench d=64 -V $v"
    timeout 100 wb bench d -p n=1024,4096 -p d=64 --peers "$peers" -V $v --timeout 90 | grep -E "d=|TFLOP|PASS|FAIL|skip" | cut -c1-160
  done
  ;;
d128)
  step "sweep o_rescale=end (d 64/128, causal) and tile_order=lpt (causal, GQA)"
  timeout 120 wb sweep d --n 17,1000,4096 --d 64,128 --dtype bf16 -p causal=false,true -p kv_heads=4,2 \
    -V o_rescale=end --timeout 40 | tail -12
  timeout 100 wb sweep d --n 1,200,1000,4096,8192 --d 64,128 --dtype bf16 -p causal=true -p kv_heads=4,2 \
    -V tile_order=lpt --timeout 40 | tail -12
  step "bench d=128 s 4096,8192: mid (default, with peers) vs end"
  cpeers=$PEERS; [ -n "${WB_CUTLASS_EXAMPLES:-}" ] && cpeers="$PEERS,cutlass-example"
  timeout 150 wb bench d -p n=4096,8192 -p d=128 --peers "$cpeers" --timeout 140 | grep -E "d=|TFLOP|PASS|FAIL|skip" | cut -c1-160
  timeout 90 wb bench d -p n=4096,8192 -p d=128 --peers "" -V o_rescale=end --timeout 80 | grep -E "d=|TFLOP|PASS|FAIL" | cut -c1-160
  step "bench causal d=128 s 4096,8192: natural (with peers) vs lpt"
  timeout 150 wb bench d -p n=4096,8192 -p d=128 -p causal=true --peers "$cpeers" --timeout 140 | grep -E "d=|TFLOP|PASS|FAIL|skip" | cut -c1-160
  timeout 90 wb bench d -p n=4096,8192 -p d=128 -p causal=true --peers "" -V tile_order=lpt --timeout 80 | grep -E "d=|TFLOP|PASS|FAIL" | cut -c1-160
  timeout 90 wb bench d -p n=4096,8192 -p d=128 -p causal=true --peers "" -V tile_order=lpt -V o_rescale=end --timeout 80 | grep -E "d=|TFLOP|PASS|FAIL" | cut -c1-160
  ;;
defaults)
  step "sweep of the new defaults (d=64 non-causal: 3 consumer WGs serial; causal: lpt), both dtypes, GQA"
  timeout 200 wb sweep d --n 1,17,128,1000,1024,4096,8192 --d 64 --dtype bf16,fp16 -p causal=false,true \
    -p kv_heads=4,2 --timeout 40 | sweep_verdicts
  timeout 120 wb sweep d --n 1,17,128,1000,1024,4096,8192 --d 128 --dtype bf16,fp16 -p causal=true \
    -p kv_heads=4,2 --timeout 40 | sweep_verdicts
  step "sweep kv_load=k_ahead"
  timeout 90 wb sweep d --n 17,1000,4096 --d 64,128 --dtype bf16 -p causal=false,true -p kv_heads=2 \
    -V kv_load=k_ahead --timeout 40 | sweep_verdicts
  step "bench d=128 s 4096,8192 non-causal: default, k_ahead, end, k_ahead+end, lpt (50 reps each)"
  for v in "kv_load=paired" "kv_load=k_ahead" "o_rescale=end" "kv_load=k_ahead -V o_rescale=end" "tile_order=lpt"; do
    timeout 80 wb bench d -p n=4096,8192 -p d=128 --peers "" --reps 50 -V $v --timeout 70 | table_rows 140 "$v"
  done
  step "bench d=64 s 1024,4096 (default) and causal d=128 k_ahead"
  timeout 80 wb bench d -p n=1024,4096 -p d=64 --peers "" --timeout 70 | table_rows 140
  timeout 80 wb bench d -p n=4096,8192 -p d=128 -p causal=true --peers "" -V kv_load=k_ahead --timeout 70 | table_rows 140
  ;;
probe)
  step "sweep k_release=early (FlashAttention-4's K release, no pin)"
  timeout 90 wb sweep d --n 17,1000,4096 --d 64,128 --dtype bf16 -p causal=false,true -p kv_heads=2 \
    -V k_release=early --timeout 40 | sweep_verdicts
  step "bench d=128 pinned (default, fa4 beside) vs early vs early+end; causal pinned vs early (50 reps)"
  timeout 90 wb bench d -p n=1024,4096,8192 -p d=128 --peers fa4 --reps 50 --timeout 80 | table_rows 170
  for v in "k_release=early" "k_release=early -V o_rescale=end"; do
    timeout 60 wb bench d -p n=1024,4096,8192 -p d=128 --peers "" --reps 50 -V $v --timeout 50 | table_rows 140 "$v"
  done
  timeout 60 wb bench d -p n=4096 -p d=128 -p causal=true --peers "" --reps 50 --timeout 50 | table_rows 140
  timeout 60 wb bench d -p n=4096 -p d=128 -p causal=true --peers "" --reps 50 -V k_release=early --timeout 50 | table_rows 140 "early"
  step "per-CTA fixed cost: short sequences, batch 64 (one to eight KV tiles per CTA), fa4 beside"
  timeout 90 wb bench d -p n=128,256,512,1024 -p d=128 -p batch=64 --peers fa4 --timeout 80 | table_rows 170
  timeout 90 wb bench d -p n=128,256,512,1024 -p d=64 -p batch=64 --peers fa4 --timeout 80 | table_rows 170
  ;;
persist)
  step "sweep the new defaults (k_release=early, o_rescale=end) and persistent=on: 80 cases"
  timeout 300 wb sweep d --n 1,17,1000,4096,8192 --d 64,128 --dtype bf16 -p causal=false,true -p kv_heads=4,2 \
    -V persistent=off,on --timeout 40 | sweep_verdicts
  step "bench defaults (peers beside) vs persistent=on"
  for c in "" "-p causal=true"; do
    timeout 100 wb bench d -p n=1024,4096,8192 -p d=128 $c --peers fa4,sdpa-cudnn --reps 50 --timeout 90 | table_rows 190
    timeout 70 wb bench d -p n=1024,4096,8192 -p d=128 $c --peers "" --reps 50 -V persistent=on --timeout 60 | table_rows 140 "persistent"
  done
  timeout 70 wb bench d -p n=1024,4096 -p d=64 --peers fa4 --reps 50 --timeout 60 | table_rows 170
  timeout 70 wb bench d -p n=1024,4096 -p d=64 --peers "" --reps 50 -V persistent=on --timeout 60 | table_rows 140 "persistent"
  ;;
causal)
  step "bench causal: default (non-persistent, longest-first) vs persistent=on (snake deal)"
  timeout 80 wb bench d -p n=1024,4096,8192 -p d=128 -p causal=true --peers fa4 --reps 50 --timeout 70 | table_rows 170
  timeout 70 wb bench d -p n=1024,4096,8192 -p d=128 -p causal=true --peers "" --reps 50 -V persistent=on --timeout 60 | table_rows 140 "persistent"
  timeout 60 wb bench d -p n=8192 -p d=64 -p causal=true --peers "" --reps 50 --timeout 50 | table_rows 140
  timeout 60 wb bench d -p n=8192 -p d=64 -p causal=true --peers "" --reps 50 -V persistent=on --timeout 50 | table_rows 140 "persistent"
  step "sweep: every default configuration, plus causal persistent=on (136 cases)"
  timeout 330 wb sweep d --n 1,17,128,1000,1024,4096,8192 --d 64,128 --dtype bf16,fp16 -p causal=false,true \
    -p kv_heads=4,2 --timeout 40 | sweep_verdicts
  timeout 100 wb sweep d --n 1,17,1000,4096,8192 --d 64,128 --dtype bf16 -p causal=true -p kv_heads=4,2 \
    -V persistent=on --timeout 40 | sweep_verdicts
  ;;
ab)
  # A/B of two versions of stages/fmha/ in one call, interleaved twice: BEFORE and AFTER are
  # folders holding the versions' stages/fmha/*.py files
  #   BEFORE=dir BEFORE_COMMIT=sha AFTER=dir AFTER_COMMIT=sha bash benchmarks/gpu_tune_d.sh ab
  use() { cp "$1"/*.py stages/fmha/; }
  step "correctness of AFTER: 32 cases"
  use "$AFTER"
  WB_GIT_COMMIT=$AFTER_COMMIT timeout 120 wb sweep d --n 1,17,1000,4096 --d 64,128 --dtype bf16 -p causal=false,true \
    -p kv_heads=4,2 --timeout 40 | sweep_verdicts
  for round in 1 2; do
    for side in BEFORE AFTER; do
      commit_var=${side}_COMMIT
      use "${!side}"
      step "round $round $side"
      for c in "" "-p causal=true"; do
        WB_GIT_COMMIT=${!commit_var} timeout 80 wb bench d -p n=1024,4096,8192 -p d=128 $c --peers "" --reps 50 --timeout 70 | table_rows 140 "$side"
      done
      WB_GIT_COMMIT=${!commit_var} timeout 80 wb bench d -p n=1024,4096 -p d=64 --peers "" --reps 50 ${AB_D64_VARIANTS:-} \
        --timeout 70 | table_rows 140 "$side"
    done
  done
  use "$AFTER"
  ;;
dynamic)
  step "sweep persistent=dynamic (causal default now) and on/off: 60 cases"
  timeout 200 wb sweep d --n 1,17,1000,4096,8192 --d 64,128 --dtype bf16 -p causal=true,false -p kv_heads=2 \
    -V persistent=dynamic,off,on --timeout 40 | sweep_verdicts
  step "bench causal: dynamic (new default) vs off (the old default); non-causal: on vs dynamic"
  for v in "persistent=off" "persistent=dynamic" "persistent=off" "persistent=dynamic"; do
    timeout 60 wb bench d -p n=1024,4096,8192 -p d=128 -p causal=true --peers "" --reps 50 -V $v --timeout 50 | table_rows 140 "$v"
  done
  timeout 60 wb bench d -p n=1024,4096 -p d=128 --peers "" --reps 50 -V persistent=dynamic --timeout 50 | table_rows 140 "dynamic"
  timeout 60 wb bench d -p n=1024,4096 -p d=128 --peers "" --reps 50 -V persistent=on --timeout 50 | table_rows 140 "on"
  ;;
round3)
  step "sweep d=64 consumers=3, every schedule, both masks (GQA), plus m != n causal"
  timeout 200 wb sweep d --n 1,17,128,1000,4096 --d 64 --dtype bf16 -p causal=false,true -p kv_heads=2 \
    -V consumers=3 -V schedule=serial,pingpong,overlap --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d --n 300,1000 --d 64 --dtype fp16 -p m=1000,300 -p causal=true -p kv_heads=4 \
    -V consumers=3 -V schedule=pingpong --timeout 40 | sweep_verdicts
  step "sweep the d=128 defaults (fresh S, thread-0 mask)"
  timeout 100 wb sweep d --n 1,17,1000,4096 --d 128 --dtype bf16,fp16 -p causal=false,true -p kv_heads=2 \
    --timeout 40 | sweep_verdicts
  step "bench d=64: default (fa4 beside) vs consumers=3 pingpong / overlap (causal: vs serial)"
  for c in "" "-p causal=true"; do
    timeout 80 wb bench d -p n=1024,4096,8192 -p d=64 $c --peers fa4 --reps 50 --timeout 70 | table_rows 170
    for v in "schedule=pingpong" "schedule=overlap" "schedule=serial"; do
      timeout 60 wb bench d -p n=1024,4096,8192 -p d=64 $c --peers "" --reps 50 -V consumers=3 -V $v --timeout 50 | table_rows 140 "$v"
    done
  done
  ;;
idle)
  step "sweep d=64 3 WGs: m = n in 1, 17, 100, 1000, 1024, 4096 (idle WGs in the last Q tile)"
  timeout 150 wb sweep d --n 1,17,100,1000,1024,4096 --d 64 --dtype bf16 -p kv_heads=2 \
    -V schedule=pingpong,serial,overlap --timeout 40 | sweep_verdicts
  timeout 100 wb sweep d --n 1,17,100,1000,1024,4096 --d 64 --dtype fp16 -p kv_heads=4 \
    -V persistent=off,dynamic --timeout 40 | sweep_verdicts
  step "sweep d=128 both masks, d=64 causal (2 and 3 WGs), m != n"
  timeout 100 wb sweep d --n 1,17,100,1000 --d 128 --dtype bf16 -p causal=false,true -p kv_heads=2 --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d --n 17,1000,4096 --d 64 --dtype bf16 -p causal=true -p kv_heads=2 -V consumers=2,3 --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d --n 300,1000 --d 64,128 --dtype bf16 -p m=1000,300 -p kv_heads=2 --timeout 40 | sweep_verdicts
  ;;
qbuf)
  step "sweep q_buffers=2: d 64/128, both masks, GQA"
  timeout 90 wb sweep d --n 1,17,1000,4096 --d 64,128 --dtype bf16 -p causal=false,true -p kv_heads=2 \
    -V q_buffers=2 --timeout 40 | sweep_verdicts
  for round in 1 2; do
    for v in "q_buffers=1" "q_buffers=2"; do
      step "round $round $v"
      timeout 40 wb bench d -p n=1024,4096 -p d=64 --peers "" --reps 30 -V $v --timeout 35 | table_rows 140 "$v"
      timeout 40 wb bench d -p n=1024,4096 -p d=128 --peers "" --reps 30 -V $v --timeout 35 | table_rows 140 "$v"
      timeout 40 wb bench d -p n=4096 -p d=128 -p causal=true --peers "" --reps 30 -V $v --timeout 35 | table_rows 140 "$v"
    done
  done
  ;;
verify)
  step "sweep of every default configuration (d 64/128, causal, bf16/fp16, MHA/GQA; 112 cases)"
  timeout 330 wb sweep d --n 1,17,128,1000,1024,4096,8192 --d 64,128 --dtype bf16,fp16 -p causal=false,true \
    -p kv_heads=4,2 --timeout 40 | sweep_verdicts
  step "sweep d=128 non-causal's long kernel (128 x 176, O in Q, from n=8192 keys): tails, GQA, softcap (10 cases)"
  timeout 150 wb sweep d --n 8200,9000 --d 128 --dtype bf16,fp16 -p causal=false -p kv_heads=4,2 --timeout 40 | sweep_verdicts
  timeout 80 wb sweep d --n 8192,9000 --d 128 -p causal=false -p softcap=30 --timeout 40 | sweep_verdicts
  if [ -z "${VERIFY_NO_BENCH:-}" ]; then  # (VERIFY_NO_BENCH=1 when the perf phase follows: it times these)
    step "bench the defaults, d=64 and d=128, s 1024/4096/8192 (fa4 beside)"
    timeout 200 wb bench d -p n=1024,4096,8192 -p d=64,128 --peers fa4 --timeout 190 | table_rows 170
  fi
  ;;
verify96)
  step "sweep of d=96's defaults (sum_init=alpha from auto): n with tails, both masks, both dtypes, GQA (16 cases)"
  timeout 150 wb sweep d --n 17,1000,4096,8192 --d 96 --dtype bf16,fp16 -p causal=false,true -p kv_heads=2 --timeout 40 \
    | sweep_verdicts
  step "d=64 and 96: softcap 30 with a 300-key window, varlen, 16-key pages"
  timeout 90 wb sweep d --n 1000,8192 --d 64,96 --dtype fp16 -p causal=true -p softcap=30 -p window_left=300 --timeout 40 \
    | sweep_verdicts
  timeout 90 wb sweep d -p varlen=true -p seqlens=1:17:1000:0:4096 -p seqlens_k=5:0:1000:33:4000 -p heads=8 -p kv_heads=2 \
    --d 64,96 --dtype bf16 -p causal=false,true --timeout 40 | sweep_verdicts
  timeout 90 wb sweep d -p page_size=16 --n 17,1000 --d 64,96 -p causal=false,true -p heads=2 -p kv_heads=1 --timeout 40 \
    | sweep_verdicts
  ;;
r27)
  # round 27's last call: d = 96's defaults swept, p_sync=warp on the non-causal launches its auto leaves at
  # wg until they are swept (a window, varlen, paged), then variants earlier rounds called noise, re-timed in
  # turn beside FA4, one process each (about 5 minutes)
  step "sweep of d=96's defaults (p_sync=auto): n with tails, both masks, both dtypes, GQA (16 cases)"
  timeout 150 wb sweep d --n 17,1000,4096,8192 --d 96 --dtype bf16,fp16 -p causal=false,true -p kv_heads=2 --timeout 40 \
    | sweep_verdicts
  step "d=96 non-causal with p_sync=warp: softcap 30 with a 300 / 100 window, varlen, 16-key pages (10 cases)"
  d96_launch_sweeps -V p_sync=warp
  for v in "" "-V kv_load=k_ahead" "-V lazy_rescale=on"; do
    step "in turn: d=128 s=4096 and d=64 s=8192 non-causal, both dtypes, FA4 beside: ${v:-default}"
    timeout 60 wb bench d -p d=128 -p n=4096 -p causal=false -p dtype=bf16,fp16 $v --peers fa4 --timeout 50 | table_rows 200
    timeout 60 wb bench d -p d=64 -p n=8192 -p causal=false -p dtype=bf16,fp16 $v --peers fa4 --timeout 50 | table_rows 200
  done
  ;;
r28)
  step "d=96 non-causal defaults on softcap 30 with a 300 / 100 window, varlen, 16-key pages (10 cases)"
  d96_launch_sweeps
  for v in "" "-V schedule=overlap" "-V persistent=off" "-V persistent=on" "-V kv_stages=2" "-V kv_stages=4" \
    "-V o_rescale=mid" "-V k_release=pinned"; do
    step "in turn, d=64 s=8192 non-causal beside FA4: ${v:-default}"
    timeout 45 wb bench d -p d=64 -p n=8192 -p causal=false -p dtype=bf16,fp16 $v --peers fa4 --timeout 40 | clocked_rows
  done
  for v in "" "-V schedule=overlap" "-V persistent=off" "-V kv_stages=3" "-V o_rescale=mid" "-V sum_init=alpha"; do
    step "in turn, d=128 s=4096 non-causal beside FA4: ${v:-default}"
    timeout 40 wb bench d -p d=128 -p n=4096 -p causal=false -p dtype=bf16,fp16 $v --peers fa4 --timeout 35 | clocked_rows
  done
  ;;
r28b)
  step "d=64 non-causal defaults, the round-robin kernel from m = 8192 (8 cases)"
  timeout 90 wb sweep d --n 4096,8192,9000 --d 64 --dtype bf16,fp16 -p causal=false -p kv_heads=2 --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d -p m=8192 --n 17,1000 --d 64 --dtype bf16 -p causal=false --timeout 40 | sweep_verdicts
  for round in 1 2; do
    for v in "" "-V persistent=dynamic"; do
      step "round $round, in turn, d=64 s=8192 non-causal beside FA4: ${v:-default}"
      timeout 45 wb bench d -p d=64 -p n=8192 -p causal=false -p dtype=bf16,fp16 $v --peers fa4 --timeout 40 | table_rows 200
    done
  done
  ;;
pagedlens)
  step "tests/test_paged_gpu.py: the identity table, the bugs named, unequal KV lengths"
  timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_paged_gpu.py 2>&1 | tail -6
  step "sweep: paged, unequal KV lengths 0:17:1000:650 (room n = 1000), m 700, GQA (16 cases)"
  timeout 200 wb sweep d --n 1000 --d 64,128 --dtype bf16,fp16 -p m=700 -p causal=false,true -p page_size=16,256 -p batch=4 \
    -p seqlens_k=0:17:1000:650 -p kv_heads=2 --timeout 40 | sweep_verdicts
  step "sweep: packed queries over a paged cache (varlen, q 1:700:0:300:4096, keys 5:1000:33:0:4000), GQA (16 cases)"
  timeout 200 wb sweep d -p varlen=true -p seqlens=1:700:0:300:4096 -p seqlens_k=5:1000:33:0:4000 -p page_size=16,64 \
    --d 64,128 --dtype bf16,fp16 -p causal=false,true -p heads=8 -p kv_heads=2 --timeout 40 | sweep_verdicts
  pkg=${WB_PAGED_PREBUILT:-.gpu/export-paged}
  if [ -d "$pkg" ]; then
    for causal in false true; do
      step "wb run --exported $pkg: paged (64-key pages), unequal lengths, d=128 causal=$causal, through the op"
      timeout 120 wb run d --d 128 -p heads=4 -p kv_heads=2 -p page_size=64 -p batch=4 -p m=700 --n 1000 \
        -p seqlens_k=0:17:1000:650 -p causal=$causal --exported "$pkg" 2>&1 | tail -3
      step "wb run --exported $pkg: packed queries over 64-key pages, d=64 causal=$causal, through the op"
      timeout 120 wb run d --d 64 -p heads=4 -p kv_heads=2 -p page_size=64 -p varlen=true -p seqlens=1:700:0:300:4096 \
        -p seqlens_k=5:1000:33:0:4000 -p causal=$causal --exported "$pkg" 2>&1 | tail -3
    done
  fi
  ;;
softcapfit)
  step "sweep: softcap 30 at d=64 non-causal, now 2 consumer WGs (3 spilled 12 B; dynamic + split tail), n 17/1000/4096/8192/8200, both dtypes, GQA"
  timeout 150 wb sweep d --n 17,1000,4096,8192,8200 --d 64 --dtype bf16,fp16 -p causal=false -p kv_heads=2 -p softcap=30 --timeout 40 | sweep_verdicts
  step "sweep: softcap 30 without the 3-WG long kernels (d=64 / 96 causal n 4096 / 8192; d=128 non-causal n 8192: the 176-key kernel); d=64 varlen"
  timeout 120 wb sweep d --n 4096,8192 --d 64,96 --dtype bf16,fp16 -p causal=true -p softcap=30 -p kv_heads=2 --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d --n 8192 --d 128 --dtype bf16,fp16 -p causal=false -p softcap=30 --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d -p varlen=true -p seqlens=1:17:1000:0:4096 -p seqlens_k=5:0:1000:33:4000 -p heads=8 -p kv_heads=2 \
    --d 64 --dtype bf16,fp16 -p causal=false,true -p softcap=30 --timeout 40 | sweep_verdicts
  for round in $(seq "${ROUNDS:-2}"); do
    for v in "" "-V consumers=3"; do
      step "round $round, softcap 30 in turn beside FA4: d=64 non-causal s 4096 / 8192 and causal s 8192: ${v:-default (2 WGs)}"
      timeout 60 wb bench d -p d=64 -p n=4096,8192 -p causal=false -p softcap=30 -p dtype=bf16,fp16 $v --peers fa4 --timeout 55 | clocked_rows
      timeout 50 wb bench d -p d=64 -p n=8192 -p causal=true -p softcap=30 -p dtype=bf16 $v --peers fa4 --timeout 45 | clocked_rows
    done
    for v in "" "-V consumers=3 -V o_staging=q -V p_operand=smem"; do
      step "round $round, softcap 30 in turn beside FA4: d=128 non-causal s 8192: ${v:-default (the 176-key kernel)}"
      timeout 50 wb bench d -p d=128 -p n=8192 -p causal=false -p softcap=30 -p dtype=bf16,fp16 $v --peers fa4 --timeout 45 | clocked_rows
    done
  done
  ;;
softcapmini)
  step "softcapfit's sweeps, 10 cases: softcap 30 at d=64 non-causal (2 WGs) n 17/1000/8200 both dtypes GQA, d=64 / 96 causal and d=128 non-causal at n=8192, d=64 varlen"
  timeout 120 wb sweep d --n 17,1000,8200 --d 64 --dtype bf16,fp16 -p causal=false -p kv_heads=2 -p softcap=30 --timeout 40 | sweep_verdicts
  timeout 90 wb sweep d --n 8192 --d 64,96 --dtype bf16 -p causal=true -p softcap=30 -p kv_heads=2 --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d --n 8192 --d 128 --dtype bf16 -p causal=false -p softcap=30 --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d -p varlen=true -p seqlens=1:17:1000:0:4096 -p seqlens_k=5:0:1000:33:4000 -p heads=8 -p kv_heads=2 \
    --d 64 --dtype bf16 -p causal=false -p softcap=30 --timeout 40 | sweep_verdicts
  ;;
cluster)
  step "sweep -V cluster=2 (K and V multicast to a cluster of two CTAs): d=128 n 17/1000/4096/8192/8200 (long kernels from 8192), both dtypes, GQA, round robin and one CTA per tile"
  timeout 170 wb sweep d --n 17,1000,4096,8192,8200 --d 128 --dtype bf16,fp16 -p causal=false -p kv_heads=2 -V cluster=2 \
    -V persistent=on,off --timeout 40 | sweep_verdicts
  step "sweep -V cluster=2 at d=64 (43 Q tiles a head at 8192: one more), 96, 192, 256; m != n; softcap 30"
  timeout 120 wb sweep d --n 1000,8192 --d 64,96,192,256 --dtype bf16 -p causal=false -p kv_heads=2 -V cluster=2 --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d -p m=1000,8192 --n 4096 --d 128 --dtype fp16 -p causal=false -p softcap=0,30 -V cluster=2 --timeout 40 | sweep_verdicts
  for round in 1 2; do
    for v in "" "-V cluster=2" "-V cluster=2 -V persistent=off"; do
      step "round $round, in turn beside FA4, non-causal d=128 s 4096 / 8192: ${v:-default}"
      timeout 80 wb bench d -p d=128 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 $v --peers fa4 --timeout 75 | clocked_rows
    done
    for v in "" "-V cluster=2"; do
      step "round $round, in turn beside FA4, non-causal s 8192 d 64 / 192 / 256: ${v:-default}"
      for d in 64 192 256; do
        timeout 50 wb bench d -p d=$d -p n=8192 -p causal=false -p dtype=bf16,fp16 $v --peers fa4 --timeout 45 | clocked_rows
      done
    done
  done
  ;;
r30)
  for round in 1 2; do
    step "round $round (in turn beside FA4): d=128 and d=64, s 4096 / 8192, non-causal, both dtypes"
    timeout 80 wb bench d -p d=128 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 75 | clocked_rows
    timeout 80 wb bench d -p d=64 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 75 | clocked_rows
  done
  ;;
exportvarlen)
  pkg=${WB_EXPORT_PREBUILT:-.gpu/export-pkg}
  step "tests/test_export_gpu.py -k varlen from the package at $pkg"
  WB_EXPORT_PREBUILT=$pkg timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_export_gpu.py -k varlen 2>&1 | tail -4
  step "wb run --exported: a mixed varlen batch (1 / 17 / 1000 / 0 / 300 / 4096 rows), d=128 causal, through the op"
  timeout 120 wb run d --d 128 -p heads=4 -p kv_heads=2 -p varlen=true -p seqlens=1:17:1000:0:300:4096 \
    -p seqlens_k=5:40:1000:33:0:4000 -p causal=true --exported "$pkg" 2>&1 | tail -4
  step "export_launch_cost.py --varlen (host time per call, cached and rebuilt tile table, FA4's varlen beside)"
  rm -rf /tmp/xv && mkdir -p /tmp/xv && cp -r "$pkg/wb_fmha" /tmp/xv/
  PYTHONPATH="/tmp/xv:${PYTHONPATH:-}" timeout 120 python3 benchmarks/export_launch_cost.py --varlen 2>&1 | tail -16
  ;;
r29)
  for round in 1 2; do
    for v in "" "-V persistent=on"; do
      step "round $round, in turn beside FA4, non-causal: ${v:-default}"
      timeout 70 wb bench d -p d=128 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 $v --peers fa4 --timeout 65 | table_rows 200
      for d in 96 192 256; do
        timeout 50 wb bench d -p d=$d -p n=8192 -p causal=false -p dtype=bf16,fp16 $v --peers fa4 --timeout 45 | table_rows 200
      done
    done
  done
  ;;
alphafinal)
  step "wb bench d --sweep (docs/perf.md) with every peer"
  timeout 420 wb bench d --sweep -p dtype=bf16,fp16 --peers fa4,sdpa-cudnn,sdpa-flash --timeout 400 | grep -a -E "PASS|FAIL|^│ d=" | cut -c1-200
  step "sweep of the kernels whose default is sum_init=alpha (d=64/96, n with tails, both masks and dtypes, GQA; 32 cases)"
  timeout 200 wb sweep d --n 17,1000,4096,8192 --d 64,96 --dtype bf16,fp16 -p causal=false,true -p kv_heads=2 --timeout 40 \
    | sweep_verdicts
  ;;
alphamini)
  step "wb bench d --sweep, bf16 only, every peer"
  timeout 200 wb bench d --sweep -p dtype=bf16 --peers fa4,sdpa-cudnn,sdpa-flash --timeout 190 | grep -a -E "PASS|FAIL|^│ d=" | cut -c1-200
  step "sweep of the kernels whose default is sum_init=alpha (d=64/96, n 17/1000/8192, both masks and dtypes, GQA; 24 cases)"
  timeout 120 wb sweep d --n 17,1000,8192 --d 64,96 --dtype bf16,fp16 -p causal=false,true -p kv_heads=2 --timeout 40 | sweep_verdicts
  ;;
d96)
  C3="-V consumers=3"  # with p_operand=auto: P through shared memory, 192 x 128, O in its own tile
  step "sweep of the 192-row causal candidates (n with tails, GQA; 16 cases)"
  for v in "$C3" "$C3 -V o_staging=q" "$C3 -V o_staging=q -V kv_tile=144" "$C3 -V tile_order=natural"; do
    timeout 120 wb sweep d --n 17,1000,4096,8192 --d 96 -p causal=true -p kv_heads=2 $v --timeout 40 | sweep_verdicts
  done
  for round in 1 2; do
    step "round $round: default (2 WGs, P in registers) and FA4, then each candidate (s 4096/8192)"
    timeout 150 wb bench d -p d=96 -p n=4096,8192 -p causal=true -p dtype=bf16,fp16 --peers fa4 --timeout 140 | table_rows 170
    for v in "$C3" "$C3 -V o_staging=q" "$C3 -V o_staging=q -V kv_tile=144" "$C3 -V tile_order=natural"; do
      echo "--- $v"
      timeout 120 wb bench d -p d=96 -p n=4096,8192 -p causal=true -p dtype=bf16 $v --peers "" --timeout 110 | table_rows 170
    done
  done
  step "traces: where the 3-WG causal kernel's time goes (per-tile stamps, docs/perf-notes.md round 4)"
  for v in "" "$C3"; do
    timeout 120 wb run d --d 96 --n 8192 -p batch=2 -p heads=21 -p causal=true -f random --seeds 1 --trace $v | grep -a -A6 "^trace:"
  done
  ;;
d128q)
  CANDIDATES=("o_staging=q -V kv_stages=3" "o_staging=q -V kv_tile=144" "o_staging=q -V kv_tile=160" "o_staging=q -V kv_tile=176")
  step "sweep of the O-in-Q candidates at d=128 (n with tails, causal both, GQA; 12 cases each)"
  for v in "${CANDIDATES[@]}"; do
    timeout 120 wb sweep d --n 17,1000,4096 --d 128 -p causal=false,true -p kv_heads=4,2 -V $v --timeout 40 | sweep_verdicts
  done
  for round in 1 2; do
    step "round $round: default and FA4, then each candidate (d=128, s 4096/8192, both dtypes)"
    timeout 150 wb bench d -p d=128 -p n=4096,8192 -p dtype=bf16,fp16 --peers fa4 --timeout 140 | table_rows 170
    for v in "${CANDIDATES[@]}"; do
      echo "--- $v"
      timeout 100 wb bench d -p d=128 -p n=4096,8192 -p dtype=bf16,fp16 -V $v --peers "" --timeout 90 | table_rows 170
    done
  done
  ;;
long128)
  for round in 1 2; do
    step "round $round: d=128 non-causal s 8192/16384, the default (its long kernel, 128 x 176) with FA4, then kv_tile=128 (one kernel)"
    timeout 120 wb bench d -p d=128 -p n=8192,16384 -p dtype=bf16,fp16 --peers fa4 --timeout 110 | table_rows 170
    timeout 100 wb bench d -p d=128 -p n=8192,16384 -p dtype=bf16,fp16 -V kv_tile=128 --peers "" --timeout 90 | table_rows 170 "kv128"
  done
  ;;
mn128)
  step "sweep the forced 176-key kernel at m != n (tails on both sides), both dtypes"
  timeout 120 wb sweep d --n 4096,9000 --d 128 --dtype bf16,fp16 -p m=8192,1000 -p causal=false \
    -V kv_tile=176 -V o_staging=q --timeout 40 | sweep_verdicts
  for round in 1 2; do
    for mn in "8192 4096" "4096 16384"; do
      set -- $mn
      step "round $round: m=$1 n=$2: 176-key tiles with FA4, then kv_tile=128"
      timeout 100 wb bench d -p d=128 -p m=$1 -p n=$2 -p dtype=bf16 -V kv_tile=176 -V o_staging=q --peers fa4 --timeout 90 | table_rows 170 "kv176"
      timeout 100 wb bench d -p d=128 -p m=$1 -p n=$2 -p dtype=bf16 -V kv_tile=128 --peers "" --timeout 90 | table_rows 170 "kv128"
    done
  done
  ;;
psync)
  step "sweep p_sync=warp: d=96 non-causal and causal (the long kernel from m=8192), tails, GQA, softcap, both dtypes"
  timeout 200 wb sweep d --n 17,1000,8192,9000 --d 96 --dtype bf16,fp16 -p causal=false,true -p kv_heads=2,1 \
    -V p_sync=warp --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d --n 1000,8192 --d 96 -p causal=false -p softcap=30 -V p_sync=warp --timeout 40 | sweep_verdicts
  for round in 1 2; do
    step "round $round: default (p_sync=wg) and FA4, then p_sync=warp (d=96 s 8192, both masks, both dtypes)"
    for c in "false" "true"; do
      timeout 120 wb bench d -p d=96 -p n=8192 -p causal=$c -p dtype=bf16,fp16 --peers fa4 --timeout 110 | table_rows 170
      timeout 100 wb bench d -p d=96 -p n=8192 -p causal=$c -p dtype=bf16,fp16 -V p_sync=warp --peers "" --timeout 90 | table_rows 170 "warp"
    done
  done
  ;;
lazy)
  step "sweep lazy_rescale=on: d 64/96/128/192/256, both masks, both dtypes, tails, GQA"
  timeout 260 wb sweep d --n 1000,4096 --d 64,96,128,192,256 --dtype bf16,fp16 -p causal=false,true -p kv_heads=2 \
    -V lazy_rescale=on --timeout 40 | sweep_verdicts
  timeout 120 wb sweep d --n 1000,8192 --d 128 -p causal=true -p softcap=30,0 -p window_left=-1,300 \
    -V lazy_rescale=on --timeout 40 | sweep_verdicts
  for round in 1 2; do
    for d in ${LAZY_DIMS:-128 256}; do
      step "round $round: d=$d s=8192 both masks, off (FA4 beside) then on"
      timeout 120 wb bench d -p d=$d -p n=8192 -p causal=false,true -p dtype=bf16,fp16 --peers fa4 --timeout 110 | table_rows 170
      timeout 100 wb bench d -p d=$d -p n=8192 -p causal=false,true -p dtype=bf16,fp16 -V lazy_rescale=on --peers "" --timeout 90 | table_rows 170 "lazy"
    done
  done
  ;;
varlen)
  MIXED="16000:12345:8192:6000:5120:4096:3500:3072:2600:2048:1500:931:128"
  for c in false true; do
    step "varlen causal=$c: mixed batch and 4 x 4096, bf16 and fp16, fa4 beside, 5 processes each"
    timeout 260 wb bench d -p d=128 -p n=16000 -p causal=$c -p varlen=true -p seqlens=$MIXED -p dtype=bf16,fp16 \
      --peers fa4 --processes 5 --timeout 50 | table_rows 170
    timeout 200 wb bench d -p d=128 -p n=4096 -p causal=$c -p varlen=true -p seqlens=4096:4096:4096:4096 -p dtype=bf16,fp16 \
      --peers fa4 --processes 3 --timeout 50 | table_rows 170
  done
  ;;
byn)
  step "sweep the default d=128 non-causal at m != n (the 176-key kernel from n = 8192 keys), both dtypes, GQA"
  timeout 150 wb sweep d --n 8192,9000 --d 128 --dtype bf16,fp16 -p m=1000,4096 -p causal=false -p kv_heads=2 \
    --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d --n 4096 --d 128 -p m=8192 -p causal=false --timeout 40 | sweep_verdicts
  for round in 1 2; do
    for mn in "4096 16384" "8192 4096"; do
      set -- $mn
      step "round $round: m=$1 n=$2: the default with FA4, then kv_tile=128"
      timeout 100 wb bench d -p d=128 -p m=$1 -p n=$2 -p dtype=bf16 --peers fa4 --timeout 90 | table_rows 170
      timeout 100 wb bench d -p d=128 -p m=$1 -p n=$2 -p dtype=bf16 -V kv_tile=128 --peers "" --timeout 90 | table_rows 170 "kv128"
    done
  done
  ;;
wide)
  CANDIDATES=("schedule=overlap" "schedule=overlap -V o_rescale=mid")
  step "sweep d=192 and 256 without pingpong turns (n with tails, both masks, GQA; 12 cases each)"
  for v in "${CANDIDATES[@]}"; do
    timeout 150 wb sweep d --n 17,1000,4096 --d 192,256 -p causal=false,true -p kv_heads=2 -V $v --timeout 40 | sweep_verdicts
  done
  for round in 1 2; do
    for d in 256 192; do
      step "round $round: d=$d s=8192 both masks bf16: the default (pingpong) with FA4, then each candidate"
      timeout 120 wb bench d -p d=$d -p n=8192 -p causal=false,true -p dtype=bf16 --peers fa4 --timeout 110 | table_rows 170
      for v in "${CANDIDATES[@]}"; do
        timeout 100 wb bench d -p d=$d -p n=8192 -p causal=false,true -p dtype=bf16 -V $v --peers "" --timeout 90 | table_rows 170 "${v// -V /+}"
      done
      [ $d = 256 ] && timeout 100 wb bench d -p d=256 -p n=8192 -p causal=false,true -p dtype=bf16 -V lazy_rescale=on --peers "" --timeout 90 | table_rows 170 "lazy"
    done
  done
  ;;
lazy256)
  step "sweep d=256's default (lazy_rescale on): fixed lengths, both masks, both dtypes, GQA (16 cases); softcap 30 and a 300-key window"
  d256_sweeps
  step "varlen; paged 16-key pages; 256/128 (lazy off there)"
  timeout 90 wb sweep d -p varlen=true -p seqlens=1:17:1000:0:4096 -p seqlens_k=5:0:1000:33:4000 -p heads=8 -p kv_heads=2 \
    --d 256 --dtype bf16,fp16 -p causal=false,true --timeout 40 | sweep_verdicts
  timeout 90 wb sweep d -p page_size=16 --n 17,1000 --d 256 -p causal=false,true -p heads=2 -p kv_heads=1 --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d --n 1000,4096 --d 256 -p dv=128 -p causal=false,true --timeout 40 | sweep_verdicts
  for round in $(seq 1 "${LAZY256_ROUNDS:-2}"); do
    step "round $round: d=256 s 4096/8192 both masks both dtypes: the default (lazy on) with FA4, then lazy_rescale=off"
    timeout 150 wb bench d -p d=256 -p n=4096,8192 -p causal=false,true -p dtype=bf16,fp16 --peers fa4 --timeout 140 | table_rows 170
    timeout 120 wb bench d -p d=256 -p n=4096,8192 -p causal=false,true -p dtype=bf16,fp16 -V lazy_rescale=off --peers "" --timeout 110 | table_rows 170 "off"
  done
  ;;
d64wide)
  CANDS=("-V p_operand=smem" "-V p_operand=smem -V kv_tile=160" "-V p_operand=smem -V kv_tile=176" "-V p_operand=smem -V kv_tile=192")
  step "sweep the wider d=64 tiles, P through shared memory (n with tails, both dtypes, GQA; 6 cases each)"
  for v in "${CANDS[@]}"; do
    timeout 100 wb sweep d --n 17,1000,4096 --d 64 --dtype bf16,fp16 -p causal=false -p kv_heads=2 $v --timeout 40 | sweep_verdicts
  done
  for round in 1 2; do
    step "round $round: d=64 non-causal s 1024/4096/8192: the default and FA4, then each candidate"
    timeout 100 wb bench d -p d=64 -p n=1024,4096,8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 90 | table_rows 170
    for v in "${CANDS[@]}"; do
      timeout 80 wb bench d -p d=64 -p n=1024,4096,8192 -p causal=false -p dtype=bf16,fp16 $v --peers "" --timeout 70 | table_rows 150 "$v"
    done
  done
  ;;
lazyexact)
  V="-V lazy_rescale=on -V row_sum=rounded"
  step "sweep d=96 and 192, lazy_rescale=on row_sum=rounded: fixed lengths, both masks, both dtypes, GQA (40 cases)"
  timeout 240 wb sweep d --n 17,1000,4096,8192,8200 --d 96,192 --dtype bf16,fp16 -p causal=false,true -p kv_heads=2 \
    $V --timeout 40 | sweep_verdicts
  step "d=96 and 192: softcap 30 and a 300-key window; varlen; 16-key pages"
  timeout 90 wb sweep d --n 1000,8192 --d 96,192 --dtype fp16 -p causal=true -p softcap=30 -p window_left=-1,300 \
    $V --timeout 40 | sweep_verdicts
  timeout 90 wb sweep d -p varlen=true -p seqlens=1:17:1000:0:4096 -p seqlens_k=5:0:1000:33:4000 -p heads=8 -p kv_heads=2 \
    --d 96,192 --dtype bf16 -p causal=false,true $V --timeout 40 | sweep_verdicts
  timeout 90 wb sweep d -p page_size=16 --n 17,1000 --d 96,192 -p causal=false,true -p heads=2 -p kv_heads=1 $V \
    --timeout 40 | sweep_verdicts
  step "d=256 (lazy on by default) with row_sum=rounded: fixed lengths, both masks, both dtypes, GQA; softcap and a window"
  d256_sweeps -V row_sum=rounded
  ;;
lazyexact96)
  V="-V lazy_rescale=on -V row_sum=rounded"
  step "sweep d=96 and 192, lazy_rescale=on row_sum=rounded: n with tails, both masks, both dtypes, GQA (32 cases)"
  timeout 200 wb sweep d --n 17,1000,4096,8200 --d 96,192 --dtype bf16,fp16 -p causal=false,true -p kv_heads=2 \
    $V --timeout 40 | sweep_verdicts
  for round in 1 2; do
    step "round $round: d=96/192 s=8192 both masks both dtypes: the default with FA4, lazy with the rounded sum, lazy alone"
    B="wb bench d -p d=96,192 -p n=8192 -p causal=false,true -p dtype=bf16,fp16"
    timeout 90 $B --peers fa4 --timeout 80 | table_rows 170
    timeout 70 $B $V --peers "" --timeout 60 | table_rows 150 "rounded"
    timeout 70 $B -V lazy_rescale=on --peers "" --timeout 60 | table_rows 150 "lazy fp32"
  done
  ;;
dynfinal)
  step "sweep of d=128 non-causal's defaults under the dynamic scheduler: n with tails, the long kernel, both dtypes, GQA (36 cases)"
  timeout 200 wb sweep d --n 1,17,128,1000,1024,4096,8192,8200,9000 --d 128 --dtype bf16,fp16 -p causal=false -p kv_heads=4,2 \
    --timeout 40 | sweep_verdicts
  timeout 80 wb sweep d --n 8192,9000 --d 128 -p causal=false -p softcap=30 -p window_left=-1,300 --timeout 40 | sweep_verdicts
  step "wb bench d --sweep (docs/perf.md) with every peer"
  timeout 400 wb bench d --sweep -p dtype=bf16,fp16 --peers fa4,sdpa-cudnn,sdpa-flash --timeout 380 | grep -a -E "PASS|FAIL|^│ d=" | cut -c1-200
  ;;
qbuf128)
  # q_buffers=2 on top of d = 128 non-causal's dynamic scheduler (+0.5 % alone at s = 4096, round 16;
  # at n >= 8192 it takes the 128 x 128 kernel: the 128 x 176 one has no room for a second Q)
  step "sweep q_buffers=2 at d=128 non-causal: n with tails, both dtypes, GQA (8 cases)"
  timeout 100 wb sweep d --n 17,1000,1024,4096 --d 128 --dtype bf16,fp16 -p causal=false -p kv_heads=2 -V q_buffers=2 \
    --timeout 40 | sweep_verdicts
  for round in 1 2; do
    step "round $round: d=128 s 1024/4096 non-causal both dtypes: the default with FA4, then q_buffers=2"
    timeout 60 wb bench d -p d=128 -p n=1024,4096 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 50 | table_rows 170
    timeout 60 wb bench d -p d=128 -p n=1024,4096 -p causal=false -p dtype=bf16,fp16 -V q_buffers=2 --peers "" --timeout 50 \
      | table_rows 150 "q_buffers=2"
  done
  ;;
scan128)
  # d = 128 s = 4096 non-causal (x1.01-1.02 of FA4): the existing variants again on the H100, since
  # round 3 (H200) scanned them before sum_init, the long kernel and O staged in Q
  B="wb bench d -p d=128 -p n=4096 -p causal=false -p dtype=bf16"
  for round in 1 2; do
    step "round $round: d=128 s=4096 non-causal bf16: the default with FA4, then each variant"
    timeout 40 $B --peers fa4 --timeout 35 | table_rows 170
    for v in "q_buffers=2" "kv_load=k_ahead" "persistent=dynamic" "sum_init=alpha" "o_staging=q kv_stages=3" \
             "kv_tile=144 o_staging=q" "kv_tile=160 o_staging=q"; do
      timeout 40 $B $(printf -- '-V %s ' $v) --peers "" --timeout 35 | table_rows 150 "$v"
    done
  done
  ;;
d64short)
  # short_tile=split (stages/fmha/short_tile.py): d = 64 non-causal's last Q tile, whose real rows fit one
  # WG at m = 1024 and 4096, shared by the three consumer WGs; needs the dynamic scheduler to balance.
  # Most telling first (the pool lends few machines): correctness, then the speed beside the default
  S="-V persistent=dynamic -V short_tile=split"
  step "tests/test_short_tile_gpu.py (every row written, the whole tile's result, the same bits every launch)"
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_short_tile_gpu.py 2>&1 | tail -15
  for v in default split dynwhole; do
    case $v in
      default) V=""; peers="sdpa-cudnn,fa4"; procs=${PROCS:-2};;
      split) V="$S"; peers=""; procs=${PROCS:-2};;
      dynwhole) V="-V persistent=dynamic -V split_tail=off -V short_tile=whole"; peers=""; procs=1;;
    esac
    step "d=64 s=1024/4096 non-causal, both dtypes, $v, $procs process(es)"
    timeout 170 wb bench d -p d=64 -p n=1024,4096 -p causal=false -p dtype=bf16,fp16 $V --peers "$peers" \
      --processes "$procs" --timeout 50 | table_rows 200 "$v"
  done
  step "sweep d=64 non-causal $S: m 17/1000/1024 x n 128/384/1000/4100 bf16; m 4096 fp16 GQA softcap 0/30"
  timeout 150 wb sweep d --d 64 -p causal=false -p m=17,1000,1024 --n 128,384,1000,4100 --dtype bf16 $S \
    --timeout 40 | sweep_verdicts
  timeout 100 wb sweep d --d 64 -p causal=false -p m=4096 --n 4096 --dtype fp16 -p kv_heads=2 -p softcap=0,30 $S \
    --timeout 40 | sweep_verdicts
  ;;
dynscan)
  # the dynamic scheduler at the other head dims, non-causal (d = 128's default since round 16:
  # +0.3-1.3 % against round robin); d = 96 and 256 run one CTA per tile by default
  step "sweep persistent=dynamic at d=64/96/192/256 non-causal: n with tails, both dtypes, GQA (16 cases)"
  timeout 150 wb sweep d --n 1000,8200 --d 64,96,192,256 --dtype bf16,fp16 -p causal=false -p kv_heads=2 \
    -V persistent=dynamic --timeout 40 | sweep_verdicts
  for round in 1 2; do
    step "round $round: d=64 s 1024/8192, d=96/192/256 s 8192, non-causal, both dtypes: the default with FA4, then dynamic"
    for spec in "-p d=64 -p n=1024,8192" "-p d=96,192,256 -p n=8192"; do
      timeout 100 wb bench d $spec -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 90 | table_rows 170
      timeout 100 wb bench d $spec -p causal=false -p dtype=bf16,fp16 -V persistent=dynamic --peers "" --timeout 90 \
        | table_rows 150 "dynamic"
    done
  done
  ;;
dyn96)
  # d = 96 non-causal's default became dynamic (round 17): verify96's sweeps, then the default
  # beside FA4 and one CTA per tile (the old default), two rounds
  bash "$0" verify96
  for round in 1 2; do
    step "round $round: d=96 s 4096/8192 non-causal, both dtypes: the default with FA4, then persistent=off"
    timeout 100 wb bench d -p d=96 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 90 | table_rows 170
    timeout 100 wb bench d -p d=96 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 -V persistent=off --peers "" --timeout 90 \
      | table_rows 150 "off"
  done
  ;;
paged_gaps)
  # docs/fmha.md "Not yet" of paged KV: fp16, a window and a softcap had not run on a GPU, nor
  # FA4's paged path as a peer
  step "sweep paged fp16: pages 16 / 128, n with tails, d 64 / 128, both masks, GQA (24 cases)"
  timeout 150 wb sweep d -p page_size=16,128 --n 17,1000,4096 --d 64,128 --dtype fp16 -p causal=false,true -p kv_heads=2 \
    --timeout 40 | sweep_verdicts
  step "sweep paged with softcap 30 and a 300-key window: pages 32 / 128, n 1000 / 4096, d 128, both dtypes, causal (8 cases)"
  timeout 100 wb sweep d -p page_size=32,128 --n 1000,4096 --d 128 --dtype bf16,fp16 -p causal=true -p softcap=30 \
    -p window_left=300 -p kv_heads=2 --timeout 40 | sweep_verdicts
  step "bench paged d=128 s=8192 non-causal bf16, pages 128 / 16, FA4 given the same caches and block table"
  timeout 120 wb bench d -p d=128 -p n=8192 -p causal=false -p dtype=bf16 -p page_size=128,16 --peers fa4 --timeout 110 \
    | grep -a -E "PASS|FAIL|ERROR|^│ d=" | cut -c1-220
  ;;
split)
  step "sweep split_tail=on at d=128, m=4096 heads=5 kv_heads=1 (160 tiles), n 17 ... 8192, both dtypes (12 cases)"
  timeout 150 wb sweep d -V split_tail=on -p m=4096 --n 17,300,1000,4096,4100,8192 --d 128 --dtype bf16,fp16 -p heads=5 \
    -p kv_heads=1 -p batch=1 --timeout 40 | sweep_verdicts
  step "sweep split_tail=on with softcap 30, d=128 and d=64/96/256 (dynamic), n 1000 / 4100 (8 cases)"
  timeout 100 wb sweep d -V split_tail=on -p m=4096 --n 1000,4100 --d 128 --dtype bf16,fp16 -p heads=5 -p kv_heads=1 -p batch=1 \
    -p softcap=30 --timeout 40 | sweep_verdicts
  timeout 120 wb sweep d -V split_tail=on -V persistent=dynamic -p m=4096 --n 1000,4100 --d 64,96 --dtype bf16 -p heads=7 \
    -p kv_heads=1 -p batch=1 --timeout 40 | sweep_verdicts
  ;;
splitbench)
  for round in $(seq 1 "${SPLIT_ROUNDS:-2}"); do
    step "round $round: d=128 s 1024/4096/8192 non-causal, both dtypes: the default with FA4, then split_tail=on"
    timeout 120 wb bench d -p d=128 -p n=1024,4096,8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 110 | table_rows 170
    timeout 120 wb bench d -p d=128 -p n=1024,4096,8192 -p causal=false -p dtype=bf16,fp16 -V split_tail=on --peers "" --timeout 110 \
      | table_rows 150 "split"
  done
  step "few waves: d=128 m=n=4096 batch=1, 5 and 6 heads (160 / 192 work tiles on 132 CTAs), both dtypes: the default with FA4, then split_tail=on"
  timeout 100 wb bench d -p d=128 -p m=4096 -p n=4096 -p batch=1 -p heads=5,6 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 90 \
    | table_rows 170
  timeout 100 wb bench d -p d=128 -p m=4096 -p n=4096 -p batch=1 -p heads=5,6 -p causal=false -p dtype=bf16,fp16 -V split_tail=on --peers "" \
    --timeout 90 | table_rows 150 "split"
  ;;
splitauto)
  step "sweep the defaults at d=96/128 non-causal where the kernel cuts (m=4096, 5 / 7 heads, batch 1) (16 cases)"
  timeout 150 wb sweep d -p m=4096 --n 17,1000,4100,9000 --d 128 --dtype bf16,fp16 -p heads=5 -p kv_heads=1 -p batch=1 \
    -p causal=false --timeout 40 | sweep_verdicts
  timeout 150 wb sweep d -p m=4096 --n 17,1000,4100,9000 --d 96 --dtype bf16,fp16 -p heads=7 -p kv_heads=7 -p batch=1 \
    -p causal=false --timeout 40 | sweep_verdicts
  step "sweep the defaults at d=96/128 non-causal, n with tails, GQA (12 cases)"
  timeout 150 wb sweep d --n 17,1000,4096,8200 --d 96,128 --dtype bf16 -p causal=false -p kv_heads=2 --timeout 40 | sweep_verdicts
  timeout 100 wb sweep d --n 1000,8200 --d 96,128 --dtype fp16 -p causal=false -p softcap=30 --timeout 40 | sweep_verdicts
  step "bench: the default (split auto) with FA4, then split_tail=off: d=128 s 1024/4096/8192, d=96 s 4096/8192, both dtypes"
  timeout 120 wb bench d -p d=128 -p n=1024,4096,8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 110 | table_rows 170
  timeout 120 wb bench d -p d=128 -p n=1024,4096,8192 -p causal=false -p dtype=bf16,fp16 -V split_tail=off --peers "" --timeout 110 \
    | table_rows 150 "off"
  timeout 100 wb bench d -p d=96 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 90 | table_rows 170
  timeout 100 wb bench d -p d=96 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 -V split_tail=off --peers "" --timeout 90 \
    | table_rows 150 "off"
  step "few waves, batch 1: d=128 5 heads, d=96 7 heads, m=n=4096, both dtypes"
  for dh in 128:5 96:7; do
    timeout 80 wb bench d -p d=${dh%:*} -p m=4096 -p n=4096 -p batch=1 -p heads=${dh#*:} -p causal=false -p dtype=bf16,fp16 --peers fa4 \
      --timeout 70 | table_rows 170
    timeout 80 wb bench d -p d=${dh%:*} -p m=4096 -p n=4096 -p batch=1 -p heads=${dh#*:} -p causal=false -p dtype=bf16,fp16 \
      -V split_tail=off --peers "" --timeout 70 | table_rows 150 "off"
  done
  ;;
splitab)
  for v in auto off auto; do
    step "d=128 s 1024/4096 non-causal, both dtypes, split_tail=$v, 3 processes"
    timeout 150 wb bench d -p d=128 -p n=1024,4096 -p causal=false -p dtype=bf16,fp16 -V split_tail=$v --processes 3 --peers "" \
      --timeout 140 | table_rows 150 "$v"
  done
  ;;
splittest)
  step "tests/test_split_kv_gpu.py"
  timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_split_kv_gpu.py 2>&1 | tail -15
  ;;
emptyrows)
  # rows that see no key (LSE = -inf in both the kernel and the reference) under compare.metrics'
  # stricter rule for a reference that is not finite (an infinity the output misses is a FAIL):
  # varlen with zero-length key sequences, bottom-right causal with m > n, both stage D and the
  # stages A-C at their defaults
  step "sweep varlen with zero-length key sequences, d 64 / 128, both masks (4 cases)"
  timeout 90 wb sweep d -p varlen=true -p seqlens=1:17:1000:0:4096 -p seqlens_k=5:0:1000:33:4000 -p heads=8 -p kv_heads=2 \
    --d 64,128 --dtype bf16 -p causal=false,true --timeout 40 | sweep_verdicts
  step "sweep bottom-right causal m = 1000 > n = 300 and a 0-key window, d 64 / 128, both dtypes (8 cases)"
  timeout 90 wb sweep d -p m=1000 --n 300 -p align=bottom_right --d 64,128 --dtype bf16,fp16 -p causal=true -p window_left=-1,0 \
    --timeout 40 | sweep_verdicts
  step "stages a, b, c at their defaults (n 128 / 1024)"
  for s in a b c; do timeout 60 wb sweep $s --n 128,1024 --timeout 40 | sweep_verdicts; done
  ;;
stale)
  # round 19: a split launch whose arrival counts outnumber the last split launch's (d = 96's 3
  # WGs after d = 128's 2) on the one grown buffer, then the perf sweep that first showed it
  step "tests/test_split_kv_gpu.py (a launch with more counts after one that left partials)"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_split_kv_gpu.py 2>&1 | tail -15
  step "wb bench d --sweep (docs/perf.md) with every peer"
  timeout 330 wb bench d --sweep -p dtype=bf16,fp16 --peers fa4,sdpa-cudnn,sdpa-flash --timeout 320 \
    | grep -a -E "PASS|FAIL|^│ d=" | cut -c1-200
  step "tests/test_export_gpu.py (the exported op on two streams at once)"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_export_gpu.py 2>&1 | tail -15
  ;;
streams)
  # a224803: wb's counter buffer per (device, stream), grown twofold, replaced ones kept
  step "tests/test_split_kv_gpu.py (two streams at once) and tests/test_timeline_gpu.py"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_split_kv_gpu.py tests/test_timeline_gpu.py 2>&1 | tail -4
  step "sweep: the defaults across head dims and lengths, both masks, one worker (the buffer grows and is reused)"
  timeout 200 wb sweep d --n 1000,4096,8192 --d 64,96,128 --dtype fp16 -p causal=false,true -p kv_heads=2 --timeout 40 \
    | sweep_verdicts
  ;;
streams2)
  step "tests/test_split_kv_gpu.py: two streams at once, more counts after stale partials"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_split_kv_gpu.py -k "two_streams or more_counts" 2>&1 | tail -4
  ;;
exportsplit)
  # the split tail's pieces added in piece order (bit-equal launches), and the exported op's
  # buffer sized for its partials (the op cut nothing before)
  step "tests/test_split_kv_gpu.py and tests/test_export_gpu.py"
  timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_split_kv_gpu.py tests/test_export_gpu.py 2>&1 | tail -15
  bash "$0" exportbench
  ;;
exportbench)
  step "export d=128 non-causal (4 heads, 2 KV heads), its fixtures through the op at m=5120 n=4096 (160 tiles: cut), then timed"
  rm -rf /tmp/xs && timeout 200 wb export d -p d=128 -p heads=4 -p kv_heads=2 -p causal=false --allow-unverified --out /tmp/xs/pkg >/dev/null \
    && { python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/xs/site /tmp/xs/pkg 2>/dev/null \
         || { mkdir -p /tmp/xs/site && cp -r /tmp/xs/pkg/wb_fmha /tmp/xs/site/; }; } \
    && timeout 120 wb run d --d 128 -p heads=4 -p kv_heads=2 -p batch=1 -p m=5120 --n 4096 -p causal=false --exported /tmp/xs/pkg 2>&1 | tail -4 \
    && PYTHONPATH="/tmp/xs/site:$PYTHONPATH" timeout 120 python3 benchmarks/export_split_tail.py
  ;;
d64split)
  # d = 64 non-causal under the dynamic scheduler with its split-KV tail (auto turns it on where
  # the kernel is dynamic): s = 1024's 3072 tiles are 23.3 waves on 132 CTAs, and the cost model
  # cuts the last wave's 36 tiles in 3 (12 half steps for 19), about 1.6 % of the launch
  step "sweep d=64 non-causal, persistent=dynamic (split auto): batch 1, 7 heads, m 4096 (154 tiles: a tail), n 17/1000/4100/9000, both dtypes (8 cases)"
  timeout 150 wb sweep d -p m=4096 --n 17,1000,4100,9000 --d 64 --dtype bf16,fp16 -p heads=7 -p kv_heads=7 -p batch=1 \
    -p causal=false -V persistent=dynamic --timeout 40 | sweep_verdicts
  step "sweep d=64 non-causal, persistent=dynamic: n with tails, GQA, softcap (6 cases)"
  timeout 150 wb sweep d --n 1000,1024,8200 --d 64 --dtype bf16 -p causal=false -p kv_heads=2 -V persistent=dynamic --timeout 40 | sweep_verdicts
  timeout 100 wb sweep d --n 1000,4100 --d 64 --dtype fp16 -p causal=false -p softcap=30 -V persistent=dynamic --timeout 40 | sweep_verdicts
  for v in default dynamic dynoff; do
    case $v in default) V="";; dynamic) V="-V persistent=dynamic";; dynoff) V="-V persistent=dynamic -V split_tail=off";; esac
    peers=""; [ $v = default ] && peers="sdpa-cudnn,fa4"
    step "d=64 s 1024/4096 non-causal, both dtypes, $v, ${PROCS:-3} processes"
    timeout 200 wb bench d -p d=64 -p n=1024,4096 -p causal=false -p dtype=bf16,fp16 $V --peers "$peers" \
      --processes "${PROCS:-3}" --timeout 60 | table_rows 200 "$v"
  done
  step "few waves, batch 1, 7 heads, m=n=4096, d=64, both dtypes: default with FA4, then dynamic"
  timeout 80 wb bench d -p d=64 -p m=4096 -p n=4096 -p batch=1 -p heads=7 -p causal=false -p dtype=bf16,fp16 --peers fa4 \
    --timeout 70 | table_rows 170
  timeout 80 wb bench d -p d=64 -p m=4096 -p n=4096 -p batch=1 -p heads=7 -p causal=false -p dtype=bf16,fp16 -V persistent=dynamic \
    --peers "" --timeout 70 | table_rows 170 "dynamic"
  ;;
fewwaves)
  # the dynamic scheduler and its split-KV tail at the head dims whose default is not dynamic
  # (64: round robin, 192: round robin, 256: one CTA per tile): round 17 found dynamic a wash at
  # s = 8192; round 20 found +37 % at d = 64 with 1.17 waves and -3 % at 23 waves (s = 1024)
  step "sweep d=192/256 non-causal, persistent=dynamic (split auto): batch 1, 5 heads, m 4096 (160 tiles), n 17/1000/4100/9000, both dtypes (16 cases)"
  timeout 170 wb sweep d -p m=4096 --n 17,1000,4100,9000 --d 192,256 --dtype bf16,fp16 -p heads=5 -p kv_heads=5 -p batch=1 \
    -p causal=false -V persistent=dynamic --timeout 40 | sweep_verdicts
  step "sweep d=192/256 non-causal, persistent=dynamic: n 1000/8200, GQA, softcap 0/30 (8 cases)"
  timeout 120 wb sweep d --n 1000,8200 --d 192,256 --dtype bf16 -p causal=false -p kv_heads=2 -p softcap=0,30 \
    -V persistent=dynamic --timeout 40 | sweep_verdicts
  step "d=192/256 s=8192 non-causal both dtypes: default with FA4, then dynamic"
  timeout 100 wb bench d -p d=192,256 -p n=8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 90 | table_rows 170
  timeout 100 wb bench d -p d=192,256 -p n=8192 -p causal=false -p dtype=bf16,fp16 -V persistent=dynamic --peers "" --timeout 90 \
    | table_rows 150 "dynamic"
  for hd in "-p d=192,256 -p heads=5" "-p d=64 -p heads=7,16,32"; do
    step "few waves, batch 1, m=n=4096, $hd, bf16: default with FA4, then dynamic"
    timeout 70 wb bench d $hd -p m=4096 -p n=4096 -p batch=1 -p causal=false -p dtype=bf16 --peers fa4 --timeout 60 | table_rows 170
    timeout 70 wb bench d $hd -p m=4096 -p n=4096 -p batch=1 -p causal=false -p dtype=bf16 -V persistent=dynamic --peers "" \
      --timeout 60 | table_rows 170 "dynamic"
  done
  ;;
waves)
  # fewwaves' essentials with split_tail=few in one call (the pool lends few machines): split_tail=few at
  # d = 64 (sweep, s = 1024 over processes, few waves), the dynamic scheduler at d = 192 / 256
  # with few waves (sweep, speed)
  F="-V persistent=dynamic -V split_tail=few"
  step "sweep d=64 non-causal $F: batch 1, 7 heads, m 4096, n 17/1000/4100/9000 bf16; n 1000/1024 fp16 GQA softcap 30"
  timeout 120 wb sweep d -p m=4096 --n 17,1000,4100,9000 --d 64 --dtype bf16 -p heads=7 -p kv_heads=7 -p batch=1 \
    -p causal=false $F --timeout 40 | sweep_verdicts
  timeout 100 wb sweep d --n 1000,1024 --d 64 --dtype fp16 -p causal=false -p kv_heads=2 -p softcap=30 $F --timeout 40 | sweep_verdicts
  for v in default few; do
    case $v in default) V=""; peers="sdpa-cudnn";; few) V="$F"; peers="";; esac
    step "d=64 s=1024 non-causal, both dtypes, $v, ${PROCS:-3} processes"
    timeout 150 wb bench d -p d=64 -p n=1024 -p causal=false -p dtype=bf16,fp16 $V --peers "$peers" \
      --processes "${PROCS:-3}" --timeout 40 | table_rows 200 "$v"
  done
  for hd in "-p d=64 -p heads=7,16,32" "-p d=192,256 -p heads=5"; do
    step "few waves, batch 1, m=n=4096, $hd, bf16: default with FA4, then $F"
    timeout 70 wb bench d $hd -p m=4096 -p n=4096 -p batch=1 -p causal=false -p dtype=bf16 --peers fa4 --timeout 60 | table_rows 170
    timeout 70 wb bench d $hd -p m=4096 -p n=4096 -p batch=1 -p causal=false -p dtype=bf16 $F --peers "" \
      --timeout 60 | table_rows 170 "few"
  done
  step "sweep d=192/256 non-causal $F: batch 1, 5 heads, m 4096, n 17/1000/4100/9000, bf16 (8 cases)"
  timeout 120 wb sweep d -p m=4096 --n 17,1000,4100,9000 --d 192,256 --dtype bf16 -p heads=5 -p kv_heads=5 -p batch=1 \
    -p causal=false $F --timeout 40 | sweep_verdicts
  ;;
short)
  # short_tile=split (stages/fmha/short_tile.py): d = 64 non-causal's last Q tile, whose real rows fit one
  # WG at m = 1024 and 4096, shared by the three consumer WGs; needs the dynamic scheduler to balance
  S="-V persistent=dynamic -V short_tile=split"
  step "tests/test_short_tile_gpu.py (every row written, the whole tile's result, the same bits every launch)"
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_short_tile_gpu.py 2>&1 | tail -15
  for v in default split dynwhole; do
    case $v in
      default) V=""; peers="sdpa-cudnn,fa4";;
      split) V="$S"; peers="";;
      dynwhole) V="-V persistent=dynamic -V split_tail=off -V short_tile=whole"; peers="";;
    esac
    step "d=64 s=1024/4096 non-causal, both dtypes, $v, ${PROCS:-3} processes"
    timeout 170 wb bench d -p d=64 -p n=1024,4096 -p causal=false -p dtype=bf16,fp16 $V --peers "$peers" \
      --processes "${PROCS:-3}" --timeout 50 | table_rows 200 "$v"
  done
  step "sweep d=64 non-causal $S: m 17/1000/1024 x n 128/384/1000/4100 bf16; m 4096 fp16 GQA softcap 0/30"
  timeout 150 wb sweep d --d 64 -p causal=false -p m=17,1000,1024 --n 128,384,1000,4100 --dtype bf16 $S \
    --timeout 40 | sweep_verdicts
  timeout 100 wb sweep d --d 64 -p causal=false -p m=4096 --n 4096 --dtype fp16 -p kv_heads=2 -p softcap=0,30 $S \
    --timeout 40 | sweep_verdicts
  ;;
default64)
  # d = 64 non-causal's default since round 22 (dynamic scheduler, short_tile=split where m mod 192 is 1 ... 64):
  # its sweep with the defaults alone (no -V), then s 1024 / 4096 over fresh processes beside cuDNN and FA4
  step "sweep d=64 non-causal defaults: m = n 1/17/128/1000/1024/4096/8192 both dtypes GQA; batch 1, 7 heads, m 1000/1024/4096"
  timeout 150 wb sweep d --n 1,17,128,1000,1024,4096,8192 --d 64 --dtype bf16,fp16 -p causal=false -p kv_heads=2 \
    --timeout 40 | sweep_verdicts
  timeout 100 wb sweep d --d 64 -p causal=false -p m=1000,1024,4096 --n 384,4100 --dtype bf16 -p heads=7 -p kv_heads=7 \
    -p batch=1 -p softcap=30 --timeout 40 | sweep_verdicts
  step "d=64 s=1024/4096 non-causal, the default, both dtypes, cuDNN and FA4 beside, ${PROCS:-3} processes"
  timeout 200 wb bench d -p d=64 -p n=1024,4096 -p causal=false -p dtype=bf16,fp16 --peers sdpa-cudnn,fa4 \
    --processes "${PROCS:-3}" --timeout 60 | table_rows 200
  ;;
lazy96)
  # lazy_rescale=on at d = 96 non-causal under today's defaults (dynamic scheduler, split tail): round 12
  # passed every non-causal d = 96 case with it and measured +1.5-2.5 % before those defaults; swept, then
  # timed beside the default and FA4 over PROCS (3) fresh processes
  step "sweep d=96 non-causal with -V lazy_rescale=on (n 17/1000/4096/8200 both dtypes GQA; softcap 30, batch 1 7 heads m 4096)"
  timeout 120 wb sweep d --n 17,1000,4096,8200 --d 96 --dtype bf16,fp16 -p causal=false -p kv_heads=2 -V lazy_rescale=on \
    --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d --n 4100 --d 96 --dtype fp16 -p causal=false -p m=4096 -p heads=7 -p kv_heads=7 -p batch=1 \
    -p softcap=30 -V lazy_rescale=on --timeout 40 | sweep_verdicts
  step "d=96 s=8192 non-causal both dtypes: the default with FA4, then lazy_rescale=on, ${PROCS:-3} processes each"
  timeout 150 wb bench d -p d=96 -p n=8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 \
    --processes "${PROCS:-3}" --timeout 60 | table_rows 200 default
  timeout 120 wb bench d -p d=96 -p n=8192 -p causal=false -p dtype=bf16,fp16 -V lazy_rescale=on --peers "" \
    --processes "${PROCS:-3}" --timeout 60 | table_rows 200 lazy
  ;;
long192)
  # non-causal d = 128's 192 x 128 long kernel (geometry.long_kernels, from m = n = 8192; round 24) under the
  # defaults: swept where it serves (tails of 1 and 129 rows in the last tile, GQA, softcap),
  # timed beside FA4 over PROCS (3) fresh processes, then the export's three pieces picked by m and n
  step "sweep d=128 non-causal defaults, m = n 8192 / 8200 / 16400 both dtypes GQA"
  timeout 150 wb sweep d --n 8192,8200,16400 --d 128 --dtype bf16,fp16 -p causal=false -p kv_heads=2 --timeout 40 | sweep_verdicts
  step "sweep d=128 non-causal defaults, n 8192, m 8193 / 8257 / 12000, batch 1, 7 heads, softcap 0 / 30"
  timeout 100 wb sweep d -p m=8193,8257,12000 --n 8192 --d 128 --dtype bf16 -p causal=false -p heads=7 -p kv_heads=7 -p batch=1 \
    -p softcap=0,30 --timeout 40 | sweep_verdicts
  step "d=128 s 8192 / 16384 non-causal both dtypes, the defaults, FA4 beside, ${PROCS:-3} processes"
  timeout 150 wb bench d -p d=128 -p n=8192,16384 -p causal=false -p dtype=bf16,fp16 --peers fa4 --processes "${PROCS:-3}" \
    --timeout 60 | table_rows 200
  step "export d=128 non-causal bf16 (4 heads, 2 KV heads), its fixtures through the op at m = n = 8192 and m = 4096 n = 8192"
  rm -rf /tmp/x128 && timeout 240 wb export d -p d=128 -p dtype=bf16 -p heads=4 -p kv_heads=2 -p causal=false --allow-unverified \
    --out /tmp/x128/pkg >/dev/null && for mn in "8192 8192" "4096 8192"; do
    set -- $mn
    timeout 100 wb run d --d 128 --dtype bf16 -p heads=4 -p kv_heads=2 -p m=$1 --n $2 -p causal=false --exported /tmp/x128/pkg 2>&1 | tail -2
  done
  ;;
kv192)
  # d = 128 non-causal with a 192-key tile, O in Q (2 WGs; 0 spills on a CPU compile; round 8 timed 144 / 160 / 176
  # keys, not 192) beside the defaults (192 x 128 from m = n = 8192) and the 176-key kernel
  tile_trial 128 8192,16384 "-V kv_tile=192 -V o_staging=q" keys176 "-V kv_tile=176 -V o_staging=q" \
    keys192 "-V kv_tile=192 -V o_staging=q"
  ;;
d96k160)
  # d = 96 non-causal's 192-row tile with 160 keys (P through shared memory, O in Q: 0 spills on a CPU compile;
  # round 6 moved 128 -> 144 keys, FA4's tile, and stopped there)
  tile_trial 96 4096,8192 "-V kv_tile=160" keys160 "-V kv_tile=160"
  ;;
rows128)
  # d = 128 non-causal with 192-row Q tiles: 3 consumer WGs at 160 registers, P through shared memory, O staged
  # in Q (226 KiB, 0 spills on a CPU compile): d = 96's tile shape, never timed at 128
  V="-V consumers=3 -V p_operand=smem -V o_staging=q"
  step "sweep d=128 non-causal $V: n 17/1000/4100/8200, bf16 / fp16, GQA"
  timeout 100 wb sweep d --n 17,1000,4100,8200 --d 128 --dtype bf16 -p causal=false -p kv_heads=2 $V --timeout 40 | sweep_verdicts
  step "d=128 s=4096/8192 non-causal both dtypes: the default with FA4, then 192-row tiles (one process each)"
  timeout 120 wb bench d -p d=128 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 110 | table_rows 200 default
  timeout 100 wb bench d -p d=128 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 $V --peers "" --timeout 90 | table_rows 200 rows192
  ;;
export256)
  # d = 192 and 256 non-causal are dynamic with split_tail=few by default (round 21): the exported
  # op of each, its fixtures at batch 1 with 5 heads, m = n = 4096 (160 tiles: cut), against the
  # in-tree kernel; then the defaults' sweep at that shape and with tails
  for hd in ${HDS:-192 256}; do
    step "export d=$hd non-causal (5 heads), its fixtures through the op at m=n=4096 (160 tiles: cut)"
    rm -rf /tmp/xs && timeout 200 wb export d -p d=$hd -p heads=5 -p kv_heads=5 -p causal=false --allow-unverified --out /tmp/xs/pkg >/dev/null \
      && timeout 120 wb run d --d $hd -p heads=5 -p kv_heads=5 -p batch=1 -p m=4096 --n 4096 -p causal=false --exported /tmp/xs/pkg 2>&1 | tail -3
  done
  [ "${SWEEP:-1}" = 0 ] && exit 0
  step "sweep d=192/256 defaults non-causal: batch 1, 5 heads, m 4096, n 1000/4100, fp16; n 17/8200 bf16 GQA"
  timeout 120 wb sweep d -p m=4096 --n 1000,4100 --d 192,256 --dtype fp16 -p heads=5 -p kv_heads=5 -p batch=1 -p causal=false \
    --timeout 40 | sweep_verdicts
  timeout 120 wb sweep d --n 17,8200 --d 192,256 --dtype bf16 -p causal=false -p kv_heads=2 --timeout 40 | sweep_verdicts
  ;;
near)
  # the cells nearest their goal, each the median of fresh processes (a peer's level moves
  # between processes): d = 64 s = 1024 against cuDNN, d = 96 s = 8192 and d = 128 s = 4096
  # against FA4, the mixed varlen batch against FA4's varlen path
  step "near-goal cells, ${PROCS:-3} processes each"
  timeout 150 wb bench d -p d=64 -p n=1024 -p causal=false -p dtype=bf16,fp16 --peers fa4,sdpa-cudnn \
    --processes "${PROCS:-3}" --timeout 40 | table_rows 200
  timeout 150 wb bench d -p d=96,128 -p n=8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 \
    --processes "${PROCS:-3}" --timeout 60 | table_rows 200
  timeout 120 wb bench d -p d=128 -p n=4096 -p causal=false -p dtype=bf16,fp16 --peers fa4 \
    --processes "${PROCS:-3}" --timeout 40 | table_rows 200
  timeout 150 wb bench d -p d=128 -p n=16000 -p causal=false -p varlen=true \
    -p seqlens=16000:12345:8192:6000:5120:4096:3500:3072:2600:2048:1500:931:128 -p dtype=bf16,fp16 \
    --peers fa4 --processes "${PROCS:-3}" --timeout 50 | table_rows 200
  ;;
clocks)
  # the mixed varlen batch's two timing modes, in FA4's timings and ours (round 25): the SM clock, the power
  # drawn and the active clock-throttle reasons sampled every 50 ms while both are timed, then counted
  mixed="16000:12345:8192:6000:5120:4096:3500:3072:2600:2048:1500:931:128"
  step "mixed varlen batch (13 sequences, 64k tokens) both masks bf16 beside FA4, nvidia-smi sampling"
  nvidia-smi --query-gpu=clocks.sm,power.draw,clocks_throttle_reasons.active --format=csv,noheader,nounits -lms 50 \
    > /tmp/clocks.csv &
  smi=$!
  timeout 150 wb bench d -p d=128 -p n=16000 -p varlen=true -p seqlens=$mixed -p causal=true,false -p dtype=bf16 \
    --peers fa4 --timeout 140 | table_rows 200
  kill "$smi"
  step "samples by SM clock (MHz), with the median power (W) and the throttle reasons seen"
  python3 -c '
import collections, statistics
rows = [r.split(", ") for r in open("/tmp/clocks.csv").read().split("\n") if r.count(",") == 2]
by = collections.defaultdict(list)
for clock, power, why in rows:
    by[clock].append((float(power), why))
for clock in sorted(by, key=int):
    powers = [p for p, _ in by[clock]]
    print(f"{clock:>5} MHz: {len(powers):4d} samples, median {statistics.median(powers):.0f} W, reasons", sorted({w for _, w in by[clock]}))
'
  ;;
contested)
  # the cells short of their goal, timed in fresh processes round after round: a median over
  # ROUNDS processes says more than one process's ratio (a peer's level moves between processes)
  for round in $(seq 1 "${ROUNDS:-4}"); do
    step "round $round: d=128 s 4096/8192, d=96/192 s 8192, d=64 s 1024, non-causal, both dtypes, FA4 and cuDNN beside"
    timeout 100 wb bench d -p d=128 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 --peers fa4,sdpa-cudnn --timeout 90 \
      | table_rows 200
    timeout 100 wb bench d -p d=96,192 -p n=8192 -p causal=false -p dtype=bf16,fp16 --peers fa4,sdpa-cudnn --timeout 90 \
      | table_rows 200
    timeout 80 wb bench d -p d=64 -p n=1024 -p causal=false -p dtype=bf16,fp16 --peers fa4,sdpa-cudnn --timeout 70 \
      | table_rows 200
  done
  ;;
lazyexact_bench)
  B="wb bench d -p d=96,192,256 -p n=8192 -p causal=false,true -p dtype=bf16,fp16"
  step "d=96/192/256 s=8192: lazy_rescale=on row_sum=rounded with FA4, then lazy alone, then lazy off"
  timeout 150 $B -V lazy_rescale=on -V row_sum=rounded --peers fa4 --timeout 140 | table_rows 170
  timeout 100 $B -V lazy_rescale=on --peers "" --timeout 90 | table_rows 170 "lazy fp32"
  timeout 100 $B -V lazy_rescale=off --peers "" --timeout 90 | table_rows 170 "off"
  ;;
sumalpha)
  V="-V sum_init=alpha"
  step "sweep sum_init=alpha at d=64 and 128: n with tails, both masks, both dtypes, GQA (40 cases)"
  timeout 200 wb sweep d --n 17,1000,4096,8192,8200 --d 64,128 --dtype bf16,fp16 -p causal=false,true -p kv_heads=2 \
    $V --timeout 40 | sweep_verdicts
  step "sweep sum_init=alpha at d=96, 192, 256 (lazy there by default), softcap 30 with a 300-key window"
  timeout 150 wb sweep d --n 1000,8200 --d 96,192,256 --dtype bf16 -p causal=false,true -p kv_heads=2 $V --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d --n 1000,8200 --d 96 --dtype fp16 -p causal=false,true -p kv_heads=2 $V -V p_sync=warp --timeout 40 | sweep_verdicts
  timeout 60 wb sweep d --n 1000,8192 --d 64,128 --dtype fp16 -p causal=true -p softcap=30 -p window_left=300 $V --timeout 40 \
    | sweep_verdicts
  for round in 1 2; do
    step "round $round: d=64 s 1024/4096/8192 both masks both dtypes: the default with FA4, then sum_init=alpha"
    timeout 120 wb bench d -p d=64 -p n=1024,4096,8192 -p causal=false,true -p dtype=bf16,fp16 --peers fa4 --timeout 110 \
      | table_rows 170
    timeout 90 wb bench d -p d=64 -p n=1024,4096,8192 -p causal=false,true -p dtype=bf16,fp16 $V --peers "" --timeout 80 \
      | table_rows 150 "alpha"
  done
  ;;
sumalpha_short)
  V="-V sum_init=alpha"
  step "d=64 s 1024/4096/8192 both masks both dtypes: the default with FA4, then sum_init=alpha (each checked first)"
  timeout 120 wb bench d -p d=64 -p n=1024,4096,8192 -p causal=false,true -p dtype=bf16,fp16 --peers fa4 --timeout 110 \
    | table_rows 170
  timeout 90 wb bench d -p d=64 -p n=1024,4096,8192 -p causal=false,true -p dtype=bf16,fp16 $V --peers "" --timeout 80 \
    | table_rows 150 "alpha"
  step "d=96/128 s=8192 both masks bf16: the default, then sum_init=alpha"
  timeout 60 wb bench d -p d=96,128 -p n=8192 -p causal=false,true --peers "" --timeout 50 | table_rows 150
  timeout 60 wb bench d -p d=96,128 -p n=8192 -p causal=false,true $V --peers "" --timeout 50 | table_rows 150 "alpha"
  step "sweep sum_init=alpha at d=64 and 128: n with tails, both masks, both dtypes, GQA (24 cases)"
  timeout 150 wb sweep d --n 17,1000,8200 --d 64,128 --dtype bf16,fp16 -p causal=false,true -p kv_heads=2 $V --timeout 40 \
    | sweep_verdicts
  step "sweep sum_init=alpha at d=96, 192, 256 (12 cases)"
  timeout 100 wb sweep d --n 1000,8200 --d 96,192,256 --dtype bf16 -p causal=false,true -p kv_heads=2 $V --timeout 40 | sweep_verdicts
  ;;
sumalpha_d64)
  step "d=64 s 4096/8192 both masks bf16 (the cells short of the goal): the default with FA4, then sum_init=alpha"
  timeout 110 wb bench d -p d=64 -p n=4096,8192 -p causal=false,true --peers fa4 --timeout 100 | table_rows 170
  timeout 80 wb bench d -p d=64 -p n=4096,8192 -p causal=false,true -V sum_init=alpha --peers "" --timeout 70 | table_rows 150 "alpha"
  ;;
sumalpha_wide)
  for round in 1 2; do
    step "round $round: d=96/128/192/256 s=8192 both masks bf16: the default with FA4, then sum_init=alpha"
    timeout 120 wb bench d -p d=96,128,192,256 -p n=8192 -p causal=false,true --peers fa4 --timeout 110 | table_rows 170
    timeout 90 wb bench d -p d=96,128,192,256 -p n=8192 -p causal=false,true -V sum_init=alpha --peers "" --timeout 80 \
      | table_rows 150 "alpha"
    timeout 60 wb bench d -p d=96 -p n=8192 -p causal=false,true -V sum_init=alpha -V p_sync=warp --peers "" --timeout 50 \
      | table_rows 150 "alpha+warp"
  done
  ;;
d64trace)
  trace_specs 150 "--d 64 --s 4096" "--d 64 --s 8192" "--d 64 --s 4096 --causal" "--d 64 --s 8192 --causal" "--d 128 --s 8192"
  ;;
trace128)
  # d = 128 s = 4096 non-causal (x1.01-1.02 of FA4) beside s = 8192's long kernel, sum_init=alpha
  # (a loss on the 128-row kernel) and the 3-WG kernels of d = 96 and 64
  trace_specs 120 "--d 128 --s 4096" "--d 128 --s 4096 -V sum_init=alpha" "--d 128 --s 8192" "--d 96 --s 8192" "--d 64 --s 4096"
  ;;
tracecheck)
  # wb run --trace's GPU tests: stage D (d = 64 both masks, d = 128 at 2048 work tiles, split_tail=off and its
  # twin's bits), d = 256's persistent twin, moe stage C
  step "tests/test_timeline_gpu.py"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_timeline_gpu.py 2>&1 | tail -6
  ;;
clockbench)
  # FA4's process-to-process spread (up to 10 %, ours 0.5 %) beside the SM clock each timing ran at (round 26):
  # the contested non-causal cells in PROCS (3) fresh processes each, every timing with its clock
  step "tests/test_clocks.py on the GPU (a timing carries its clock)"
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_clocks.py 2>&1 | tail -2
  for round in $(seq 1 "${ROUNDS:-3}"); do
    step "round $round: d=128 s 4096/8192 and d=96 s 8192 non-causal, both dtypes, FA4 beside, with clocks"
    timeout 120 wb bench d -p d=128 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 110 \
      | clocked_rows
    timeout 80 wb bench d -p d=96 -p n=8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 70 \
      | clocked_rows
  done
  ;;
interleave)
  # wb bench --interleave (round 26): FA4 timed right after our kernel met the card at lower clocks (clockbench);
  # the same cells timed one after the other and repeat by repeat in turn, ROUNDS (3) fresh processes each
  step "GPU tests: the timer, interleaved timing, the clock"
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_clocks.py tests/test_bench.py -k "timer or interleaved or clock" 2>&1 | tail -2
  for round in $(seq 1 "${ROUNDS:-3}"); do
    for how in "--no-interleave" ""; do
      step "round $round ${how:-(in turn)}: d=128 s 4096/8192, d=96 s 8192, non-causal, both dtypes, FA4 beside"
      timeout 120 wb bench d -p d=128 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 $how --timeout 110 \
        | clocked_rows
      timeout 80 wb bench d -p d=96 -p n=8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 $how --timeout 70 \
        | clocked_rows
    done
  done
  ;;
turnscan)
  # round 27: the cells short of a goal on an H100 (d = 128 s = 4096, d = 96 s = 8192 fp16, d = 64 s = 8192) timed in
  # turn with FA4 on this card, ROUNDS (3) fresh processes; then, also in turn (its noise is about 0.5 %), two
  # candidates that measured within the one-after-the-other noise: d = 96 p_sync=warp, d = 128 q_buffers=2 (2 rounds)
  for round in $(seq 1 "${ROUNDS:-3}"); do
    step "round $round (in turn): d=128 s 4096/8192, d=96 and 64 s 8192, non-causal, both dtypes, FA4 beside"
    timeout 130 wb bench d -p d=128 -p n=4096,8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 120 | clocked_rows
    timeout 130 wb bench d -p d=96,64 -p n=8192 -p causal=false -p dtype=bf16,fp16 --peers fa4 --timeout 120 | clocked_rows
  done
  for round in 1 2; do
    step "round $round (in turn): p_sync=warp at d=96 s=8192, q_buffers=2 at d=128 s=4096"
    timeout 100 wb bench d -p d=96 -p n=8192 -p causal=false -p dtype=bf16,fp16 -V p_sync=warp --peers fa4 --timeout 90 | clocked_rows
    timeout 100 wb bench d -p d=128 -p n=4096 -p causal=false -p dtype=bf16,fp16 -V q_buffers=2 --peers fa4 --timeout 90 | clocked_rows
  done
  ;;
stalls)
  # where the steady step's warps wait (round 26): Nsight Compute's PC sampling (SourceCounters) of one
  # non-causal bf16 launch, ours and FA4's on the same shape (STALL_D, STALL_S; default d = 128 s = 4096,
  # batch 16384 / s, heads 2048 / d as wb bench's sweep), each exported per SASS instruction (source
  # page) and per section (details page) into $OUT, then benchmarks/stall_map.py side by side
  D=${STALL_D:-128} S=${STALL_S:-4096}; B=$((16384 / S)) H=$((2048 / D))
  ncu --version | tail -1
  src="--section SourceCounters --section WarpStateStats --section LaunchStats --import-source no"
  step "ours: wb run under ncu (one launch), d=$D s=$S batch=$B heads=$H"
  timeout 200 ncu --target-processes all --clock-control none -k regex:kernel_cutlass --launch-count 1 $src \
    -f -o /tmp/stall_ours python3 -m workbench run d --d "$D" --n "$S" -p batch=$B -p heads=$H -p causal=false \
    -f random --seeds 1 --fresh --timeout 150 2>&1 | tail -4
  step "FA4: one call under ncu (after a warm-up call)"
  timeout 150 ncu --target-processes all --clock-control none -k regex:kernel_cutlass --profile-from-start off $src \
    -f -o /tmp/stall_fa4 python3 -c '
import sys, torch
from flash_attn.cute import flash_attn_func
b, s, h, d = map(int, sys.argv[1:])
torch.manual_seed(0)
q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
flash_attn_func(q, k, v); torch.cuda.synchronize()
torch.cuda.profiler.start(); flash_attn_func(q, k, v); torch.cuda.synchronize(); torch.cuda.profiler.stop()
' "$B" "$S" "$H" "$D" 2>&1 | tail -4
  for who in ours fa4; do
    [ -f /tmp/stall_$who.ncu-rep ] || { echo "no report for $who"; continue; }
    ncu -i /tmp/stall_$who.ncu-rep --page source --csv --print-source sass > "$OUT/stall_$who.csv"
    ncu -i /tmp/stall_$who.ncu-rep --page details --csv > "$OUT/details_$who.csv"
  done
  step "where each kernel's hot loop waits"
  python3 benchmarks/stall_map.py ours="$OUT/stall_ours.csv" fa4="$OUT/stall_fa4.csv" --top 12
  ;;
perf)
  step "wb bench d --sweep (docs/perf.md) with every peer"
  cpeers="fa4,sdpa-cudnn,sdpa-flash"; [ -n "${WB_CUTLASS_EXAMPLES:-}" ] && cpeers="$cpeers,cutlass-example"
  timeout 560 wb bench d --sweep -p dtype=bf16,fp16 --peers "$cpeers" ${PERF_VARIANTS:-} --timeout 540 | grep -a -E "PASS|FAIL|^│ d=" | cut -c1-200
  ;;
*)
  echo "usage: bash benchmarks/gpu_tune_d.sh d64|d128|defaults|probe|persist|causal|ab|dynamic|round3|idle|qbuf|verify|verify96|alphafinal|alphamini|lazyexact96|dynfinal|dynscan|dyn96|paged_gaps|emptyrows|split|splitbench|splittest|splitauto|splitab|stale|streams|streams2|exportsplit|exportbench|d64split|fewwaves|waves|export256|default64|lazy96|rows128|long192|kv192|d96k160|tracecheck|clocks|clockbench|interleave|stalls|near|qbuf128|scan128|d64short|contested|trace128|perf|d96|d128q|long128|mn128|psync|turnscan|r27|r28|r28b|r29|r30|exportvarlen|pagedlens|varlen|lazy|byn|wide|lazy256|d64wide|lazyexact|lazyexact_bench|d64trace|sumalpha|sumalpha_short|sumalpha_d64|sumalpha_wide" >&2; exit 2 ;;
esac
step done
