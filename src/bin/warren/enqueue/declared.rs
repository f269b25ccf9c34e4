//! Task names checked against the loaded topology file, with the closest declared name for a
//! typo.

use std::path::Path;

use warren::{Error, Result, Settings};

/// A task name the loaded topology file does not declare is a typo far more often than an
/// unapplied topology: say so first, with the closest declared name. A file that declares no
/// task types (or none loaded) checks nothing.
pub(crate) fn check_declared(
    settings: &Settings,
    task: &str,
    topology: Option<&Path>,
) -> Result<()> {
    if settings.tasks.is_empty() || settings.tasks.contains_key(task) {
        return Ok(());
    }
    let file = topology.map_or_else(|| "the topology".to_string(), |p| p.display().to_string());
    let closest = settings
        .tasks
        .keys()
        .map(|name| (edit_distance(task, name), name))
        .min()
        .filter(|(d, name)| *d <= 2.max(name.len() / 4));
    Err(Error::InvalidInput(match closest {
        Some((_, name)) => format!("no task `{task}` in {file}; did you mean `{name}`?"),
        None => format!(
            "no task `{task}` in {file}; it declares {}",
            settings
                .tasks
                .keys()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }))
}

/// Levenshtein distance between `a` and `b`, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("send_mail", "send_email"), 1);
        assert_eq!(edit_distance("resize", "resize_image"), 6);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn an_undeclared_task_is_refused_with_the_closest_name() {
        let s = Settings::from_toml("[tasks.send_email]\n[tasks.resize_image]\n").unwrap();
        let file = Path::new("topology/warren.toml");
        let err = check_declared(&s, "send_mail", Some(file))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no task `send_mail` in topology/warren.toml; did you mean `send_email`?"
        );
        let err = check_declared(&s, "zzz", Some(file))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("declares `resize_image`, `send_email`"),
            "{err}"
        );
        check_declared(&s, "send_email", Some(file)).unwrap();
        check_declared(&Settings::default(), "anything", None).unwrap();
    }
}
