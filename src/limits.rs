//! Limits across every worker, as numbers: `rate_limit = "10/s"` parsed, and how many start
//! tokens circulate for it. Pure.
//!
//! A limit is a queue of tokens (the `control` module's token queues): `concurrency_limit = N` is N tokens,
//! each held by a worker for one run; `rate_limit = R/period` is K tokens, each held for K/R
//! after a start, so at most K starts fall in any K/R window. K is the rate over 100 ms,
//! rounded up: at most 10 % of a second's starts at once, and one token for any rate up to
//! 10/s, which then spaces starts evenly (5/s: one start every 200 ms, never five at once).

use std::time::Duration;

/// The window K tokens cover: K = ceil(rate × this).
const BURST_WINDOW: Duration = Duration::from_millis(100);

/// Longest a start token may be held. RabbitMQ closes a channel whose delivery stays unacked
/// past `consumer_timeout` (30 min by default), returning every token on it; a rate slower
/// than one start per 10 minutes belongs in a schedule.
pub const HOLD_MAX: Duration = Duration::from_secs(600);

/// Most starts per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Starts allowed per `per`.
    pub count: u32,
    /// The period: a second, a minute or an hour.
    pub per: Duration,
}

impl RateLimit {
    /// Parses `N/s`, `N/m` or `N/h` (also `sec`, `second`, `min`, `minute`, `hour`), N from
    /// 1 to 100 000.
    ///
    /// # Errors
    /// A sentence quoting the text and giving the accepted form.
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let bad = |why: &str| {
            format!(
                "rate_limit = \"{text}\" {why}; write starts per second, minute or hour, e.g. \
                 \"10/s\", \"300/m\", \"1000/h\""
            )
        };
        let (count, unit) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("has no `/`"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| bad("does not start with a whole number"))?;
        if count == 0 || count > 100_000 {
            return Err(bad("must allow 1 to 100000 starts"));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad("has an unknown period")),
        };
        let limit = RateLimit { count, per };
        let (_, hold) = limit.tokens();
        if hold > HOLD_MAX {
            return Err(bad(&format!(
                "is slower than one start per {} (a start token would stay unacked past \
                 RabbitMQ's consumer timeout); use a [schedules] table for rarer runs",
                crate::duration::duration_text(HOLD_MAX)
            )));
        }
        Ok(limit)
    }

    /// Starts per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }

    /// The tokens that circulate (K) and how long a worker holds one after a start (K/R).
    pub fn tokens(&self) -> (u32, Duration) {
        let rate = self.per_second();
        let k = (rate * BURST_WINDOW.as_secs_f64()).ceil().max(1.0) as u32;
        (k, Duration::from_secs_f64(f64::from(k) / rate))
    }

    /// As written: `10/s`.
    pub fn text(&self) -> String {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        format!("{}/{unit}", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_per_second_minute_and_hour() {
        let r = RateLimit::parse("10/s").unwrap();
        assert_eq!((r.count, r.per), (10, Duration::from_secs(1)));
        assert_eq!(RateLimit::parse(" 300 / min").unwrap().text(), "300/m");
        assert_eq!(RateLimit::parse("6/h").unwrap().per_second(), 6.0 / 3600.0);
    }

    #[test]
    fn bad_rates_say_what_is_wrong() {
        for (text, why) in [
            ("ten/s", "whole number"),
            ("5/fortnight", "unknown period"),
            ("5", "no `/`"),
            ("0/s", "1 to 100000"),
            ("1/h", "consumer timeout"),
        ] {
            let e = RateLimit::parse(text).unwrap_err();
            assert!(e.contains(text) && e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn slow_rates_circulate_one_token_and_fast_ones_a_tenth_of_a_second() {
        // 5/s: one token, held 200 ms: starts are spaced, never five at once.
        let (k, hold) = RateLimit::parse("5/s").unwrap().tokens();
        assert_eq!((k, hold), (1, Duration::from_millis(200)));
        let (k, hold) = RateLimit::parse("10/s").unwrap().tokens();
        assert_eq!((k, hold), (1, Duration::from_millis(100)));
        let (k, hold) = RateLimit::parse("1000/s").unwrap().tokens();
        assert_eq!((k, hold), (100, Duration::from_millis(100)));
        let (k, hold) = RateLimit::parse("60/m").unwrap().tokens();
        assert_eq!((k, hold), (1, Duration::from_secs(1)));
        let (k, hold) = RateLimit::parse("6/h").unwrap().tokens();
        assert_eq!((k, hold), (1, HOLD_MAX));
    }
}
