//! The demo's LoRaWAN environment sensors (`lorawan-environment`, SWM,
//! public space): the recorded The Things Stack v3 uplinks
//! (`allmende_connectors::mqtt::recorded`) reach SWM's node through a local
//! mosquitto when `mosquitto` and `mosquitto_pub` are installed — SWM's
//! steward registers an `mqtt` source subscribed on it, and the recording is
//! replayed into it —, else the same rows are served by the files connector
//! from a JSON-lines file of the recording. [`Lorawan::line`] says which.

use std::time::{Duration, Instant};

use allmende_connectors::mqtt::recorded;
use allmende_connectors::mqtt::{LocalMosquitto, MqttConfig, find_mosquitto, find_mosquitto_pub};
use allmende_connectors::{FileConnectorConfig, FileFormat};

use crate::sandbox::{SAMPLE_DATA_DIR, Sandbox, SandboxError};

/// The dataset.
pub const DATASET: &str = "lorawan-environment";
/// How long the demo waits for the subscriber to connect and for the
/// replayed uplinks to be buffered.
const WAIT: Duration = Duration::from_secs(10);

/// Where the sensors' uplinks come from.
#[derive(Debug)]
pub struct Lorawan {
    /// The local broker, while the demo runs.
    broker: Option<LocalMosquitto>,
    /// What the banner says.
    pub line: String,
}

fn demo(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Demo(format!("lorawan sensors: {e}"))
}

/// How the demo feeds the sensors' dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Through a local mosquitto when installed, else from the recording.
    Auto,
    /// From the recording (the files connector), even with mosquitto.
    Recording,
}

/// Registers the sensors at SWM's node (through mosquitto when installed,
/// else from the recording) and keeps what feeds them in the sandbox.
pub async fn register(sb: &Sandbox) -> Result<(), SandboxError> {
    register_with(sb, Feed::Auto).await
}

/// Registers the sensors at SWM's node, fed as `feed` says.
pub async fn register_with(sb: &Sandbox, feed: Feed) -> Result<(), SandboxError> {
    let desc = super::munich::lorawan_environment();
    let through_broker = if feed == Feed::Recording {
        Err("asked for the recording".to_string())
    } else if find_mosquitto().is_some() && find_mosquitto_pub().is_some() {
        match through_mosquitto(sb, &desc).await {
            Ok(l) => Ok(l),
            Err(e) => {
                tracing::warn!(error = %e, "lorawan sensors not through mosquitto");
                Err(format!("mosquitto did not serve them: {e}"))
            }
        }
    } else {
        Err("mosquitto is not installed".to_string())
    };
    let lorawan = match through_broker {
        Ok(l) => l,
        Err(why) => from_recording(sb, &desc, &why).await?,
    };
    // Set once per sandbox; a second call keeps the first.
    let _ = sb.lorawan.set(lorawan);
    Ok(())
}

async fn through_mosquitto(
    sb: &Sandbox,
    desc: &crate::catalog::DatasetDescription,
) -> Result<Lorawan, SandboxError> {
    let dir = sb.root.join("mosquitto");
    let broker = tokio::task::spawn_blocking(move || LocalMosquitto::start(&dir))
        .await
        .map_err(demo)?
        .map_err(demo)?;
    let config = MqttConfig::new(&broker.url(), recorded::TOPIC_FILTER, "swm-1-lorawan");
    let json = serde_json::to_string(&config).map_err(demo)?;
    sb.register_source("swm", "steward", desc, "mqtt", &json)
        .await?;
    let node = sb.node("swm-1").ok_or_else(|| demo("no node `swm-1`"))?;
    let deadline = Instant::now() + WAIT;
    while node.registry.mqtt_connected(DATASET) != Some(true) {
        if Instant::now() > deadline {
            return Err(demo("the subscriber did not connect"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The subscription follows the connect.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (broker, replayed) = tokio::task::spawn_blocking(move || {
        let n = recorded::replay(&broker);
        (broker, n)
    })
    .await
    .map_err(demo)?;
    let replayed = replayed.map_err(demo)?;
    // Wait (bounded) until the node has buffered them.
    let expected = format!("{replayed} uplinks buffered");
    let mut buffered = String::new();
    while Instant::now() < deadline {
        if let Ok(served) = node.registry.served(DATASET)
            && let Ok(h) = served.connector.health().await
        {
            buffered = h.detail;
            if buffered == expected {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Lorawan {
        line: format!(
            "lorawan-environment (swm): {replayed} recorded LoRaWAN uplinks (The Things Stack v3) \
             replayed through a local mosquitto on {} (in {}), subscribed by the mqtt connector; \
             {buffered}\n\n",
            broker.url(),
            sb.root.join("mosquitto").display(),
        ),
        broker: Some(broker),
    })
}

async fn from_recording(
    sb: &Sandbox,
    desc: &crate::catalog::DatasetDescription,
    why: &str,
) -> Result<Lorawan, SandboxError> {
    let dir = sb.root.join(SAMPLE_DATA_DIR);
    std::fs::create_dir_all(&dir).map_err(demo)?;
    let path = dir.join("lorawan-uplinks.jsonl");
    let rows = recorded::write_rows(&path).map_err(demo)?;
    let mut config = FileConnectorConfig::new(&path, FileFormat::Jsonl);
    config.cursor_column = Some(recorded::SEQUENCE_COLUMN.into());
    let json = serde_json::to_string(&config).map_err(demo)?;
    sb.register_source("swm", "steward", desc, "files", &json)
        .await?;
    Ok(Lorawan {
        line: format!(
            "lorawan-environment (swm): {rows} recorded LoRaWAN uplinks served by the files \
             connector from the recorded uplink file ({why})\n\n"
        ),
        broker: None,
    })
}

impl Lorawan {
    /// Whether the uplinks come through a local mosquitto.
    pub fn through_mosquitto(&self) -> bool {
        self.broker.is_some()
    }
}
