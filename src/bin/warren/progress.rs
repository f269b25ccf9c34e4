//! Progress on stderr for the bulk commands: a bar on a terminal, a line per 10 % otherwise.

use std::io::IsTerminal;

pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    last_decile: std::cell::Cell<u64>,
}

impl Progress {
    pub(crate) fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} tasks  {per_sec}  eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            total,
            last_decile: std::cell::Cell::new(0),
        }
    }

    pub(crate) fn set(&self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None => {
                let decile = done * 10 / self.total.max(1);
                if decile > self.last_decile.get() {
                    self.last_decile.set(decile);
                    eprintln!("progress: {done}/{} tasks", self.total);
                }
            }
        }
    }

    pub(crate) fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
