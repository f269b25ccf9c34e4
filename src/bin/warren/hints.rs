//! What to do about an error, in this command's terms (flags, subcommands, scripts).
//!
//! The library's errors state facts; the advice that names `warren topology apply`,
//! `--amqp-url` or `scripts/broker.sh` belongs to the command line, and lives here.

use warren::Error;
use warren::error::AccessDenied;

/// `err`'s message with its advice on the next line, as the command prints errors.
pub(crate) fn explained(err: &Error) -> String {
    match for_error(err) {
        Some(hint) => format!("{err}\n  {hint}"),
        None => err.to_string(),
    }
}

/// Advice for `err`, printed under its message; `None` when the message says it all.
pub(crate) fn for_error(err: &Error) -> Option<String> {
    let hint = match err {
        Error::TopologyFile { .. } => "Pass --topology FILE or set WARREN_TOPOLOGY.".to_string(),
        Error::Connect { .. } => "Is a broker running? Start one with `scripts/broker.sh` (or \
            `rabbitmq-server -detached`, or `docker compose up rabbitmq`), or point Warren at \
            yours with --amqp-url / WARREN_AMQP_URL."
            .to_string(),
        Error::Refused {
            because: AccessDenied::Credentials,
            ..
        } => "Check the user name and password in the AMQP URL (--amqp-url / WARREN_AMQP_URL)."
            .to_string(),
        Error::Refused {
            because: AccessDenied::VirtualHost,
            ..
        } => "Create it with `rabbitmqctl add_vhost VHOST` and grant rights with `rabbitmqctl \
            set_permissions -p VHOST USER '.*' '.*' '.*'`, or fix the vhost at the end of the \
            AMQP URL (`%2f` is the default vhost `/`)."
            .to_string(),
        Error::Unroutable { task, .. } => format!(
            "The topology is probably not applied: run `warren topology apply` (with the same \
             --namespace and --topology), and check that `{task}` is listed under [tasks] in \
             the topology file."
        ),
        Error::MissingExchange { .. } => "The topology is not applied: run `warren topology \
            apply` (with the same --namespace and --topology)."
            .to_string(),
        Error::TopologyConflict(_) => {
            "Once the old objects are gone, run `warren topology apply` again.".to_string()
        }
        Error::MissingQueue { .. } => {
            "Check the task name and --namespace, or run `warren topology apply`.".to_string()
        }
        Error::Refusal { .. } => "Retry later and check `warren status`.".to_string(),
        Error::Declare { name, source, .. } if name.contains('@') && is_access_refused(source) => {
            "A worker declares a queue of its own, `{namespace}.{task}@{host}:{pid}`, for each \
             broadcast type it runs: grant its user configure, write and read rights on those \
             names too (e.g. the pattern `^{namespace}\\.` covers every Warren name)."
                .to_string()
        }
        Error::NotEmpty { .. } => "Stop the workers, then add --if-empty to delete only the \
            empty queues, or --yes to delete the tasks with them (see them first with `warren \
            status` and `warren dlq list`)."
            .to_string(),
        Error::ManagementUnreachable { .. } => "Enable it with `rabbitmq-plugins enable \
            rabbitmq_management` (scripts/broker.sh does), or point Warren at it with \
            --management-url / WARREN_MANAGEMENT_URL."
            .to_string(),
        Error::WouldNotFit(_) => "Nothing was declared. To apply anyway (on a node whose \
            limit the API misreports), pass --skip-capacity-check."
            .to_string(),
        Error::ManagementRefused { .. } => "Check the credentials, or pass --management-url \
            http://USER:PASSWORD@HOST:15672."
            .to_string(),
        _ => return None,
    };
    Some(hint)
}

fn is_access_refused(err: &lapin::Error) -> bool {
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(e)
        if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::ACCESSREFUSED)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_failures_point_at_the_flags_and_scripts_that_fix_them() {
        let connect = Error::Connect {
            url: "amqp://h/".into(),
            reason: "refused".into(),
        };
        let hint = for_error(&connect).unwrap();
        assert!(
            hint.contains("scripts/broker.sh") && hint.contains("--amqp-url"),
            "{hint}"
        );
        let unroutable = Error::Unroutable {
            task: "mail".into(),
            namespace: "ns".into(),
        };
        assert!(
            for_error(&unroutable)
                .unwrap()
                .contains("warren topology apply")
        );
        assert_eq!(for_error(&Error::InvalidInput("bad".into())), None);
    }
}
