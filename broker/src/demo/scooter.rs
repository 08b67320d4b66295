//! scooter-co's MDS feed to the city, as the demo and story 7 run it:
//! scooter-co exports one MDS 2.0 batch file per ended UTC hour and serves
//! them on its provider endpoint (`[mds_provider]`: mTLS + bearer token,
//! each answer decided and audited at scooter-co); the city's steward
//! registers an `mds` source that pulls each ended hour into
//! `mds-scooter-trips`; the city's operator records the obligation the
//! deliveries are judged against.
//!
//! In the main demo ([`start`]) time is real: the last [`PAST_HOURS`]
//! hours are exported at start, and a background task exports each hour
//! after it ends, for as long as the demo runs. The trips are generated
//! (`allmende_connectors::mds::sample`), the same for the same hour.

use super::stories::channel_at;
use crate::config::{MdsProviderConfig, NodeConfig};
use crate::sandbox::{SAMPLE_DATA_DIR, Sandbox, SandboxError};
use allmende_connectors::mds::sample::{PROVIDER_ID, batch_file_name, hourly_batches};
use allmende_connectors::mds::{HOUR_MS, MdsConfig, format_hour, trip_fields};
use allmende_connectors::sample::SampleSpec;
use allmende_proto::v1 as pb;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The city's node, which pulls.
pub const CITY_NODE: &str = "stadt-1";
/// scooter-co's node, which serves the provider endpoint.
pub const SCOOTER_NODE: &str = "scooter-co-1";
/// The dataset the obligation names.
pub const OBLIGED: &str = "scooter-trips";
/// The city's dataset of the delivered trips.
pub const DELIVERED: &str = "mds-scooter-trips";
/// The grace period after each hour.
pub const GRACE_SECS: u64 = 15 * 60;
/// Trips per generated day.
const TRIPS_PER_DAY: usize = 4000;
/// The demo's bearer token (a file at both ends, never shown).
const TOKEN: &str = "demo-scooter-co-mds-token-not-secret";
/// Hours exported before the main demo starts.
pub const PAST_HOURS: i64 = 6;
/// How often the main demo's export task looks for an ended hour.
const EXPORT_EVERY: Duration = Duration::from_secs(20);
/// How long the main demo waits for the first pulls.
const FIRST_PULLS: Duration = Duration::from_secs(30);

/// Where scooter-co's batch files are.
pub fn batch_dir(sb: &Sandbox) -> PathBuf {
    sb.root.join(SAMPLE_DATA_DIR).join("mds")
}

/// The city's description of the delivered trips: the city holds them
/// (personal: device ids), read for the public interest.
pub fn delivered_description() -> crate::catalog::DatasetDescription {
    let mut d = super::munich::scooter_trips();
    d.id = DELIVERED.into();
    d.title = "E-Scooter-Fahrten (MDS-Lieferungen an die Stadt)".into();
    d.schema.fields = trip_fields();
    d.allowed_purposes = [crate::policy::Purpose::PublicInterest].into();
    d.anonymisation_required = false;
    d
}

/// Writes scooter-co's batch file of `hour` (its trips generated with the
/// rest of the hour's UTC day) into `dir`; returns its number of trips.
pub fn write_batch(dir: &Path, hour: i64) -> Result<usize, String> {
    let day = hour.div_euclid(86_400_000) * 86_400;
    let batches = hourly_batches(
        &SampleSpec {
            start: day,
            days: 1,
            trips_per_day: TRIPS_PER_DAY,
            ..SampleSpec::default()
        },
        PROVIDER_ID,
    );
    let rfc = crate::timefmt::format_unix_ms(hour);
    let batch = batches
        .get(&hour)
        .ok_or_else(|| format!("no generated batch for {rfc}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = batch_file_name(hour).map_err(|e| e.to_string())?;
    let bytes = serde_json::to_vec(batch).map_err(|e| e.to_string())?;
    // Written under a temporary name and renamed: the provider never serves
    // half a file.
    let partial = dir.join(format!(".{name}.partial"));
    std::fs::write(&partial, bytes).map_err(|e| format!("{name}: {e}"))?;
    std::fs::rename(&partial, dir.join(&name)).map_err(|e| format!("{name}: {e}"))?;
    Ok(batch["trips"].as_array().map_or(0, Vec::len))
}

/// Turns on scooter-co's provider endpoint on `listen` (its node restarts
/// with `[mds_provider]`): the token file and the federation root the city
/// verifies the endpoint with are written into the sample data directory.
/// Returns the endpoint's address.
pub async fn serve_provider(sb: &mut Sandbox, listen: SocketAddr) -> Result<SocketAddr, String> {
    let data = sb.root.join(SAMPLE_DATA_DIR);
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    std::fs::write(data.join("mds.token"), format!("{TOKEN}\n")).map_err(|e| e.to_string())?;
    std::fs::copy(sb.federation.root_cert(), data.join("federation-root.pem"))
        .map_err(|e| e.to_string())?;
    sb.stop_node(SCOOTER_NODE)
        .await
        .map_err(|e| e.to_string())?;
    let cfg = sb
        .node_config_path(SCOOTER_NODE)
        .ok_or("scooter-co's node has no config")?;
    let mut text = std::fs::read_to_string(&cfg).map_err(|e| e.to_string())?;
    text.push_str(&NodeConfig::render_mds_provider(&MdsProviderConfig {
        listen,
        dir: batch_dir(sb),
        token_file: data.join("mds.token"),
        recipients: vec!["stadt".into()],
        dataset: OBLIGED.into(),
    }));
    std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
    sb.start_node(SCOOTER_NODE)
        .await
        .map_err(|e| e.to_string())?
        .mds_provider_addr
        .ok_or_else(|| "scooter-co's provider endpoint did not start".to_string())
}

/// The city's steward registers the `mds` source pulling from `provider`
/// every ended hour from `first` on, asking again for an hour not ready
/// after `retry_secs`.
pub async fn register_source(
    sb: &Sandbox,
    provider: SocketAddr,
    first: i64,
    retry_secs: u64,
) -> Result<(), String> {
    let data = sb.root.join(SAMPLE_DATA_DIR);
    let mut source = MdsConfig::new(
        &format!("https://{provider}"),
        "scooter-co",
        OBLIGED,
        data.join("mds.token"),
        data.join("federation-root.pem"),
        &format_hour(first).map_err(|e| e.to_string())?,
    );
    source.provider_id = Some(PROVIDER_ID.into());
    source.retry_secs = retry_secs;
    let config = serde_json::to_string(&source).map_err(|e| e.to_string())?;
    sb.register_source("stadt", "steward", &delivered_description(), "mds", &config)
        .await
        .map(|_| ())
        .map_err(|e| format!("registering the mds source: {e}"))
}

/// The city's operator records the obligation: scooter-co delivers
/// [`OBLIGED`] per UTC hour from `first`, [`GRACE_SECS`] grace.
pub async fn record_obligation(sb: &Sandbox, first: i64) -> Result<pb::ObligationInfo, String> {
    let mut ops = pb::obligations_client::ObligationsClient::new(
        channel_at(sb, CITY_NODE, "stadt", "operator").await?,
    );
    ops.record(pb::RecordObligationRequest {
        organisation: "scooter-co".into(),
        dataset: OBLIGED.into(),
        cadence: "hour".into(),
        grace_seconds: GRACE_SECS,
        from: crate::timefmt::format_unix_ms(first),
        until: String::new(),
    })
    .await
    .map(tonic::Response::into_inner)
    .map_err(|e| format!("recording the obligation: {}", e.message()))
}

/// The main demo's feed: the export task runs while this is kept (in the
/// sandbox); [`Feed::line`] is what the banner says.
#[derive(Debug)]
pub struct Feed {
    exporter: tokio::task::JoinHandle<()>,
    /// What the banner says.
    pub line: String,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.exporter.abort();
    }
}

fn demo(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Demo(format!("scooter-co's mds feed: {e}"))
}

/// Writes every ended hour from `first` whose batch file is missing;
/// returns how many it wrote.
fn export_ended(dir: &Path, first: i64, now_ms: i64) -> Result<usize, String> {
    let mut written = 0;
    let mut hour = first;
    while hour + HOUR_MS <= now_ms {
        let name = batch_file_name(hour).map_err(|e| e.to_string())?;
        if !dir.join(name).exists() {
            write_batch(dir, hour)?;
            written += 1;
        }
        hour += HOUR_MS;
    }
    Ok(written)
}

/// The main demo's MDS feed: the last [`PAST_HOURS`] hours exported,
/// scooter-co's provider endpoint on `listen`, the obligation recorded from
/// the current hour on (the hours before are a backlog no obligation
/// judges: their deadlines passed before the demo started), the
/// city's `mds` source registered and its first pulls awaited; a task goes
/// on exporting each hour after it ends. Kept in the sandbox.
pub async fn start(sb: &mut Sandbox, listen: SocketAddr) -> Result<(), SandboxError> {
    let now = sb.clock.now_unix_ms();
    let first = now.div_euclid(HOUR_MS) * HOUR_MS - PAST_HOURS * HOUR_MS;
    let dir = batch_dir(sb);
    export_ended(&dir, first, now).map_err(demo)?;
    let provider = serve_provider(sb, listen).await.map_err(demo)?;
    // The obligation runs from the current hour: the hours before it are
    // the backlog the city imports, judged by no obligation.
    let current = first + PAST_HOURS * HOUR_MS;
    let obligation = record_obligation(sb, current).await.map_err(demo)?;
    register_source(sb, provider, first, 30)
        .await
        .map_err(demo)?;
    let delivered = wait_for_deliveries(sb, first, PAST_HOURS).await;

    let clock = sb.clock.clone();
    let task_dir = dir.clone();
    let exporter = tokio::spawn(async move {
        loop {
            tokio::time::sleep(EXPORT_EVERY).await;
            let (dir, now) = (task_dir.clone(), clock.now_unix_ms());
            match tokio::task::spawn_blocking(move || export_ended(&dir, first, now)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(hours = n, "scooter-co exported mds batches"),
                Ok(Err(e)) => tracing::warn!(error = %e, "scooter-co's mds export failed"),
                Err(e) => tracing::warn!(error = %e, "scooter-co's mds export task failed"),
            }
        }
    });
    let id = obligation.current.map(|v| v.id).unwrap_or_default();
    let line = format!(
        "scooter-trips (scooter-co → stadt): MDS 2.0 provider endpoint https://{provider} \
         (mTLS + bearer token), one batch per UTC hour exported in {} — the last {PAST_HOURS} \
         hours now, each next hour when it ends; the city's node pulls every ended hour into \
         `{DELIVERED}` ({delivered} of {PAST_HOURS} delivered so far); obligation `{id}` judges \
         each hour from {} on ({} min grace):\n\
         \x20 allmende obligations status --profile {}\n\n",
        dir.display(),
        crate::timefmt::format_unix_ms(current),
        GRACE_SECS / 60,
        sb.root.join("stadt/users/operator.profile.toml").display(),
    );
    let _ = sb.scooter.set(Feed { exporter, line });
    Ok(())
}

/// Waits (bounded) until the city accepted `hours` hours from `first`;
/// returns how many it accepted.
async fn wait_for_deliveries(sb: &Sandbox, first: i64, hours: i64) -> usize {
    use crate::obligations::Outcome;
    let Some(node) = sb.node(CITY_NODE) else {
        return 0;
    };
    let deliveries = node.obligations.deliveries();
    let accepted = || {
        (0..hours)
            .filter(|i| {
                deliveries
                    .window("scooter-co", OBLIGED, first + i * HOUR_MS)
                    .is_ok_and(|attempts| {
                        attempts
                            .iter()
                            .any(|d| matches!(d.outcome, Outcome::Accepted { .. }))
                    })
            })
            .count()
    };
    let deadline = std::time::Instant::now() + FIRST_PULLS;
    loop {
        let n = accepted();
        if usize::try_from(hours).is_ok_and(|h| n >= h) || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    #[test]
    fn a_batch_is_the_same_for_the_same_hour_and_only_ended_hours_are_exported() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let hour = 1_764_547_200_000; // 2025-12-01T00
        let n = write_batch(a.path(), hour + 9 * HOUR_MS).unwrap();
        assert!(n > 0);
        write_batch(b.path(), hour + 9 * HOUR_MS).unwrap();
        let name = batch_file_name(hour + 9 * HOUR_MS).unwrap();
        assert_eq!(
            std::fs::read(a.path().join(&name)).unwrap(),
            std::fs::read(b.path().join(&name)).unwrap()
        );
        // Three hours ended, the fourth is running: three files, once.
        let c = tempfile::tempdir().unwrap();
        let now = hour + 3 * HOUR_MS + 5;
        assert_eq!(export_ended(c.path(), hour, now).unwrap(), 3);
        assert_eq!(export_ended(c.path(), hour, now).unwrap(), 0);
        assert!(
            !c.path()
                .join(batch_file_name(hour + 3 * HOUR_MS).unwrap())
                .exists()
        );
        assert_eq!(std::fs::read_dir(c.path()).unwrap().count(), 3);
    }
}
