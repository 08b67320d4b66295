//! Helpers for tests that spawn the real `allmende` binary.

#![allow(dead_code, reason = "each test binary uses a subset")]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_allmende"))
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn allmende")
}

/// A base port such that base..base+5 and base+100..base+105 are free now.
pub fn free_base_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let seed = (std::process::id() as u16).wrapping_mul(7).wrapping_add(
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .wrapping_mul(1009),
    );
    for i in 0..400u16 {
        // Below Linux's ephemeral range (32768 and up): a port there can be
        // taken by any outgoing connection between this check and the bind.
        let base = 10_000 + (seed.wrapping_add(i.wrapping_mul(211)) % 22_000);
        // gRPC, admin and open-data ports (base, +100, +200) and the
        // demo's MDS provider endpoint (+300).
        let ok = (0..5)
            .chain(100..105)
            .chain(200..205)
            .chain(300..301)
            .all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if ok {
            return base;
        }
    }
    panic!("no free port range");
}

/// A spawned binary that is killed when the test ends, also on a failed
/// assertion, so no node outlives its test.
pub struct Spawned(pub Child);

impl std::ops::Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Like [`spawn_until`], in working directory `cwd`.
pub fn spawn_until_in(cwd: &Path, args: &[&str], ready: &str) -> (Spawned, Vec<String>) {
    spawn_inner(Some(cwd), args, ready, &[])
}

/// Spawns the binary and waits until a stdout line contains `ready`;
/// returns the child and every stdout line read so far.
pub fn spawn_until(args: &[&str], ready: &str, env: &[(&str, &str)]) -> (Spawned, Vec<String>) {
    spawn_inner(None, args, ready, env)
}

fn spawn_inner(
    cwd: Option<&Path>,
    args: &[&str],
    ready: &str,
    env: &[(&str, &str)],
) -> (Spawned, Vec<String>) {
    let mut cmd = bin();
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    cmd.args(args).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_command_until(cmd, ready)
}

/// Starts `allmende demo` in `cwd` on a free base port and waits for its
/// banner. Another process can take one of its ports between the check and
/// the bind; the demo then exits naming the address, and it is started
/// again on another base. Returns the child and the banner lines.
pub fn spawn_demo_in(cwd: &Path) -> (Spawned, Vec<String>) {
    let mut last = String::new();
    for _ in 0..5 {
        let base = free_base_port().to_string();
        let mut cmd = bin();
        cmd.current_dir(cwd)
            .args(["demo", "--base-port", &base])
            .stderr(Stdio::piped());
        match try_spawn_command_until(cmd, "Press Ctrl-C") {
            Ok(started) => return started,
            Err(e) if e.contains("Address already in use") => last = e,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the demo found no free ports in five tries: {last}");
}

/// Spawns `cmd` (the binary, or a wrapper that execs it, such as
/// `ip netns exec`) and waits until a stdout line contains `ready`; stderr
/// goes where `cmd` sends it.
pub fn spawn_command_until(cmd: Command, ready: &str) -> (Spawned, Vec<String>) {
    try_spawn_command_until(cmd, ready).unwrap_or_else(|e| panic!("{e}"))
}

/// [`spawn_command_until`], the failure (with the child's stderr, when
/// piped) returned instead of raised.
pub fn try_spawn_command_until(
    mut cmd: Command,
    ready: &str,
) -> Result<(Spawned, Vec<String>), String> {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn allmende");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let done = l.contains(ready);
                lines.push(l);
                if done {
                    // Keep draining in the background so the child never blocks on stdout.
                    std::thread::spawn(move || while rx.recv().is_ok() {});
                    return Ok((Spawned(child), lines));
                }
            }
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("wait");
                return Err(format!(
                    "allmende {args:?} never printed `{ready}`; stdout so far: {lines:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
}

pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits for the child to exit, up to `secs`.
pub fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("allmende did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}
