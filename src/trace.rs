//! W3C trace context (`traceparent`) carried from producer to handler, without an
//! OpenTelemetry dependency.
//!
//! A task's handler runs inside a child context of the `traceparent` it arrived with (same
//! trace id, new span id); a task enqueued from inside a handler inherits that context, so a
//! chain of tasks shares one trace id. The task span records `trace_id` and `parent_span_id`
//! so JSON logs can be joined with a tracing backend's spans.

use std::future::Future;

tokio::task_local! {
    static CURRENT: String;
}

/// The parts of a valid `traceparent` (`00-{trace_id:32 hex}-{span_id:16 hex}-{flags:2 hex}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero.
    pub span_id: String,
    /// 2 hex digits (01 = sampled).
    pub flags: String,
}

fn hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

impl TraceParent {
    /// Parses a version-00 `traceparent`; `None` when it is malformed.
    pub fn parse(text: &str) -> Option<TraceParent> {
        let mut parts = text.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let flags_ok = flags.len() == 2 && flags.bytes().all(|b| b.is_ascii_hexdigit());
        (version == "00"
            && parts.next().is_none()
            && hex(trace_id, 32)
            && hex(span_id, 16)
            && flags_ok)
            .then(|| TraceParent {
                trace_id: trace_id.to_string(),
                span_id: span_id.to_string(),
                flags: flags.to_string(),
            })
    }

    /// A new root context (new trace id), sampled.
    pub fn root() -> TraceParent {
        TraceParent {
            trace_id: format!("{:032x}", rand::random::<u128>().max(1)),
            span_id: span_id(),
            flags: "01".into(),
        }
    }

    /// A child: same trace, new span id.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            span_id: span_id(),
            ..self.clone()
        }
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// A random span id; never all zero (W3C forbids it).
fn span_id() -> String {
    format!("{:016x}", rand::random::<u64>().max(1))
}

/// Runs `fut` with `traceparent` as the current context (for tasks it enqueues).
pub async fn scope<F: Future>(traceparent: String, fut: F) -> F::Output {
    CURRENT.scope(traceparent, fut).await
}

/// The current context, inside a handler; `None` elsewhere.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_parses_and_prints_back() {
        let t = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(TraceParent::parse(t).unwrap().to_string(), t);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let root = TraceParent::root();
        assert!(TraceParent::parse(&root.to_string()).is_some());
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
    }

    #[tokio::test]
    async fn the_scope_sets_the_current_context() {
        assert_eq!(current(), None);
        let got = scope("00-x".into(), async { current() }).await;
        assert_eq!(got.as_deref(), Some("00-x"));
    }
}
