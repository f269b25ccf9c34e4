//! The delay ladder's arithmetic: a delay in whole seconds becomes a routing key whose bits
//! pick the levels it waits in. Pure: no lapin here.
//!
//! Why a ladder: RabbitMQ expires messages only at the head of a queue, so one delay queue
//! with mixed per-message TTLs makes a 1 s delay wait behind a 1 h one. Level `n` is a queue
//! whose messages all share one TTL of 2^n s, so every level is FIFO in expiry order, and a
//! delay of d s waits exactly d s in the levels of d's set bits.

use std::time::Duration;

/// The levels 0..=`top` of one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ladder {
    top: u32,
}

impl Ladder {
    /// The smallest ladder that holds `max_delay` (rounded up to whole seconds, at least 1 s).
    pub fn for_max_delay(max_delay: Duration) -> Ladder {
        let secs = round_up_secs(max_delay).max(1);
        Ladder {
            top: 63 - secs.leading_zeros(),
        }
    }

    /// Highest level `L`; the ladder has `L + 1` levels.
    pub fn top(&self) -> u32 {
        self.top
    }

    /// Levels from the highest down, in the order a message meets them.
    pub fn levels(&self) -> impl Iterator<Item = u32> {
        (0..=self.top).rev()
    }

    /// Longest delay the ladder can hold, in seconds: 2^(L+1) - 1.
    pub fn capacity_secs(&self) -> u64 {
        (1u64 << (self.top + 1)) - 1
    }

    /// Time a message waits in level `level`, in milliseconds (the queue's `x-message-ttl`).
    pub fn level_ttl_ms(level: u32) -> u64 {
        (1u64 << level) * 1000
    }

    /// Routing key for a delay of `delay_secs`: bits L..0 of the delay, then the task name,
    /// e.g. `0.0.1.0.1.send_email` for 5 s with L = 4.
    ///
    /// # Panics
    /// Never for delays up to [`Ladder::capacity_secs`]; callers validate against `max_delay`
    /// first, and a larger delay is a bug, so this asserts in debug builds.
    pub fn routing_key(&self, delay_secs: u64, task: &str) -> String {
        debug_assert!(delay_secs <= self.capacity_secs());
        let mut key = String::with_capacity(2 * (self.top as usize + 1) + task.len());
        for level in self.levels() {
            key.push(if delay_secs >> level & 1 == 1 {
                '1'
            } else {
                '0'
            });
            key.push('.');
        }
        key.push_str(task);
        key
    }

    /// Topic pattern on exchange `level` matching keys whose bit `level` is `bit`:
    /// `(L - level)` wildcards for the higher bits, the bit, then `#` for the rest.
    pub fn binding_key(&self, level: u32, bit: bool) -> String {
        let mut key = "*.".repeat((self.top - level) as usize);
        key.push(if bit { '1' } else { '0' });
        key.push_str(".#");
        key
    }
}

/// Whole seconds of `d`, rounded up: a delay never fires early, so 1.2 s waits 2 s.
pub fn round_up_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Follows a routing key down the ladder the way the broker's bindings would, returning
    /// the levels whose queue it waits in. Checks the bindings and the keys together.
    fn walk(ladder: &Ladder, key: &str) -> Vec<u32> {
        let parts: Vec<&str> = key.split('.').collect();
        let mut waited = Vec::new();
        for level in ladder.levels() {
            let one = ladder.binding_key(level, true);
            let zero = ladder.binding_key(level, false);
            let matches = |pattern: &str| {
                let p: Vec<&str> = pattern.split('.').collect();
                // "*." × k, then the bit, then "#"
                let k = p.len() - 2;
                parts[k] == p[k]
            };
            match (matches(&one), matches(&zero)) {
                (true, false) => waited.push(level),
                (false, true) => {}
                other => panic!("key {key} at level {level} matched {other:?}"),
            }
        }
        waited
    }

    #[test]
    fn the_ladder_is_as_tall_as_max_delay_needs() {
        assert_eq!(Ladder::for_max_delay(Duration::from_secs(1)).top(), 0);
        assert_eq!(Ladder::for_max_delay(Duration::from_secs(2)).top(), 1);
        assert_eq!(Ladder::for_max_delay(Duration::from_secs(3)).top(), 1);
        assert_eq!(Ladder::for_max_delay(Duration::from_secs(4)).top(), 2);
        // 30 days = 2_592_000 s; 2^21 = 2_097_152 <= it < 2^22
        let month = Ladder::for_max_delay(Duration::from_secs(30 * 86400));
        assert_eq!(month.top(), 21);
        assert!(month.capacity_secs() >= 30 * 86400);
        assert_eq!(
            Ladder::for_max_delay(Duration::from_secs((1 << 28) - 1)).top(),
            27
        );
    }

    #[test]
    fn zero_seconds_waits_nowhere() {
        let l = Ladder::for_max_delay(Duration::from_secs(60));
        assert_eq!(l.routing_key(0, "t"), "0.0.0.0.0.0.t");
        assert!(walk(&l, &l.routing_key(0, "t")).is_empty());
    }

    #[test]
    fn one_second_waits_in_level_zero_only() {
        let l = Ladder::for_max_delay(Duration::from_secs(60));
        assert_eq!(l.routing_key(1, "t"), "0.0.0.0.0.1.t");
        assert_eq!(walk(&l, "0.0.0.0.0.1.t"), vec![0]);
    }

    #[test]
    fn powers_of_two_wait_in_one_level() {
        let l = Ladder::for_max_delay(Duration::from_secs(1 << 20));
        for n in 0..=20 {
            assert_eq!(walk(&l, &l.routing_key(1 << n, "t")), vec![n], "2^{n}");
        }
    }

    #[test]
    fn one_below_a_power_of_two_waits_in_every_lower_level() {
        let l = Ladder::for_max_delay(Duration::from_secs(1 << 20));
        for n in 1..=20u32 {
            let want: Vec<u32> = (0..n).rev().collect();
            assert_eq!(walk(&l, &l.routing_key((1 << n) - 1, "t")), want, "2^{n}-1");
        }
    }

    #[test]
    fn the_time_spent_equals_the_delay() {
        let l = Ladder::for_max_delay(Duration::from_secs(30 * 86400));
        for d in [0u64, 1, 2, 3, 5, 90, 3600, 86_399, 30 * 86400] {
            let total: u64 = walk(&l, &l.routing_key(d, "job"))
                .iter()
                .map(|&n| 1u64 << n)
                .sum();
            assert_eq!(total, d);
        }
    }

    #[test]
    fn max_delay_sets_the_top_bit() {
        let max = 30 * 86400;
        let l = Ladder::for_max_delay(Duration::from_secs(max));
        let key = l.routing_key(max, "job");
        assert!(key.starts_with("1."), "{key}");
        assert_eq!(key.split('.').count(), 22 + 1);
    }

    #[test]
    fn binding_keys_put_the_bit_in_its_position() {
        let l = Ladder::for_max_delay(Duration::from_secs(7)); // L = 2
        assert_eq!(l.binding_key(2, true), "1.#");
        assert_eq!(l.binding_key(1, false), "*.0.#");
        assert_eq!(l.binding_key(0, true), "*.*.1.#");
    }

    #[test]
    fn sub_second_delays_round_up() {
        assert_eq!(round_up_secs(Duration::from_millis(1)), 1);
        assert_eq!(round_up_secs(Duration::from_millis(1000)), 1);
        assert_eq!(round_up_secs(Duration::from_millis(1001)), 2);
        assert_eq!(round_up_secs(Duration::ZERO), 0);
    }
}
