"""Where a persistent stage-D CTA spends its time at the work-tile boundary (diagnostic).

Builds stage D with ``trace=True`` (clock() stamps per CTA, warpgroup and work tile, see
``TRACE_EVENTS`` in stages/fmha/trace.py), checks its output against SDPA, times it
beside the untraced kernel, and prints the median duration of each part of a work tile:

    consumer WG:  start -> Q ready -> first S -> first softmax -> steady steps
                  -> last PV -> finish + LSE -> O store -> next tile's start, and inside
                  steady step 2: K wait + MMA issue + S, softmax, previous PV wait,
                  P hand-over + O rescale
    producer:     start -> first K slot -> Q slots -> last V issued

    python benchmarks/trace_tiles.py --d 64 --s 1024 [--causal] [-V name=value ...] [--json out.json] [--perfetto out.trace.json]
    python benchmarks/trace_tiles.py --from-json out.json --perfetto out.trace.json     # no GPU: an earlier run's stamps

--perfetto writes the launch as a tile timeline (one process per CTA, one thread per
warpgroup, each work tile with its phases nested; workbench/run/timeline.py) that
ui.perfetto.dev and chrome://tracing open.

Run on the GPU machine from the repo root. The stamps add a few instructions per tile; the
traced/untraced time ratio is printed so the reader knows how far to trust the figures.
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # stages/ and workbench/ from this checkout

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--s", type=int, default=1024)
    ap.add_argument("--batch", type=int, help="default 16384 / s (wb bench's sweep)")
    ap.add_argument("--heads", type=int, help="default 2048 / d")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("-V", dest="variants", action="append", default=[], help="stage D variant name=value")
    ap.add_argument("--launches", type=int, default=1, help="traced launches; more than one prints one line per launch")
    ap.add_argument("--json", help="write the raw stamps and the summary here")
    ap.add_argument("--perfetto", help="write the traced launch as a Perfetto / Chrome trace (JSON) here")
    ap.add_argument("--from-json", help="no GPU: read the stamps an earlier --json wrote (for --perfetto)")
    return ap.parse_args(argv)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def summarize(words, ctas, wgs, n_steps):
    """Durations (ns) of each part, median over CTAs and tiles (a CTA's first and last
    tile left out: they hold the launch and the drain)."""
    from stages.fmha.trace import CONSUMER_PARTS, PRODUCER_PARTS, TRACE_EVENTS, TRACE_TILES, trace_clock_word, trace_word

    parts: dict[str, list[float]] = {}
    starts, ends = [], []

    def add(name, value):
        parts.setdefault(name, []).append(value)

    for cta in range(ctas):
        clocks = trace_clock_word(ctas, cta)
        gt0, ck0, gt1, ck1 = words[clocks: clocks + 4]
        cycles = (ck1 - ck0) % 2**32
        ns_per_clk = ((gt1 - gt0) % 2**32) / cycles if cycles else float("nan")
        starts.append(gt0)
        ends.append(gt1)

        def stamps(wg, j, cta=cta):
            base = trace_word(cta, wg, j)
            return words[base: base + TRACE_EVENTS]

        def dt(a, b, ns_per_clk=ns_per_clk):
            return ((b - a) % 2**32) * ns_per_clk

        tiles = [j for j in range(TRACE_TILES) if any(stamps(1, j))]
        for j in tiles[1:-1]:
            for wg in range(1, wgs + 1):
                ev, nxt = stamps(wg, j), stamps(wg, j + 1)
                for name, a, b in CONSUMER_PARTS:
                    if ev[a] and ev[b]:  # a tile of fewer KV visits has no steady step 2 stamps
                        add(name, dt(ev[a], ev[b]))
                add("steady step (one)", dt(ev[3], ev[4]) / max(n_steps - 1, 1))
                add("next tile's start", dt(ev[7], nxt[0]))
                add("tile (start to start)", dt(ev[0], nxt[0]))
                add("boundary (last step end to first step start)", dt(ev[4], nxt[3]))
                add(f"WG{wg} start - WG1 start", dt(stamps(1, j)[0], ev[0]) if wg > 1 else 0.0)
            p, c1 = stamps(0, j), stamps(1, j)
            for name, a, b in PRODUCER_PARTS:
                add("producer: " + name, dt(p[a], p[b]))
            last = stamps(wgs, j - 1)  # the last WG's Q release of the previous tile
            add("producer Q issued - last WG's previous Q release", dt(last[4], p[2]))
            add("WG1 Q ready - producer Q issued", dt(p[2], c1[1]))
    t0 = min(starts)
    finish = sorted((e - t0) % 2**32 for e in ends)
    summary = {name: median(v) for name, v in parts.items()}
    begin = sorted((b - t0) % 2**32 for b in starts)
    summary["CTA start: median"] = median(begin)
    summary["CTA start: last"] = begin[-1]
    summary["CTA end: first"] = finish[0]
    summary["CTA end: median"] = median(finish)
    summary["CTA end: last"] = finish[-1]
    return summary


def write_perfetto(path, words, ctas, wgs, title, meta, events=None):
    """The stamps of one traced launch as a Perfetto / Chrome trace file; prints its summary.
    ``events``: stamps per lane and tile of the buffer (None: today's layout)."""
    from stages.fmha import trace
    from workbench.run import timeline

    slices, clocks = trace.decode(words, ctas, wgs, events or trace.TRACE_EVENTS)
    events = timeline.chrome_trace(slices, clocks, title, trace.lanes(wgs), meta)
    problems = timeline.validate(events)
    if problems:
        sys.exit("trace_tiles: the trace would not load as intended: " + "; ".join(problems[:3]))
    with open(path, "w") as f:
        json.dump(events, f)
    s = timeline.summarize(slices, clocks)
    print(f"perfetto trace: {path} ({len(events['traceEvents'])} events, {s['ctas']} CTAs, tiles per CTA {s['tiles_per_cta']}; "
          f"CTA start skew {s['cta_start_skew_ns'] / 1e3:.3f} us, CTA ends {s['cta_end_first_ns'] / 1e3:.1f} / "
          f"{s['cta_end_median_ns'] / 1e3:.1f} / {s['cta_end_last_ns'] / 1e3:.1f} us (first / median / last))")


def consumer_wgs_of(args) -> int:
    """The consumer warpgroups of a save that does not name them (no compile, no GPU): the
    default kernel's for these arguments, as the script built it then (before it followed
    the long kernel and the persistent twin, and began to save ``consumer_wgs``)."""
    from stages.fmha import common
    from stages.fmha import stage_d_fmha as sd

    heads = args.heads or max(1, 2048 // args.d)
    options = sd.kernel_options(dict(v.split("=", 1) for v in args.variants))
    return sd.FmhaForward(common.cute_dtype(args.dtype), args.d, heads, heads, causal=args.causal, **options).num_consumer_wg


def read_saved(path: str) -> dict:
    """A --json save, checked: exits with one line naming what is wrong (not a traceback)."""
    def whole(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        sys.exit(f"trace_tiles: cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    problem = None
    if not isinstance(saved, dict) or not isinstance(saved.get("args"), dict):
        problem = "expected an object with 'args' (an object) and 'words' (whole numbers), as --json writes"
    elif not isinstance(saved.get("words"), list) or not all(whole(w) for w in saved["words"]):
        problem = "'words' must be a list of whole numbers (the trace buffer)"
    else:
        for key in ("events", "ctas", "consumer_wgs"):
            if saved.get(key) is not None and not (whole(saved[key]) and saved[key] > 0):
                problem = f"'{key}' must be a whole number above 0, got {saved[key]!r}"
    if problem:
        sys.exit(f"trace_tiles: {path}: {problem}")
    return saved


def from_json(args) -> None:
    saved = read_saved(args.from_json)
    for key, value in saved["args"].items():
        if key not in ("json", "perfetto", "from_json"):
            setattr(args, key, value)
    from stages.fmha.trace import EVENTS_BEFORE_STEP_STAMPS, layout

    words = saved["words"]
    events = saved.get("events") or EVENTS_BEFORE_STEP_STAMPS  # saves before the step stamps name none
    ctas = saved.get("ctas") or next((c for c in range(1, 100000) if layout(events).clock_word(c, c) == len(words)), None)
    if ctas is None:
        sys.exit(f"trace_tiles: {args.from_json}: {len(words)} words are no whole number of CTAs' stamps (a cut-off save?)")
    try:
        wgs = saved.get("consumer_wgs") or consumer_wgs_of(args)
        title = f"stage D d={args.d} s={args.s} causal={args.causal} {args.dtype} (stamps of {args.from_json})"
        write_perfetto(args.perfetto, words, ctas, wgs, title, {"args": saved["args"], "untraced_us": saved.get("untraced_us")}, events)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a save whose args or words do not decode
        sys.exit(f"trace_tiles: {args.from_json}: {type(exc).__name__}: {exc}")
    except OSError as exc:
        sys.exit(f"trace_tiles: cannot write {args.perfetto}: {exc.strerror or exc}")


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if args.from_json:
        if not args.perfetto:
            sys.exit("trace_tiles: --from-json needs --perfetto FILE")
        return from_json(args)
    import torch
    from cutlass import Int32

    from stages.fmha import common, host
    from stages.fmha import stage_d_fmha as sd
    from stages.fmha.trace import TRACE_EVENTS, trace_clock_word
    from workbench.kernels.stage import Params

    s, d = args.s, args.d
    batch, heads = args.batch or max(1, 16384 // s), args.heads or max(1, 2048 // d)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    variants = dict(v.split("=", 1) for v in args.variants)
    p = Params(dict(m=s, n=s, d=d, dv=d, dtype=args.dtype, batch=batch, heads=heads, kv_heads=heads, causal=args.causal))
    try:  # the kernel a launch of s rows runs (the long kernel where it serves them), persistent, and without
        # what the traced build never does (a split tail, a shared short tile): the untraced one timed so too
        chosen, note = sd.traced_variants(d, args.causal, False, variants, s, s)
        chosen, off = sd.StageD().without_untraceable(p, chosen)
    except Exception as exc:  # an unknown variant or persistent=off: one line
        sys.exit(f"trace_tiles: {exc}")
    note = "; ".join(filter(None, [note, off]))
    options = sd.kernel_options(chosen)
    dev = torch.device("cuda")
    ctas = sd.sm_count(dev)

    def build(trace):
        from cutlass.cute.runtime import make_fake_stream

        kernel = sd.FmhaForward(common.cute_dtype(args.dtype), d, heads, heads, causal=args.causal, trace=trace, **options)
        fake = [host.fake_tensor(common.cute_dtype(args.dtype), 4) for _ in range(4)]
        fn = host.compile_for("sm_90a", kernel, *fake, host.fake_tensor(sd.Float32, 3), host.fake_tensor(Int32, 1), Int32(1), make_fake_stream())
        return kernel, fn

    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, s, heads, d, device=dev, dtype=dtype) for _ in range(3))
    o = torch.empty_like(q)
    lse = torch.empty(batch, heads, s, device=dev, dtype=torch.float32)
    kernel, traced = build(True)
    _, plain = build(False)
    wgs = kernel.num_consumer_wg
    buf = torch.zeros(trace_clock_word(ctas, ctas), dtype=torch.int32, device=dev)
    counter = sd.tile_counter(dev)

    cute_args = [host.to_cute(t) for t in (q, k, v, o, lse)]  # converted once: launches stay GPU-bound
    cute_bufs = {id(counter): host.to_cute(counter), id(buf): host.to_cute(buf)}
    stream = host.current_stream()

    def launch(fn, counter_buf):
        fn(*cute_args, cute_bufs[id(counter_buf)], Int32(ctas), stream)

    def timed(fn, counter_buf, reps=30):
        for _ in range(3):
            launch(fn, counter_buf)
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            launch(fn, counter_buf)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3)
        return sorted(times)

    plain_times = timed(plain, counter, reps=100)
    t_plain = median(plain_times)
    if kernel.dynamic:
        buf[:2] = 0
    t_traced = median(timed(traced, buf))
    grid = min(ctas, math.ceil(s / kernel.tile_m) * heads * batch)
    n_steps = math.ceil(s / kernel.tile_n)
    per_launch = []
    for _ in range(args.launches):
        buf.zero_()
        launch(traced, buf)
        torch.cuda.synchronize()
        per_launch.append(summarize(buf.cpu().tolist(), grid, wgs, n_steps))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float(), is_causal=args.causal
    ).transpose(1, 2)
    err = (o.float() - ref).abs().max().item()
    summary = per_launch[-1]  # the stamps left in buf
    span_ns = summary["CTA end: last"]
    flops = 4.0 * batch * heads * s * s * d / (2 if args.causal else 1)
    print(f"card: {torch.cuda.get_device_name()} · d={d} s={s} batch={batch} heads={heads} causal={args.causal} "
          f"{args.dtype} · tile {kernel.tile_m}x{kernel.tile_n}, {wgs} consumer WGs, {n_steps} KV steps per tile · {variants or 'defaults'}"
          + (f" · {note} (traced and untraced)" if note else ""))
    print(f"max |o - sdpa| = {err:.3g} ({'ok' if err < 2e-2 else 'WRONG'})")
    q10, q90 = plain_times[len(plain_times) // 10], plain_times[-len(plain_times) // 10]
    slow = sum(t > 1.15 * plain_times[0] for t in plain_times)
    print(f"untraced, {len(plain_times)} launches back to back: min {plain_times[0]:.1f} p10 {q10:.1f} median {t_plain:.1f} "
          f"p90 {q90:.1f} max {plain_times[-1]:.1f} us; {slow} over 1.15x the min")
    print(f"untraced {t_plain:.1f} us ({flops / t_plain / 1e6:.0f} TFLOP/s) · traced {t_traced:.1f} us "
          f"(x{t_traced / t_plain:.3f}) · traced launch span {span_ns / 1e3:.1f} us")
    for name, value in summary.items():
        print(f"  {name:52s} {value / 1e3:8.3f} us")
    if args.launches > 1:
        print("per traced launch, by span: span, CTA start last, CTA end first / median, steady step, tile (us)")
        for sm_ in sorted(per_launch, key=lambda x: x["CTA end: last"]):
            print(f"  {sm_['CTA end: last'] / 1e3:8.1f} {sm_['CTA start: last'] / 1e3:8.1f}"
                  f" {sm_['CTA end: first'] / 1e3:8.1f} {sm_['CTA end: median'] / 1e3:8.1f}"
                  f" {sm_['steady step (one)'] / 1e3:7.3f} {sm_['tile (start to start)'] / 1e3:7.3f}")
    words = buf.cpu().tolist()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary_ns": summary, "untraced_us": t_plain, "traced_us": t_traced,
                       "max_err": err, "ctas": ctas, "consumer_wgs": wgs, "events": TRACE_EVENTS, "words": words}, f)
    if args.perfetto:
        title = f"stage D d={d} s={s} batch={batch} heads={heads} causal={args.causal} {args.dtype} on {torch.cuda.get_device_name()}"
        write_perfetto(args.perfetto, words, ctas, wgs, title, {"args": vars(args), "untraced_us": t_plain, "traced_us": t_traced})


if __name__ == "__main__":
    main()
