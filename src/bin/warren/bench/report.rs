//! Figures of the repetitions: medians, spreads, paired ratios, and the text report.

use std::collections::BTreeMap;

use serde::Serialize;

use super::BenchOptions;

/// One repetition's figures, by name.
pub(crate) type Figures = BTreeMap<String, f64>;

/// Median, minimum and maximum of one figure over the repetitions.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Spread {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

/// The ratios reported: label, numerator figure, denominator figure.
pub(super) const RATIOS: &[(&str, &str, &str)] = &[
    (
        "enqueue: warren / raw windowed publisher",
        "warren.enqueue",
        "raw.enqueue",
    ),
    ("drain: warren / raw ack-each", "warren.drain", "raw.drain"),
    (
        "drain: warren / raw ack-multiple",
        "warren.drain",
        "raw_multiple.drain",
    ),
    ("end to end: warren / raw ack-each", "warren.e2e", "raw.e2e"),
    (
        "end to end: warren / raw ack-multiple",
        "warren.e2e",
        "raw_multiple.e2e",
    ),
    (
        "enqueue: warren / raw with warren's wire and routing",
        "warren.enqueue",
        "raw_wire.enqueue",
    ),
    (
        "drain: warren / raw ack-multiple with warren's wire and routing",
        "warren.drain",
        "raw_wire.drain",
    ),
    (
        "end to end: warren / raw ack-multiple with warren's wire and routing",
        "warren.e2e",
        "raw_wire.e2e",
    ),
    (
        "wire and routing cost, enqueue: raw with warren's / raw",
        "raw_wire.enqueue",
        "raw.enqueue",
    ),
    (
        "wire and routing cost, end to end: raw with warren's / raw (both ack-multiple)",
        "raw_wire.e2e",
        "raw_multiple.e2e",
    ),
    (
        "paced p99 latency: warren / raw",
        "warren.paced_p99_ms",
        "raw.paced_p99_ms",
    ),
    (
        "round trip p50, one call at a time: warren / raw RPC",
        "warren.rpc_seq_p50_ms",
        "raw.rpc_seq_p50_ms",
    ),
    (
        "round trip p99, one call at a time: warren / raw RPC",
        "warren.rpc_seq_p99_ms",
        "raw.rpc_seq_p99_ms",
    ),
    (
        "round trip p50, 100 in flight: warren / raw RPC",
        "warren.rpc_100_p50_ms",
        "raw.rpc_100_p50_ms",
    ),
    (
        "round trip p99, 100 in flight: warren / raw RPC",
        "warren.rpc_100_p99_ms",
        "raw.rpc_100_p99_ms",
    ),
    (
        "round trips per second, 100 in flight: warren / raw RPC",
        "warren.rpc_100",
        "raw.rpc_100",
    ),
    (
        "drain, 40 types in one worker / 1 type: warren",
        "warren.drain_many_types",
        "warren.drain",
    ),
    (
        "drain beside a concurrency- and a rate-limited type / alone: warren",
        "warren.drain_beside_limits",
        "warren.drain",
    ),
    (
        "idle enqueue-to-start p50: warren / raw",
        "warren.idle_p50_ms",
        "raw.idle_p50_ms",
    ),
    (
        "idle enqueue-to-start p99: warren / raw",
        "warren.idle_p99_ms",
        "raw.idle_p99_ms",
    ),
    (
        "start-up to the first task: warren worker / raw consumer",
        "warren.startup_ms",
        "raw.startup_ms",
    ),
];

/// Median, minimum and maximum of `v`; `None` when it is empty.
pub(super) fn spread_of(mut v: Vec<f64>) -> Option<Spread> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// Medians and spreads per figure, and of each Warren/raw ratio.
///
/// A ratio is taken within each repetition, where both sides ran seconds apart, and then
/// summarized: on a shared machine whose speed drifts during a run, paired ratios cancel the
/// drift that a ratio of two medians (taken from different repetitions) would keep.
pub(super) fn summarize(reps: &[Figures]) -> (BTreeMap<String, Spread>, BTreeMap<String, Spread>) {
    let keys: std::collections::BTreeSet<&String> = reps.iter().flat_map(|f| f.keys()).collect();
    let spreads = keys
        .into_iter()
        .filter_map(|k| {
            spread_of(reps.iter().filter_map(|f| f.get(k).copied()).collect())
                .map(|s| (k.clone(), s))
        })
        .collect();
    let ratios = RATIOS
        .iter()
        .filter_map(|(label, a, b)| {
            let per_rep = reps
                .iter()
                .filter_map(|f| Some(f.get(*a)? / f.get(*b)?))
                .collect();
            spread_of(per_rep).map(|s| (label.to_string(), s))
        })
        .collect();
    (spreads, ratios)
}

/// The report as text.
pub(super) fn report(
    opts: &BenchOptions,
    spreads: &BTreeMap<String, Spread>,
    ratios: &BTreeMap<String, Spread>,
) -> String {
    let mut out = format!(
        "warren bench: {} messages of {} B, {} queues, prefetch {}, concurrency {}, {} repetition(s), paced {} msg/s\n\n",
        opts.count,
        opts.size,
        opts.queue_type.as_str(),
        opts.prefetch,
        opts.concurrency,
        opts.repetitions,
        opts.paced_rate
    );
    out.push_str(&format!(
        "  {:<34} {:>12} {:>24}\n",
        "figure", "median", "spread (min..max)"
    ));
    for (k, s) in spreads {
        let unit = if k.ends_with("_ms") {
            "ms"
        } else if k.ends_with("_s") {
            "s"
        } else if k.ends_with("_mib") {
            "MiB"
        } else if k.ends_with("_ran") {
            "tasks"
        } else {
            "msg/s"
        };
        out.push_str(&format!(
            "  {k:<34} {:>9.1} {unit:<5} {:>9.1} .. {:<9.1}\n",
            s.median, s.min, s.max
        ));
    }
    out.push_str("\n  ratios (median of the per-repetition ratios, and their spread)\n");
    for (k, r) in ratios {
        out.push_str(&format!(
            "  {k:<42} {:>6.2}   ({:.2} .. {:.2})\n",
            r.median, r.min, r.max
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(pairs: &[(&str, f64)]) -> Figures {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn ratios_are_paired_within_each_repetition() {
        let reps = vec![
            rep(&[("warren.e2e", 100.0), ("raw.e2e", 400.0)]),
            rep(&[("warren.e2e", 300.0), ("raw.e2e", 200.0)]),
            rep(&[("warren.e2e", 200.0), ("raw.e2e", 100.0)]),
        ];
        let (figures, ratios) = summarize(&reps);
        let r = ratios["end to end: warren / raw ack-each"];
        // per repetition: 0.25, 1.5, 2.0
        assert_eq!((r.median, r.min, r.max), (1.5, 0.25, 2.0));
        // the ratio of the medians (200 / 200) would mix repetitions
        assert_eq!(figures["warren.e2e"].median, 200.0);
        assert_eq!(figures["raw.e2e"].median, 200.0);
        // ratios whose figures were not measured are left out, not reported as NaN
        assert!(!ratios.contains_key("enqueue: warren / raw windowed publisher"));
    }

    #[test]
    fn an_even_count_takes_the_mean_of_the_middle_two() {
        let s = spread_of(vec![4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert!(spread_of(vec![f64::NAN]).is_none());
    }
}
