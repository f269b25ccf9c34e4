//! Layering: built-in defaults < the topology file < environment < flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Settings, TOPOLOGY_PATH_DEFAULT, file};
use crate::duration::parse_duration;
use crate::error::{Error, Result};

/// Values from the environment or CLI flags that override the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--amqp-url` / `WARREN_AMQP_URL`.
    pub amqp_url: Option<String>,
    /// `--namespace` / `WARREN_NAMESPACE`.
    pub namespace: Option<String>,
    /// `--management-url` / `WARREN_MANAGEMENT_URL`.
    pub management_url: Option<String>,
    /// `--connect-timeout` / `WARREN_CONNECT_TIMEOUT`.
    pub connect_timeout: Option<Duration>,
    /// `--heartbeat` / `WARREN_HEARTBEAT`.
    pub heartbeat: Option<Duration>,
}

impl Overrides {
    /// Reads the `WARREN_*` variables, for library users without a CLI.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Overrides {
            amqp_url: var("WARREN_AMQP_URL"),
            namespace: var("WARREN_NAMESPACE"),
            management_url: var("WARREN_MANAGEMENT_URL"),
            connect_timeout: var("WARREN_CONNECT_TIMEOUT").and_then(|v| parse_duration(&v).ok()),
            heartbeat: var("WARREN_HEARTBEAT").and_then(|v| parse_duration(&v).ok()),
        }
    }
}

impl Settings {
    /// Loads settings: defaults, then `path` (or `topology/warren.toml` when it exists), then
    /// `overrides`, then validates.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file, line and key when the file is unreadable or wrong,
    /// or the field when a value is out of range.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Settings> {
        let mut settings = match topology_file(path) {
            Some(p) => Settings::from_file(&p)?,
            None => Settings::default(),
        };
        settings.apply(overrides);
        settings.validate()?;
        Ok(settings)
    }

    /// Reads one topology file over the built-in defaults, without validating.
    ///
    /// # Errors
    /// [`Error::TopologyFile`] when the file cannot be read; [`Error::Config`] when it cannot
    /// be parsed.
    pub fn from_file(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::TopologyFile {
            path: path.to_path_buf(),
            source,
        })?;
        Settings::from_toml(&text).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("in `{}`: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses topology TOML over the built-in defaults, without validating.
    ///
    /// # Errors
    /// [`Error::Config`] with TOML's line and column for syntax errors and unknown keys.
    pub fn from_toml(text: &str) -> Result<Settings> {
        file::parse(text)
    }

    /// Applies environment/flag overrides (they win over the file).
    pub fn apply(&mut self, overrides: &Overrides) {
        if let Some(url) = &overrides.amqp_url {
            self.amqp_url = url.clone();
        }
        if let Some(ns) = &overrides.namespace {
            self.namespace = ns.clone();
        }
        if let Some(url) = &overrides.management_url {
            self.management_url = Some(url.clone());
        }
        if let Some(t) = overrides.connect_timeout {
            self.connect_timeout = t;
        }
        if let Some(t) = overrides.heartbeat {
            self.heartbeat = t;
        }
    }
}

/// The topology file [`Settings::load`] reads for `path`: `path` itself when given, else
/// `topology/warren.toml` when it exists, else none (built-in defaults).
pub fn topology_file(path: Option<&Path>) -> Option<PathBuf> {
    match path {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let default = Path::new(TOPOLOGY_PATH_DEFAULT);
            default.exists().then(|| default.to_path_buf())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_the_file() {
        let mut s =
            Settings::from_toml("namespace = \"file\"\namqp_url = \"amqp://a/%2f\"").unwrap();
        s.apply(&Overrides {
            namespace: Some("flag".into()),
            amqp_url: None,
            management_url: Some("http://m:1".into()),
            connect_timeout: None,
            heartbeat: None,
        });
        assert_eq!(s.namespace, "flag");
        assert_eq!(s.amqp_url, "amqp://a/%2f");
        assert_eq!(s.management_url.as_deref(), Some("http://m:1"));
    }
}
