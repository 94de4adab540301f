//! Prometheus text metrics for `vmfork serve`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use super::connection::Closed;
use vmfork_machine::reset::Reset;

/// Outcomes an invocation can have, one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Ok,
    Rejected,
    BadRequest,
    Timeout,
    Crash,
    Overloaded,
    TooLarge,
    /// The body did not arrive within --body-timeout (408).
    SlowBody,
    Error,
}

impl Counted {
    pub const ALL: [Counted; 9] = [
        Counted::Ok,
        Counted::Rejected,
        Counted::BadRequest,
        Counted::Timeout,
        Counted::Crash,
        Counted::Overloaded,
        Counted::TooLarge,
        Counted::SlowBody,
        Counted::Error,
    ];

    /// The `outcome` label of `vmfork_invocations_total`.
    pub fn label(self) -> &'static str {
        match self {
            Counted::Ok => "ok",
            Counted::Rejected => "rejected",
            Counted::BadRequest => "bad_request",
            Counted::Timeout => "timeout",
            Counted::Crash => "crash",
            Counted::Overloaded => "overloaded",
            Counted::TooLarge => "too_large",
            Counted::SlowBody => "slow_body",
            Counted::Error => "error",
        }
    }
}

/// Histogram bucket upper bounds, seconds.
const BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0,
];

#[derive(Default)]
pub struct Metrics {
    outcomes: [AtomicU64; Counted::ALL.len()],
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    pub live_clones: AtomicI64,
    /// Finished clones whose VM was reused for a later clone, by how its
    /// memory was reset: in place, or by replacing the mapping.
    recycled_in_place: AtomicU64,
    recycled_remapped: AtomicU64,
    /// Pages refilled by in-place resets.
    reset_pages: AtomicU64,
    /// Finished clones that answered but whose VM was closed rather than
    /// recycled, because their guest ran ring 0 under shadow paging
    /// (docs/security.md, "Recycled VMs: what a reset restores").
    pub closed_after_ring0: AtomicU64,
    /// Client connections open now.
    connections: AtomicI64,
    /// Connections the server closed itself, by `Closed` (in ALL's order).
    closed: [AtomicU64; Closed::ALL.len()],
}

impl Metrics {
    pub fn count(&self, outcome: Counted) {
        // ALL lists the variants in declaration order.
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn recycled(&self, reset: &Reset) {
        match reset {
            Reset::InPlace(pages) => {
                self.recycled_in_place.fetch_add(1, Ordering::Relaxed);
                self.reset_pages.fetch_add(*pages as u64, Ordering::Relaxed);
            }
            Reset::Remap => {
                self.recycled_remapped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn connections_open(&self, open: usize) {
        self.connections.store(open as i64, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, why: Closed) {
        self.closed[why as usize].fetch_add(1, Ordering::Relaxed);
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

    /// `pooled_vms`: VM shells ready in the functions' pools now.
    pub fn render(&self, rss_kib: u64, pooled_vms: usize) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        family(
            &mut out,
            "vmfork_invocations_total",
            "counter",
            "Function invocations by outcome.",
        );
        for (outcome, c) in Counted::ALL.iter().zip(&self.outcomes) {
            sample(
                &mut out,
                "vmfork_invocations_total",
                ("outcome", outcome.label()),
                load(c),
            );
        }
        family(
            &mut out,
            "vmfork_invocation_seconds",
            "histogram",
            "Request to response latency of invocations.",
        );
        for (bound, c) in BUCKETS.iter().zip(&self.buckets) {
            let le = bound.to_string();
            sample(
                &mut out,
                "vmfork_invocation_seconds_bucket",
                ("le", &le),
                load(c),
            );
        }
        let count = load(&self.latency_count);
        sample(
            &mut out,
            "vmfork_invocation_seconds_bucket",
            ("le", "+Inf"),
            count,
        );
        let sum = load(&self.latency_sum_us) as f64 / 1e6;
        let _ = writeln!(out, "vmfork_invocation_seconds_sum {sum}");
        let _ = writeln!(out, "vmfork_invocation_seconds_count {count}");
        let gauges = [
            (
                "vmfork_live_clones",
                "Clones currently alive (running or being torn down).",
                self.live_clones.load(Ordering::Relaxed),
            ),
            (
                "vmfork_pooled_vms",
                "VM shells ready for clones (made ahead with --warm, or recycled).",
                pooled_vms as i64,
            ),
            (
                "vmfork_connections",
                "Client connections open (at most --max-connections).",
                self.connections.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        family(
            &mut out,
            "vmfork_connections_closed_total",
            "counter",
            "Client connections the server closed itself, by reason.",
        );
        for (why, c) in Closed::ALL.iter().zip(&self.closed) {
            sample(
                &mut out,
                "vmfork_connections_closed_total",
                ("reason", why.label()),
                load(c),
            );
        }
        family(
            &mut out,
            "vmfork_recycled_vms_total",
            "counter",
            "Finished clones whose VM was reused for a later clone.",
        );
        for (reset, c) in [
            ("in_place", &self.recycled_in_place),
            ("remap", &self.recycled_remapped),
        ] {
            sample(
                &mut out,
                "vmfork_recycled_vms_total",
                ("reset", reset),
                load(c),
            );
        }
        family(
            &mut out,
            "vmfork_reset_pages_total",
            "counter",
            "Pages written by clones and refilled from the template by in-place resets.",
        );
        let _ = writeln!(out, "vmfork_reset_pages_total {}", load(&self.reset_pages));
        family(
            &mut out,
            "vmfork_unrecycled_vms_total",
            "counter",
            "Finished clones that answered and whose VM was closed, not reused.",
        );
        sample(
            &mut out,
            "vmfork_unrecycled_vms_total",
            ("reason", "guest_ring0"),
            load(&self.closed_after_ring0),
        );
        family(
            &mut out,
            "vmfork_resident_memory_bytes",
            "gauge",
            "Resident memory of the vmfork process.",
        );
        let _ = writeln!(out, "vmfork_resident_memory_bytes {}", rss_kib * 1024);
        out
    }
}

/// A metric family's HELP and TYPE lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample with one label.
fn sample(out: &mut String, name: &str, (label, value): (&str, &str), count: u64) {
    let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_index_their_own_counter() {
        for (i, outcome) in Counted::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i, "{outcome:?}");
        }
        for (i, why) in Closed::ALL.iter().enumerate() {
            assert_eq!(*why as usize, i, "{why:?}");
        }
    }

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.count(Counted::Ok);
        m.count(Counted::Ok);
        m.count(Counted::Timeout);
        m.observe(Duration::from_micros(800));
        let text = m.render(10, 2);
        assert!(text.contains("vmfork_invocations_total{outcome=\"ok\"} 2"));
        assert!(text.contains("vmfork_invocations_total{outcome=\"timeout\"} 1"));
        assert!(text.contains("vmfork_invocations_total{outcome=\"too_large\"} 0"));
        assert!(text.contains("vmfork_invocation_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("vmfork_invocation_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("vmfork_invocation_seconds_bucket{le=\"+Inf\"} 1"));
        assert!(text.contains("vmfork_resident_memory_bytes 10240"));
        m.recycled(&Reset::InPlace(3));
        m.recycled(&Reset::Remap);
        let text = m.render(10, 2);
        assert!(text.contains("vmfork_recycled_vms_total{reset=\"in_place\"} 1"));
        assert!(text.contains("vmfork_recycled_vms_total{reset=\"remap\"} 1"));
        assert!(text.contains("vmfork_reset_pages_total 3"));
        assert!(text.contains("vmfork_unrecycled_vms_total{reason=\"guest_ring0\"} 0"));
        assert!(text.contains("vmfork_pooled_vms 2"));
        m.connection_closed(Closed::HeaderTimeout);
        m.connections_open(3);
        let text = m.render(10, 2);
        assert!(text.contains("vmfork_connections_closed_total{reason=\"header_timeout\"} 1"));
        assert!(text.contains("vmfork_connections_closed_total{reason=\"over_cap\"} 0"));
        assert!(text.contains("vmfork_connections 3"));
    }
}
