//! Rates and latency percentiles, and running work for a fixed time on many writers.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A rate with the latencies of the operations behind it (sorted).
#[derive(Debug, Clone, Default)]
pub struct Figure {
    pub per_s: f64,
    pub latencies: Vec<Duration>,
}

impl Figure {
    /// `units` done in `elapsed`, one latency per operation.
    pub fn rate(units: usize, elapsed: Duration, mut latencies: Vec<Duration>) -> Self {
        latencies.sort();
        Self { per_s: units as f64 / elapsed.as_secs_f64().max(1e-9), latencies }
    }

    pub fn p50_ms(&self) -> f64 {
        percentile(&self.latencies, 0.5).as_secs_f64() * 1e3
    }

    pub fn p99_ms(&self) -> f64 {
        percentile(&self.latencies, 0.99).as_secs_f64() * 1e3
    }

    /// `12,345/s p50 0.61 p99 1.20`
    pub fn cell(&self) -> String {
        format!("{:>8}/s {:>6.2} {:>7.2}", thousands(self.per_s), self.p50_ms(), self.p99_ms())
    }
}

/// The `p` quantile (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// `12345.6` → `12,346`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs `writers` tasks calling `one(writer, i)` for `warmup` (not counted), then for
/// `duration`; `one` returns how many units (events) it did. Returns units/s and the
/// latency of each call.
pub async fn for_duration<F, Fut>(writers: usize, warmup: Duration, duration: Duration, one: F) -> Figure
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = usize> + Send,
{
    let one = Arc::new(one);
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + duration;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let one = Arc::clone(&one);
            tokio::spawn(async move {
                let (mut units, mut latencies, mut i) = (0, Vec::new(), 0);
                loop {
                    let begun = Instant::now();
                    if begun >= end {
                        break;
                    }
                    let done = one(w, i).await;
                    i += 1;
                    if begun >= measure_from {
                        units += done;
                        latencies.push(begun.elapsed());
                    }
                }
                (units, latencies)
            })
        })
        .collect();
    let (mut units, mut latencies) = (0, Vec::new());
    for task in tasks {
        let (u, l) = task.await.unwrap();
        units += u;
        latencies.extend(l);
    }
    Figure::rate(units, duration, latencies)
}
