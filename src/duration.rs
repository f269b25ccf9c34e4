//! Durations as people write them in the topology file, on the command line and in
//! messages: `90s`, `10m`, `1h 30m`, `30d`. One way to read them and one way to write them
//! back, so that what Warren prints can be pasted into a flag or a file. Pure.

use std::time::Duration;

/// Parses a duration written for humans: `90s`, `10m`, `1h 30m`, `30d`.
///
/// # Errors
/// A message that quotes the input and shows the accepted form.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration `{text}` ({e}); write a number and a unit, e.g. `90s`, `10m`, `2h`, `30d`")
    })
}

/// A duration as a user would write it back: in the largest of days, hours, minutes or
/// seconds that divides it (`400d`, `90m`, `1500ms`), never humantime's
/// "1year 1month 4days 7h…", which no one typed. It parses back with [`parse_duration`].
pub fn duration_text(d: Duration) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    if d.subsec_nanos() != 0 {
        return if d.subsec_nanos().is_multiple_of(1_000_000) {
            format!("{}ms", d.as_millis())
        } else {
            format!("{:.3}s", d.as_secs_f64())
        };
    }
    let secs = d.as_secs();
    if secs == 0 {
        return "0s".to_string();
    }
    let (size, unit) = UNITS
        .into_iter()
        .find(|(size, _)| secs.is_multiple_of(*size))
        .unwrap_or((1, "s"));
    format!("{}{unit}", secs / size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_echoed_in_the_largest_unit_that_divides_them() {
        let cases = [
            (Duration::from_secs(400 * 86_400), "400d"),
            (Duration::from_secs(5_400), "90m"),
            (Duration::from_secs(7_200), "2h"),
            (Duration::from_secs(268_435_455), "268435455s"),
            (Duration::from_secs(0), "0s"),
            (Duration::from_millis(1_500), "1500ms"),
            (Duration::from_micros(1_500), "0.002s"),
        ];
        for (d, text) in cases {
            assert_eq!(duration_text(d), text);
            if d.subsec_micros() % 1000 == 0 {
                assert_eq!(parse_duration(text), Ok(d), "{text} parses back");
            }
        }
    }
}
