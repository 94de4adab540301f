//! Prometheus text metrics for `vmfork serve`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Outcomes an invocation can have, one counter each.
pub const OUTCOMES: [&str; 8] = [
    "ok",
    "rejected",
    "bad_request",
    "timeout",
    "crash",
    "overloaded",
    "too_large",
    "error",
];

/// Histogram bucket upper bounds, seconds.
const BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0,
];

#[derive(Default)]
pub struct Metrics {
    outcomes: [AtomicU64; OUTCOMES.len()],
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    pub live_clones: AtomicI64,
}

impl Metrics {
    pub fn count(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn observe(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self, rss_kib: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP vmfork_invocations_total Function invocations by outcome."
        );
        let _ = writeln!(out, "# TYPE vmfork_invocations_total counter");
        for (name, c) in OUTCOMES.iter().zip(&self.outcomes) {
            let _ = writeln!(
                out,
                "vmfork_invocations_total{{outcome=\"{name}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP vmfork_invocation_seconds Request to response latency of invocations."
        );
        let _ = writeln!(out, "# TYPE vmfork_invocation_seconds histogram");
        for (bound, c) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "vmfork_invocation_seconds_bucket{{le=\"{bound}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "vmfork_invocation_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "vmfork_invocation_seconds_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "vmfork_invocation_seconds_count {count}");
        let _ = writeln!(
            out,
            "# HELP vmfork_live_clones Clones currently alive (running or being torn down)."
        );
        let _ = writeln!(out, "# TYPE vmfork_live_clones gauge");
        let _ = writeln!(
            out,
            "vmfork_live_clones {}",
            self.live_clones.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP vmfork_resident_memory_bytes Resident memory of the vmfork process."
        );
        let _ = writeln!(out, "# TYPE vmfork_resident_memory_bytes gauge");
        let _ = writeln!(out, "vmfork_resident_memory_bytes {}", rss_kib * 1024);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.count("ok");
        m.count("ok");
        m.count("timeout");
        m.observe(Duration::from_micros(800));
        let text = m.render(10);
        assert!(text.contains("vmfork_invocations_total{outcome=\"ok\"} 2"));
        assert!(text.contains("vmfork_invocations_total{outcome=\"timeout\"} 1"));
        assert!(text.contains("vmfork_invocation_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("vmfork_invocation_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("vmfork_invocation_seconds_bucket{le=\"+Inf\"} 1"));
        assert!(text.contains("vmfork_resident_memory_bytes 10240"));
    }
}
