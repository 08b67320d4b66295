//! The puller of one `mds` source: while the dataset is served, every UTC hour from the
//! source's `start` that has ended (by the node's clock) is taken from the provider, part by
//! part, validated whole, and then, in one atomic durable write, either imported (the trips as
//! served rows, the other parts, the hour's marker and the `Accepted` delivery record) or
//! rejected (the batch kept for inspection and the `Rejected` delivery record with the
//! reasons). An hour the provider has not processed, or that failed to arrive, is recorded
//! `Unavailable` and asked again with backoff (doubling from `retry_secs` up to an hour), as is
//! a rejected hour (the company may correct it). An accepted hour is never taken again, across
//! restarts (its marker is in the store).
//!
//! Every accepted or rejected attempt is audited before it is written, as the node itself:
//! action `mds_delivery`, resource `<organisation>/<dataset>@<hour>`, allow or deny, and as
//! labels the outcome, the counts per part or the reasons — metadata only: the reasons name
//! records and fields, never a device id or a position.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allmende_audit::{Decision, EntryKind};
use allmende_connectors::ConnectorError;
use allmende_connectors::SourceRoots;
use allmende_connectors::mds::client::{FetchError, Fetched, MdsClient, tls_config};
use allmende_connectors::mds::validate::check_batch;
use allmende_connectors::mds::{HOUR_MS, MdsConfig, Part, format_hour, trip_row};
use serde_json::Value;

use crate::audit::{AuditLog, Draft};
use crate::clock::SharedClock;
use crate::mds::batches::{DatasetBatches, MdsBatches};
use crate::obligations::{Deliveries, Delivery, Outcome};
use crate::pki::Subject;
use crate::store::WriteBatch;
use crate::tls::ClientIdentity;

/// The audit action of an accepted or rejected delivery.
pub const DELIVERY_ACTION: &str = "mds_delivery";
/// How often the puller looks at the node's clock for newly ended hours.
const TICK: Duration = Duration::from_millis(250);
/// Hours waiting at once at most (a `start` far in the past is worked through in turns).
const MAX_PENDING: usize = 24 * 31;
/// Hours attempted per turn at most.
const PER_TURN: usize = 24;
/// The longest wait before an hour is asked again.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Reasons written to the audit entry at most (all are in the delivery record).
const AUDITED_REASONS: usize = 5;

/// What every puller of a node shares.
#[derive(Debug)]
pub struct Pulls {
    pub batches: MdsBatches,
    pub deliveries: Deliveries,
    pub audit: AuditLog,
    pub clock: SharedClock,
    pub roots: SourceRoots,
    /// This node's organisation and name (the audit entries' actor).
    pub organisation: String,
    pub node: String,
    /// The node's certificate and key, presented to providers that ask for one.
    pub identity: Option<ClientIdentity>,
    /// Serialises imports (sequence numbers are handed out under it).
    pub write: tokio::sync::Mutex<()>,
}

/// A running puller; stopped when dropped.
#[derive(Debug)]
pub struct PullHandle {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PullHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What became of one attempt.
enum Attempt {
    Accepted,
    Again,
}

/// Starts pulling `config` into `dataset`'s batches.
pub fn spawn(
    pulls: Arc<Pulls>,
    config: &MdsConfig,
    dataset: &str,
) -> Result<PullHandle, ConnectorError> {
    let endpoint = config.check(&pulls.roots)?;
    let token = config.token(&pulls.roots)?;
    let ca = config.ca_pem(&pulls.roots)?;
    let identity = match (&pulls.identity, config.client_certificate) {
        (Some(i), true) => Some((i.chain_pem.as_str(), i.key_pem.as_str())),
        _ => None,
    };
    let client = MdsClient::new(
        endpoint,
        tls_config(&ca, identity)?,
        token,
        config.max_response_bytes,
        Duration::from_secs(config.timeout_secs),
    );
    let puller = Puller {
        batches: pulls.batches.dataset(dataset),
        pulls,
        client,
        config: config.clone(),
        start: config.start_ms()?,
    };
    Ok(PullHandle {
        task: tokio::spawn(puller.run()),
    })
}

struct Puller {
    pulls: Arc<Pulls>,
    batches: DatasetBatches,
    client: MdsClient,
    config: MdsConfig,
    start: i64,
}

/// When an hour is asked next, and how long it waited last.
struct Retry {
    due: Instant,
    delay: Duration,
}

impl Puller {
    async fn run(self) {
        let mut next_hour = self.start;
        let mut pending: BTreeMap<i64, Retry> = BTreeMap::new();
        let first_delay = Duration::from_secs(self.config.retry_secs);
        loop {
            let now = self.pulls.clock.now_unix_ms();
            while next_hour.saturating_add(HOUR_MS) <= now && pending.len() < MAX_PENDING {
                match self.batches.imported(next_hour) {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        pending.insert(
                            next_hour,
                            Retry {
                                due: Instant::now(),
                                delay: first_delay,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "mds batches unreadable");
                        break;
                    }
                }
                next_hour += HOUR_MS;
            }
            let due: Vec<i64> = pending
                .iter()
                .filter(|(_, r)| r.due <= Instant::now())
                .map(|(h, _)| *h)
                .take(PER_TURN)
                .collect();
            for hour in due {
                match self.attempt(hour).await {
                    Attempt::Accepted => {
                        pending.remove(&hour);
                    }
                    Attempt::Again => {
                        if let Some(r) = pending.get_mut(&hour) {
                            r.due = Instant::now() + r.delay;
                            r.delay = (r.delay * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
            tokio::time::sleep(TICK).await;
        }
    }

    fn delivery(&self, hour: i64, at_ms: i64, outcome: Outcome) -> Delivery {
        Delivery {
            organisation: self.config.organisation.clone(),
            dataset: self.config.obligation_dataset.clone(),
            window_start_ms: hour,
            at_ms,
            outcome,
        }
    }

    /// Takes the hour starting at `hour`.
    async fn attempt(&self, hour: i64) -> Attempt {
        let label = format_hour(hour).unwrap_or_default();
        let at = self.pulls.clock.now_unix_ms();
        let mut answers: Vec<(Part, Value)> = Vec::new();
        for part in &self.config.parts {
            let path = match part.path_and_query(hour) {
                Ok(p) => p,
                Err(e) => return self.unavailable(hour, at, e.to_string()).await,
            };
            match self.client.get(&path).await {
                Ok(Fetched::Body(v)) => answers.push((*part, v)),
                Ok(Fetched::NotReady { status }) => {
                    let why = format!(
                        "{}: the provider has not processed the hour yet (http {status})",
                        part.as_str()
                    );
                    return self.unavailable(hour, at, why).await;
                }
                Err(e) => {
                    let why = format!("{}: {e}", part.as_str());
                    if matches!(e, FetchError::TooLarge(_)) {
                        tracing::warn!(dataset = %self.config.obligation_dataset, hour = %label, error = %e, "mds answer refused");
                    }
                    return self.unavailable(hour, at, why).await;
                }
            }
        }
        match check_batch(hour, &answers, self.config.provider_id.as_deref()) {
            Ok(checked) => {
                let counts = checked.counts(&self.config.parts);
                let mut labels = vec!["outcome:accepted".to_owned()];
                labels.extend(counts.iter().map(|(p, n)| format!("{p}:{n}")));
                if !self.audited(hour, Decision::Allow, labels).await {
                    return Attempt::Again;
                }
                let rows = checked
                    .trips
                    .iter()
                    .map(|t| trip_row(t, &self.config.vehicle_type))
                    .collect();
                let _w = self.pulls.write.lock().await;
                // An hour accepted meanwhile (another attempt, a restart) is not imported twice.
                if matches!(self.batches.imported(hour), Ok(Some(_))) {
                    return Attempt::Accepted;
                }
                let mut b = WriteBatch::new();
                if let Err(e) =
                    self.batches
                        .stage_accepted(&mut b, hour, at, &checked, rows, counts.clone())
                {
                    tracing::warn!(hour = %label, error = %e, "mds batch not imported");
                    return Attempt::Again;
                }
                if self
                    .commit(b, hour, at, Outcome::Accepted { rows: counts }, "imported")
                    .await
                {
                    Attempt::Accepted
                } else {
                    Attempt::Again
                }
            }
            Err(reasons) => {
                let mut labels = vec!["outcome:rejected".to_owned()];
                labels.extend(
                    reasons
                        .iter()
                        .take(AUDITED_REASONS)
                        .map(|r| format!("reason:{r}")),
                );
                if !self.audited(hour, Decision::Deny, labels).await {
                    return Attempt::Again;
                }
                let kept_as = self.batches.kept_id(&label, at);
                let raw: Vec<(String, Value)> = answers
                    .into_iter()
                    .map(|(p, v)| (p.as_str().to_owned(), v))
                    .collect();
                let _w = self.pulls.write.lock().await;
                let mut b = WriteBatch::new();
                match self.batches.stage_rejected(
                    &mut b,
                    kept_as.clone(),
                    hour,
                    at,
                    reasons.clone(),
                    &raw,
                ) {
                    Ok(()) => {
                        let outcome = Outcome::Rejected {
                            reasons,
                            kept_as: Some(kept_as),
                        };
                        self.commit(b, hour, at, outcome, "rejected").await;
                    }
                    Err(e) => {
                        tracing::warn!(hour = %label, error = %e, "mds batch not rejected");
                    }
                }
                Attempt::Again
            }
        }
    }

    /// Stages the delivery of `outcome` into `b` (which holds the hour's rows or its kept
    /// batch) and commits both in one durable write; `false` if nothing was written.
    async fn commit(
        &self,
        mut b: WriteBatch,
        hour: i64,
        at: i64,
        outcome: Outcome,
        what: &str,
    ) -> bool {
        let label = format_hour(hour).unwrap_or_default();
        let written = match self
            .pulls
            .deliveries
            .stage(&mut b, &self.delivery(hour, at, outcome))
        {
            Ok(()) => self
                .pulls
                .batches
                .store()
                .commit_durable(b)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match written {
            Ok(()) => {
                tracing::info!(dataset = %self.config.obligation_dataset, hour = %label, "mds batch {what}");
                true
            }
            Err(e) => {
                tracing::warn!(hour = %label, error = %e, "mds batch not {what}");
                false
            }
        }
    }

    /// Records an hour that could not be taken; it is asked again later.
    async fn unavailable(&self, hour: i64, at: i64, reason: String) -> Attempt {
        let reason = crate::text::shown(&reason, 200);
        let d = self.delivery(hour, at, Outcome::Unavailable { reason });
        if let Err(e) = self.pulls.deliveries.record(&d).await {
            tracing::warn!(error = %e, "unavailable mds hour not recorded");
        }
        Attempt::Again
    }

    /// Audits an accepted or rejected attempt as the node; `false` if it could not be written
    /// (then nothing is written and the hour is asked again).
    async fn audited(&self, hour: i64, decision: Decision, labels: Vec<String>) -> bool {
        let resource = format!(
            "{}/{}@{}",
            self.config.organisation,
            self.config.obligation_dataset,
            format_hour(hour).unwrap_or_default()
        );
        let mut d = Draft::acting(
            &self.pulls.organisation,
            &Subject::Node(self.pulls.node.clone()),
            DELIVERY_ACTION,
            &resource,
            EntryKind::Decision,
        );
        d.decision = Some(decision);
        d.policy_ids = labels;
        match self.pulls.audit.append(d).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "mds delivery not audited; not recorded");
                false
            }
        }
    }
}
