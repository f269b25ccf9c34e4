//! The fault ledger: each fault scenario writes one row of counts, and
//! `scripts/ledger.sh` renders the rows into `docs/reliability.md`. No figure in that table
//! is typed by hand.

use std::time::Duration;

use super::Tally;

/// Where the rows go: `target/fault-ledger/`, one file per scenario, so a rerun of one
/// scenario replaces its own row only.
pub fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fault-ledger")
}

/// One scenario's counts: `sent` tasks offered to the producer, the tally of what was
/// confirmed and ran, and the longest stall (from the fault to the last of its tasks running
/// elsewhere) when the scenario measures one.
pub fn write(fault: &str, sent: usize, t: &Tally, stall: Option<Duration>, note: &str) {
    let stall = stall.map_or("–".to_string(), |s| format!("{:.1} s", s.as_secs_f64()));
    let row = format!(
        "| {fault} | {sent} | {} | {} | {} | {} | {stall} | {note} |\n",
        t.confirmed,
        t.runs - t.duplicates,
        t.lost,
        t.duplicates,
    );
    let dir = dir();
    let _ = std::fs::create_dir_all(&dir);
    let slug: String = fault
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    std::fs::write(dir.join(format!("{slug}.row")), row).expect("writing the ledger row");
}
