//! A throwaway mosquitto broker for tests, the benchmark and the demo: the Debian package's
//! `mosquitto`, a generated configuration in a directory the caller owns, one listener on a free
//! loopback port, persistence on (its database in that directory), stopped when dropped. As root
//! mosquitto drops to the `mosquitto` user, so the directory is handed to that user.
//!
//! [`LocalMosquitto::stop`] stops it gracefully (it writes its persistence database) and
//! [`LocalMosquitto::restart`] starts it again on the same port with the same database: sessions
//! and the QoS 1 messages queued for them survive.
//!
//! [`LocalMosquitto::start_tls`] adds a second listener speaking MQTT over TLS
//! (`mqtts://127.0.0.1:<tls port>`) with a certificate and key the caller supplies (tests
//! generate them); both listeners belong to the same broker, so what is published on one
//! arrives on the other.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::ConnectorError;

/// Where the Debian package installs the broker.
const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// Where the Debian package `mosquitto-clients` installs the publisher.
const MOSQUITTO_PUB: &str = "/usr/bin/mosquitto_pub";

/// The publisher (`mosquitto_pub`), if installed.
pub fn find_mosquitto_pub() -> Option<PathBuf> {
    let p = PathBuf::from(MOSQUITTO_PUB);
    p.is_file().then_some(p)
}

/// The broker binary, if installed.
pub fn find_mosquitto() -> Option<PathBuf> {
    let p = PathBuf::from(MOSQUITTO);
    p.is_file().then_some(p)
}

/// The broker binary, or the error saying how to install it.
fn installed() -> Result<PathBuf, ConnectorError> {
    find_mosquitto().ok_or_else(|| {
        ConnectorError::Internal(format!(
            "mosquitto is not installed: no `{MOSQUITTO}` (install the Debian package \
             `mosquitto`; scripts/test.sh does)"
        ))
    })
}

fn failed(what: &str, reason: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Internal(format!("local mosquitto: {what}: {reason}"))
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A running broker; stopped on drop.
#[derive(Debug)]
pub struct LocalMosquitto {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// A shell waiting on a pipe from this process: when this process ends
    /// without stopping the broker (killed, even by SIGKILL), the pipe
    /// closes and the shell stops the broker, so none is left behind.
    watchdog: Option<Child>,
    /// The TLS listener's port, if any (its certificate and key lie in `dir`).
    tls_port: Option<u16>,
}

impl LocalMosquitto {
    /// Starts a broker in `dir` (created if missing). Fails with a clear message if mosquitto is
    /// not installed.
    pub fn start(dir: &Path) -> Result<Self, ConnectorError> {
        let bin = installed()?;
        std::fs::create_dir_all(dir).map_err(|e| failed("create directory", e))?;
        let mut broker = Self {
            bin,
            dir: dir.to_path_buf(),
            port: free_port()?,
            child: None,
            watchdog: None,
            tls_port: None,
        };
        broker.launch_retrying()?;
        Ok(broker)
    }

    /// Starts a broker in `dir` with a plain listener and a TLS listener presenting
    /// `cert_pem` (the server certificate chain) with `key_pem` (its private key).
    pub fn start_tls(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<Self, ConnectorError> {
        let bin = installed()?;
        std::fs::create_dir_all(dir).map_err(|e| failed("create directory", e))?;
        std::fs::write(dir.join("server.crt"), cert_pem)
            .map_err(|e| failed("write the certificate", e))?;
        std::fs::write(dir.join("server.key"), key_pem).map_err(|e| failed("write the key", e))?;
        let mut broker = Self {
            bin,
            dir: dir.to_path_buf(),
            port: free_port()?,
            child: None,
            watchdog: None,
            tls_port: Some(free_port()?),
        };
        broker.launch_retrying()?;
        Ok(broker)
    }

    fn launch_retrying(&mut self) -> Result<(), ConnectorError> {
        let broker = self;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match broker.launch() {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= 3 => return Err(e),
                // The free port may have been taken in between: try another.
                Err(_) => {
                    broker.port = free_port()?;
                    if broker.tls_port.is_some() {
                        broker.tls_port = Some(free_port()?);
                    }
                }
            }
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("mosquitto.conf")
    }

    fn launch(&mut self) -> Result<(), ConnectorError> {
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| failed("create data directory", e))?;
        let mut config = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {data}/\n\
             autosave_interval 1\n\
             max_queued_messages 1000000\n\
             max_inflight_messages 0\n\
             log_dest file {log}\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n",
            port = self.port,
            data = data.display(),
            log = self.dir.join("mosquitto.log").display(),
        );
        if let Some(tls_port) = self.tls_port {
            config.push_str(&format!(
                "listener {tls_port} 127.0.0.1\n\
                 certfile {cert}\n\
                 keyfile {key}\n",
                cert = self.dir.join("server.crt").display(),
                key = self.dir.join("server.key").display(),
            ));
        }
        std::fs::write(self.config_path(), config).map_err(|e| failed("write config", e))?;
        if running_as_root() {
            let status = Command::new("chown")
                .arg("-R")
                .arg("mosquitto:mosquitto")
                .arg(&self.dir)
                .status()
                .map_err(|e| failed("chown", e))?;
            if !status.success() {
                return Err(failed("chown to the mosquitto user", status));
            }
        }
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| failed("spawn", e))?;
        let pid = child.id();
        self.child = Some(child);
        self.watchdog = Command::new("sh")
            .arg("-c")
            .arg("read _; kill -TERM \"$0\" 2>/dev/null")
            .arg(pid.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                self.stop_watchdog();
                return Err(failed("exited at start", status));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self
                    .tls_port
                    .is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok())
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(failed("start", "no listener within 10 s"))
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker URL for an MQTT source (`mqtt://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The TLS listener's port on 127.0.0.1 (brokers made by [`LocalMosquitto::start_tls`]).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The broker URL of the TLS listener (`mqtts://127.0.0.1:<tls port>`), if any.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("mqtts://127.0.0.1:{p}"))
    }

    /// Whether the broker runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the broker gracefully (SIGTERM: it saves its persistence database) and waits.
    pub fn stop(&mut self) -> Result<(), ConnectorError> {
        self.stop_watchdog();
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = i32::try_from(child.id()).map_err(|e| failed("pid", e))?;
        // `kill -TERM`: the standard library only sends SIGKILL, which skips the save.
        let sent = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .map_err(|e| failed("kill", e))?;
        if !sent.success() {
            let _ = child.kill();
        }
        child.wait().map_err(|e| failed("wait", e))?;
        Ok(())
    }

    /// Kills the broker at once (SIGKILL: what it had not saved is lost).
    pub fn kill(&mut self) {
        self.stop_watchdog();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Ends the watchdog first, so that it cannot signal a process id the
    /// broker no longer holds.
    fn stop_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    /// Starts the broker again on the same port with the same persistence database.
    pub fn restart(&mut self) -> Result<(), ConnectorError> {
        self.stop()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                // The port may linger a moment after the old process exits.
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Publishes each of `lines` as one message to `topic` with QoS `qos` through one
    /// `mosquitto_pub -l` (Debian package `mosquitto-clients`); no line may hold a line break.
    pub fn publish_lines(
        &self,
        topic: &str,
        lines: &[&str],
        qos: u8,
    ) -> Result<(), ConnectorError> {
        let mut payload = Vec::new();
        for l in lines {
            if l.contains(['\n', '\r']) {
                return Err(failed("mosquitto_pub", "a message holds a line break"));
            }
            payload.extend_from_slice(l.as_bytes());
            payload.push(b'\n');
        }
        self.run_pub(topic, qos, "-l", &payload)
    }

    /// Publishes `payload` to `topic` with QoS `qos` through `mosquitto_pub` (Debian package
    /// `mosquitto-clients`).
    pub fn publish(&self, topic: &str, payload: &[u8], qos: u8) -> Result<(), ConnectorError> {
        self.run_pub(topic, qos, "-s", payload)
    }

    /// Runs `mosquitto_pub` with `mode` (`-s`: stdin is one message, `-l`: one per line).
    fn run_pub(
        &self,
        topic: &str,
        qos: u8,
        mode: &str,
        payload: &[u8],
    ) -> Result<(), ConnectorError> {
        let mut child = Command::new(MOSQUITTO_PUB)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-V", "5"])
            .args(["-q", &qos.to_string(), "-t", topic, mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed("spawn mosquitto_pub", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(payload)
                .map_err(|e| failed("write to mosquitto_pub", e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| failed("mosquitto_pub", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(failed(
                "mosquitto_pub",
                format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ))
        }
    }
}

impl Drop for LocalMosquitto {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "local mosquitto did not stop");
        }
    }
}

fn free_port() -> Result<u16, ConnectorError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| failed("find a free port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| failed("find a free port", e))
}
