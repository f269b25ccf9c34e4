//! Which broker it is, and whether Warren can run on it.
//!
//! RabbitMQ sends its product and version in `connection.start`, but lapin 4.12 keeps the
//! server properties to itself, so the figures come from the management API's
//! `/api/overview` (`product_name`, `product_version`), which every Warren deployment has for
//! `status` and `dlq`.
//!
//! The oldest version Warren runs on is 3.10: its quorum queues declare
//! `x-dead-letter-strategy = at-least-once`, which 3.10 introduced. An older broker accepts the
//! argument without a word and dead-letters at most once, so a node failure could drop a task
//! on its way to a dead queue; that is why an older broker is refused rather than used.

use serde_json::Value;

use super::management::Management;
use crate::error::{Error, Result};

/// The oldest RabbitMQ Warren runs on.
pub const MINIMUM: (u32, u32) = (3, 10);

/// The broker's product and version, as it reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerVersion {
    /// `RabbitMQ` (or a distribution's product name).
    pub product: String,
    /// The version text, e.g. `3.10.8`.
    pub version: String,
    /// Erlang/OTP release, e.g. `25.2.3`.
    pub erlang: String,
}

impl std::fmt::Display for BrokerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (Erlang {})",
            self.product, self.version, self.erlang
        )
    }
}

impl BrokerVersion {
    /// Reads `/api/overview`.
    ///
    /// # Errors
    /// [`Error::Management`] and its kin when the API cannot be read or omits the version.
    pub fn read(mgmt: &Management) -> Result<BrokerVersion> {
        let overview = mgmt.get("overview")?;
        from_overview(&overview).ok_or_else(|| {
            Error::Management(format!(
                "{}/api/overview reports no RabbitMQ version",
                mgmt.base()
            ))
        })
    }

    /// Major and minor version, when the text starts with them (`3.10.8` → (3, 10)).
    pub fn major_minor(&self) -> Option<(u32, u32)> {
        let mut parts = self.version.split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor))
    }

    /// Refuses a broker older than [`MINIMUM`]; an unreadable version is let through (a
    /// distribution's own numbering must not lock its users out).
    ///
    /// # Errors
    /// [`Error::UnsupportedBroker`] naming the version and why 3.10 is needed.
    pub fn check_supported(&self) -> Result<()> {
        match self.major_minor() {
            Some(v) if v < MINIMUM => Err(Error::UnsupportedBroker(format!(
                "{self} is older than RabbitMQ {}.{}, the oldest Warren runs on: before it, \
                 quorum queues dead-letter at most once (no x-dead-letter-strategy = \
                 at-least-once), so a node failure could drop a task on its way to a dead \
                 queue; upgrade the broker",
                MINIMUM.0, MINIMUM.1
            ))),
            _ => Ok(()),
        }
    }
}

fn from_overview(overview: &Value) -> Option<BrokerVersion> {
    let text = |k: &str| overview[k].as_str().map(str::to_string);
    Some(BrokerVersion {
        product: text("product_name").unwrap_or_else(|| "RabbitMQ".into()),
        version: text("product_version").or_else(|| text("rabbitmq_version"))?,
        erlang: text("erlang_version").unwrap_or_else(|| "?".into()),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn version(v: &str) -> BrokerVersion {
        from_overview(&json!({"product_name": "RabbitMQ", "product_version": v,
            "erlang_version": "25.2.3"}))
        .unwrap()
    }

    #[test]
    fn the_overview_gives_product_version_and_erlang() {
        let v = version("3.10.8");
        assert_eq!(v.to_string(), "RabbitMQ 3.10.8 (Erlang 25.2.3)");
        assert_eq!(v.major_minor(), Some((3, 10)));
        // Older management APIs have only rabbitmq_version.
        let old = from_overview(&json!({"rabbitmq_version": "3.8.2"})).unwrap();
        assert_eq!(old.version, "3.8.2");
        assert!(from_overview(&json!({"management_version": "x"})).is_none());
    }

    #[test]
    fn brokers_from_3_10_on_are_supported_and_older_ones_refused_saying_why() {
        for ok in [
            "3.10.0",
            "3.10.8",
            "3.13.7",
            "4.0.5",
            "4.1.0-rc.1",
            "tanzu-x",
        ] {
            assert!(version(ok).check_supported().is_ok(), "{ok}");
        }
        for old in ["3.9.29", "3.8.0", "2.8.7"] {
            let err = version(old).check_supported().unwrap_err().to_string();
            assert!(
                err.contains(old) && err.contains("at-least-once") && err.contains("3.10"),
                "{err}"
            );
        }
    }
}
