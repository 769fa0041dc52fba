//! What the demo prints about the matrix: expected against observed, with the deciding
//! rule the kernel recorded in the audit trail.

use enforcer::{
    audit::record::Record,
    cli::table::{print_table, table},
};
use enforcer_tests::probe::Outcome;

use crate::matrix::{Attempt, Flow, Tried};

/// What the client saw, in words, with the service that answered when the server runs
/// in a service's cgroup (its answer names the cgroup).
fn describe_outcome(outcome: &Outcome, answer: &str) -> String {
    let service = answer
        .trim()
        .rsplit('/')
        .next()
        .filter(|last| last.ends_with(".service"));
    match outcome {
        Outcome::Ok => match service {
            Some(service) => format!("HTTP 200 from {service}"),
            None => "HTTP 200".to_owned(),
        },
        Outcome::Timeout => "no answer (dropped)".to_owned(),
        outcome if outcome.is_eperm() => "EPERM".to_owned(),
        Outcome::Error { message, .. } => format!("error: {message}"),
    }
}

/// What the record says: its verdict, what decided it (the rule or failsafe name, else
/// the reason) and the segments it classified the flow into.
struct Recorded {
    verdict: String,
    decided_by: String,
    src_segment: String,
    dst_segment: String,
}

impl Recorded {
    fn of(record: &Record) -> Option<Self> {
        let details = record.unmapped.flow.as_ref()?;
        Some(Self {
            verdict: details.verdict.clone(),
            decided_by: details
                .rule
                .clone()
                .unwrap_or_else(|| details.reason.clone()),
            src_segment: details.src_segment.clone(),
            dst_segment: details.dst_segment.clone(),
        })
    }

    /// Whether it agrees with the row: verdict, deciding rule, and the destination
    /// segment (`*` for a raw socket, which has none).
    fn agrees_with(&self, flow: &Flow) -> bool {
        let dst = if flow.attempt == Attempt::RawSocket {
            "*"
        } else {
            flow.to
        };
        self.verdict == flow.expect.as_str()
            && self.decided_by == flow.decided_by
            && self.dst_segment == dst
    }
}

impl std::fmt::Display for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({} -> {})",
            self.verdict, self.decided_by, self.src_segment, self.dst_segment
        )
    }
}

fn describe_attempt(tried: &Tried) -> String {
    match (tried.flow.attempt, tried.target) {
        (Attempt::RawSocket, _) => "raw socket".to_owned(),
        (Attempt::Http { port, .. }, target) => {
            let addr = target
                .map(|target| target.ip().to_string())
                .unwrap_or_default();
            format!("{addr} {port}/tcp")
        }
    }
}

/// Prints the matrix as a table and returns how many rows are as expected: the client
/// saw what the policy says and the audit record names the same verdict and rule. `records` are the flow
/// records the store holds; `with_records` is false while the agent is stopped (events
/// wait in the kernel's ring then, so only the clients are compared).
pub fn print_matrix(tried: &[Tried], records: &[Record], with_records: bool) -> usize {
    let mut header = vec!["#", "from", "to", "flow", "policy says", "client saw"];
    if with_records {
        header.push("audit record (segments)");
    }
    header.push("");
    let mut printed = table(&header);
    let mut as_expected = 0;
    for (number, tried) in tried.iter().enumerate() {
        let flow = &tried.flow;
        let mut ok = tried.as_expected_by_client();
        let mut row = vec![
            (number + 1).to_string(),
            flow.from.to_owned(),
            flow.to.to_owned(),
            describe_attempt(tried),
            format!("{} {}", flow.expect.as_str(), flow.decided_by),
            describe_outcome(&tried.outcome, &tried.answer),
        ];
        if with_records {
            let recorded = records
                .iter()
                .find(|record| tried.is_recorded_by(record))
                .and_then(Recorded::of);
            ok &= recorded
                .as_ref()
                .is_some_and(|recorded| recorded.agrees_with(flow));
            row.push(recorded.map_or("none".to_owned(), |recorded| recorded.to_string()));
        }
        row.push(if ok { "ok" } else { "MISMATCH" }.to_owned());
        printed.add_row(row);
        as_expected += usize::from(ok);
    }
    print_table(&printed);
    as_expected
}
