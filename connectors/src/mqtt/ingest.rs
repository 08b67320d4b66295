//! The MQTT subscriber of an MQTT source.
//!
//! One MQTT 5 connection (rumqttc) per source: clean start off with a session expiry, so the
//! broker keeps the subscription and queues QoS 1 messages while the node is away; QoS 1
//! subscription; manual acknowledgements. Two tasks:
//! - the *poll* task drives the connection: it hands every received message to the writer,
//!   subscribes after every connect, and after an error (the broker restarted, the network
//!   broke) waits with exponential backoff before the next poll reconnects;
//! - the *writer* takes every message that has arrived (up to [`MAX_GROUP`]), maps them to rows,
//!   appends them to the buffer in one durable write, and only then acknowledges all of them
//!   (group commit). A message that cannot become a row is skipped (counted, logged without
//!   its payload) and acknowledged too, so it is not delivered again and again.
//!
//! A message larger than `max_payload_bytes` never reaches the node: the limit is sent to the
//! broker as the MQTT 5 maximum packet size, and a broker that must not send a larger packet
//! drops it; a broker that sends one anyway makes the client drop the connection before reading
//! it (bounded memory), and the session resumes on the next connect.
//!
//! The broker may keep at most [`RECEIVE_MAXIMUM`] messages unacknowledged (MQTT 5 receive
//! maximum), which bounds what the writer holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::buffer::UplinkBuffer;
use super::uplink::UplinkMapping;
use super::{MqttConfig, Skip};
use crate::confine::SourceRoots;
use crate::error::ConnectorError;

/// Most messages committed in one durable write.
pub const MAX_GROUP: usize = 1024;
/// Most unacknowledged QoS 1 messages the broker may have in flight to the node.
pub const RECEIVE_MAXIMUM: u16 = 1024;
/// First reconnect delay; doubled after each failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the retention sweep runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Delay before a failed durable write is tried again.
const RETRY_WRITE: Duration = Duration::from_secs(1);

/// Counts what became of received messages (a node exports them as metrics).
pub trait IngestObserver: Send + Sync {
    /// `n` messages had `outcome`: `stored`, `duplicate`, or a [`Skip::code`].
    fn count(&self, outcome: &'static str, n: u64);
}

/// Counters in memory (tests, benchmarks).
#[derive(Debug, Default)]
pub struct IngestCounters {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl IngestCounters {
    /// Messages counted with `outcome`.
    pub fn get(&self, outcome: &str) -> u64 {
        self.counts
            .lock()
            .map(|c| c.get(outcome).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl IngestObserver for IngestCounters {
    fn count(&self, outcome: &'static str, n: u64) {
        if n > 0
            && let Ok(mut c) = self.counts.lock()
        {
            *c.entry(outcome).or_insert(0) += n;
        }
    }
}

/// The state of the connection.
#[derive(Debug, Default)]
pub struct IngestStatus {
    connected: AtomicBool,
    connects: AtomicU64,
    acked: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl IngestStatus {
    /// Whether the client is connected now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Successful connects so far.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Acquire)
    }

    /// Messages acknowledged so far (each after its durable write).
    pub fn acknowledged(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// The last connection error.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// The running subscriber of one source; dropping it stops it (messages not yet acknowledged
/// are delivered again by the broker on the next connect).
#[derive(Debug)]
pub struct IngestHandle {
    tasks: Vec<JoinHandle<()>>,
    status: Arc<IngestStatus>,
}

impl IngestHandle {
    /// The connection's state.
    pub fn status(&self) -> &Arc<IngestStatus> {
        &self.status
    }
}

impl Drop for IngestHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Builds the client options of `config` (host checked against `roots`, secrets read through
/// them).
fn options(config: &MqttConfig, roots: &SourceRoots) -> Result<MqttOptions, ConnectorError> {
    let endpoint = config.check(roots)?;
    let mut o = MqttOptions::new(
        config.client_id.clone(),
        endpoint.host.clone(),
        endpoint.port,
    );
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(config.session_expiry_secs))
        .set_manual_acks(true)
        .set_max_packet_size(Some(config.max_payload_bytes))
        .set_receive_maximum(Some(RECEIVE_MAXIMUM))
        .set_request_channel_capacity(usize::from(RECEIVE_MAXIMUM) * 2 + 64)
        .set_connection_timeout(10);
    if let Some((user, password)) = config.credentials(roots)? {
        o.set_credentials(user, password);
    }
    if let Some(tls) = config.tls(roots)? {
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    Ok(o)
}

/// Starts the subscriber of `config` writing into `buffer` (`label`: the dataset, for logs).
/// Must run inside a tokio runtime. Also starts the retention sweep.
pub fn spawn_ingest(
    config: &MqttConfig,
    roots: &SourceRoots,
    buffer: Arc<dyn UplinkBuffer>,
    observer: Arc<dyn IngestObserver>,
    label: &str,
) -> Result<IngestHandle, ConnectorError> {
    let rt = tokio::runtime::Handle::try_current().map_err(|_| {
        ConnectorError::Internal("the mqtt subscriber needs a tokio runtime".into())
    })?;
    let options = options(config, roots)?;
    let fields = config
        .schema
        .as_ref()
        .ok_or_else(|| ConnectorError::Config("an mqtt source needs its declared schema".into()))?;
    let mapping = UplinkMapping::new(fields, config.sequence_column()?, &config.columns)?;
    let (client, eventloop) = AsyncClient::new(options, usize::from(RECEIVE_MAXIMUM) * 2 + 64);
    let status = Arc::new(IngestStatus::default());
    // Unbounded, yet bounded by the broker's receive maximum per connection: the poll task
    // never waits on the writer, so it keeps reading acknowledgements' replies and pings.
    let (tx, rx) = mpsc::unbounded_channel();
    let poll = rt.spawn(poll_loop(
        eventloop,
        client.clone(),
        tx,
        status.clone(),
        config.topic.clone(),
        label.to_owned(),
    ));
    let writer = rt.spawn(write_loop(
        rx,
        client,
        buffer.clone(),
        mapping,
        observer,
        status.clone(),
        label.to_owned(),
    ));
    let sweep = rt.spawn(sweep_loop(buffer, config.retention(), label.to_owned()));
    Ok(IngestHandle {
        tasks: vec![poll, writer, sweep],
        status,
    })
}

async fn poll_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    tx: mpsc::UnboundedSender<Publish>,
    status: Arc<IngestStatus>,
    topic: String,
    label: String,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                status.connected.store(true, Ordering::Release);
                status.connects.fetch_add(1, Ordering::AcqRel);
                backoff = MIN_BACKOFF;
                tracing::info!(dataset = %label, session_present = ack.session_present, "mqtt connected");
                if let Err(e) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                    tracing::warn!(dataset = %label, error = %e, "mqtt subscribe not sent");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack.return_codes.iter().any(|c| {
                    !matches!(
                        c,
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    )
                });
                if refused {
                    tracing::warn!(dataset = %label, codes = ?ack.return_codes, "mqtt subscription refused");
                    set_error(&status, "the broker refused the subscription".into());
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                status.connected.store(false, Ordering::Release);
                set_error(
                    &status,
                    format!("the broker disconnected: {:?}", d.reason_code),
                );
            }
            Ok(_) => {}
            Err(e) => {
                status.connected.store(false, Ordering::Release);
                tracing::warn!(dataset = %label, error = %e, retry_in_ms = backoff.as_millis() as u64, "mqtt connection lost");
                set_error(&status, e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn set_error(status: &IngestStatus, e: String) {
    if let Ok(mut last) = status.last_error.lock() {
        *last = Some(e);
    }
}

async fn write_loop(
    mut rx: mpsc::UnboundedReceiver<Publish>,
    client: AsyncClient,
    buffer: Arc<dyn UplinkBuffer>,
    mapping: UplinkMapping,
    observer: Arc<dyn IngestObserver>,
    status: Arc<IngestStatus>,
    label: String,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut rows = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        rows.clear();
        for p in &group {
            match mapping.parse(&p.payload) {
                Ok(u) => rows.push(u),
                Err(skip) => skipped(&*observer, &label, &skip, p.payload.len()),
            }
        }
        if !rows.is_empty() {
            loop {
                match buffer.append(&rows).await {
                    Ok(a) => {
                        observer.count("stored", a.stored);
                        observer.count("duplicate", a.duplicates);
                        break;
                    }
                    Err(e) => {
                        // Nothing acknowledged: the messages stay the broker's until stored.
                        tracing::warn!(dataset = %label, error = %e, "uplinks not stored; retrying");
                        tokio::time::sleep(RETRY_WRITE).await;
                    }
                }
            }
        }
        for p in group.drain(..) {
            if p.qos == QoS::AtMostOnce {
                continue;
            }
            match client.ack(&p).await {
                Ok(()) => {
                    status.acked.fetch_add(1, Ordering::AcqRel);
                }
                // The client is gone (the source is stopping): the broker delivers it again.
                Err(e) => tracing::debug!(dataset = %label, error = %e, "ack not sent"),
            }
        }
    }
}

/// Counts and logs a skipped message, never its payload.
fn skipped(observer: &dyn IngestObserver, label: &str, skip: &Skip, bytes: usize) {
    observer.count(skip.code(), 1);
    tracing::warn!(
        dataset = %label,
        reason = skip.code(),
        column = skip.column().unwrap_or("-"),
        bytes,
        "uplink skipped"
    );
}

async fn sweep_loop(buffer: Arc<dyn UplinkBuffer>, retention: Duration, label: String) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match buffer.sweep(retention).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(dataset = %label, removed = n, "uplinks past retention removed")
            }
            Err(e) => tracing::warn!(dataset = %label, error = %e, "retention sweep failed"),
        }
    }
}
