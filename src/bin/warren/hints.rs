//! What to do about an error, in this command's terms (flags, subcommands, scripts).
//!
//! The library's errors state facts; the advice that names `warren topology apply`,
//! `--amqp-url` or `scripts/broker.sh` belongs to the command line, and lives here.

use warren::Error;

/// A line of advice for `err`, when there is one.
pub(crate) fn for_error(err: &Error) -> Option<String> {
    let _ = err;
    None
}
