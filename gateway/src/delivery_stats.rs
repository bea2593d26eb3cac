//! `reddot_deliveries_total` and `reddot_delivery_latency_seconds`, counted per thread.
//!
//! These two are updated once per notification written to a client, a million times a
//! second when a burst of broadcasts reaches a node. Through the `metrics` recorder
//! every update touched counters both HTTP workers share (and a histogram's value
//! buffer, pushed one value at a time): 15 % of the workers' CPU in a flat-out
//! broadcast. Here each thread counts into its own cache-padded shard, with plain
//! bucket counts; `/metrics` adds the shards up.

use std::{
    cell::Cell,
    fmt::Write,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

use reddot_shared::metrics as m;

/// The latency buckets' upper bounds, in microseconds (the other `_seconds` histograms'
/// bounds, see `reddot_shared::metrics::install`).
const BOUNDS_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];
/// How the bounds are written, as the other histograms write theirs.
const BOUNDS_TEXT: [&str; 13] = [
    "0.001", "0.0025", "0.005", "0.01", "0.02", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
];
const TRANSPORTS: [&str; 3] = ["sse", "ws", "iframe"];
const SHARDS: usize = 16;

/// One thread's counts, on cache lines of its own.
#[repr(align(128))]
struct Shard {
    deliveries: [AtomicU64; TRANSPORTS.len()],
    /// Per bucket, not cumulative; the last is `+Inf`.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_ms: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Shard = Shard {
    deliveries: [const { AtomicU64::new(0) }; TRANSPORTS.len()],
    buckets: [const { AtomicU64::new(0) }; BOUNDS_US.len() + 1],
    sum_ms: AtomicU64::new(0),
};

static SHARD_STATS: [Shard; SHARDS] = [EMPTY; SHARDS];
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MY_SHARD: Cell<usize> = Cell::new(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
}

/// Counts one notification written over `transport` (`sse`, `ws` or `iframe`),
/// `latency_ms` after it was created.
pub fn record(transport: &'static str, latency_ms: u64) {
    let Some(t) = TRANSPORTS.iter().position(|&name| name == transport) else {
        debug_assert!(false, "unknown transport {transport}");
        return;
    };
    let bucket = BOUNDS_US
        .iter()
        .position(|&bound| latency_ms.saturating_mul(1000) <= bound)
        .unwrap_or(BOUNDS_US.len());
    let shard = &SHARD_STATS[MY_SHARD.with(Cell::get)];
    shard.deliveries[t].fetch_add(1, Ordering::Relaxed);
    shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    shard.sum_ms.fetch_add(latency_ms, Ordering::Relaxed);
}

/// Both metrics in the Prometheus text format.
pub fn render() -> String {
    let total = |pick: &dyn Fn(&Shard) -> &AtomicU64| -> u64 {
        SHARD_STATS
            .iter()
            .map(|s| pick(s).load(Ordering::Relaxed))
            .sum()
    };
    let mut out = String::with_capacity(1024);
    let _ = writeln!(out, "# TYPE {} counter", m::DELIVERIES);
    for (t, name) in TRANSPORTS.iter().enumerate() {
        let n = total(&|s| &s.deliveries[t]);
        let _ = writeln!(out, "{}{{transport=\"{name}\"}} {n}", m::DELIVERIES);
    }
    let latency = m::DELIVERY_LATENCY;
    let _ = writeln!(out, "\n# TYPE {latency} histogram");
    let mut cumulative = 0;
    for (b, bound) in BOUNDS_TEXT.iter().enumerate() {
        cumulative += total(&|s| &s.buckets[b]);
        let _ = writeln!(out, "{latency}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += total(&|s| &s.buckets[BOUNDS_US.len()]);
    let _ = writeln!(out, "{latency}_bucket{{le=\"+Inf\"}} {cumulative}");
    let sum = total(&|s| &s.sum_ms) as f64 / 1000.0;
    let _ = writeln!(out, "{latency}_sum {sum}");
    let _ = writeln!(out, "{latency}_count {cumulative}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    // The shards are process-wide, so this one test owns them: it reads differences.
    #[test]
    fn counts_and_buckets_add_up_over_threads() -> anyhow::Result<()> {
        let before = render();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        record(if i % 2 == 0 { "sse" } else { "ws" }, 4);
                    }
                    record("iframe", 20_000);
                })
            })
            .collect();
        for t in threads {
            t.join()
                .map_err(|_| anyhow::anyhow!("a recording thread panicked"))?;
        }
        let after = render();
        let grew = |series: &str| {
            sample(&after, series).unwrap_or(f64::NAN) - sample(&before, series).unwrap_or(0.0)
        };
        assert_eq!(grew(r#"reddot_deliveries_total{transport="sse"}"#), 2000.0);
        assert_eq!(grew(r#"reddot_deliveries_total{transport="ws"}"#), 2000.0);
        assert_eq!(grew(r#"reddot_deliveries_total{transport="iframe"}"#), 4.0);
        // 4 ms lands in le="0.005", not below; 20 s only in +Inf.
        assert_eq!(
            grew(r#"reddot_delivery_latency_seconds_bucket{le="0.0025"}"#),
            0.0
        );
        assert_eq!(
            grew(r#"reddot_delivery_latency_seconds_bucket{le="0.005"}"#),
            4000.0
        );
        assert_eq!(
            grew(r#"reddot_delivery_latency_seconds_bucket{le="10"}"#),
            4000.0
        );
        assert_eq!(
            grew(r#"reddot_delivery_latency_seconds_bucket{le="+Inf"}"#),
            4004.0
        );
        assert_eq!(grew("reddot_delivery_latency_seconds_count"), 4004.0);
        assert!((grew("reddot_delivery_latency_seconds_sum") - 96.0).abs() < 1e-6);
        Ok(())
    }
}
