//! Figures of the plain (`harness = false`) benchmarks: durations in ms and
//! the median and 90th percentile of a sample, printed the same way by
//! every bench that uses them.

use std::time::Duration;

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and 90th percentile of `v`, in ms ("-" for no sample).
pub fn stats(v: &[Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut v = v.to_vec();
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!("median {:6.2} ms  p90 {:6.2} ms", ms(at(0.5)), ms(at(0.9)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p90() {
        let v: Vec<Duration> = (1..=10).rev().map(Duration::from_millis).collect();
        assert_eq!(stats(&v), "median   6.00 ms  p90   9.00 ms");
        assert_eq!(stats(&[]), "-");
    }
}
