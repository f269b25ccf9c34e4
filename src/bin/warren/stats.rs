//! Latency percentiles, shared by `warren bench` and `warren demo`.

/// Percentiles p50, p90 and p99 of `samples` (nearest rank, sorted in place); NaN for none.
pub(crate) fn percentiles(samples: &mut [f64]) -> [f64; 3] {
    if samples.is_empty() {
        return [f64::NAN; 3];
    }
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    [at(0.5), at(0.9), at(0.99)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentiles(&mut v), [51.0, 90.0, 99.0]);
        assert!(percentiles(&mut []).iter().all(|p| p.is_nan()));
    }
}
