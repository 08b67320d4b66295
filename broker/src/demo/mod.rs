//! `allmende demo`: the Munich federation of the brief on loopback, onboarded
//! through the real PKI flow, running until Ctrl-C or SIGTERM; and
//! `allmende demo --story N`, the acceptance harness for story N.

mod https;
pub mod lorawan;
pub mod munich;
mod relayed;
pub mod scooter;
pub mod stories;
mod story5;
mod story7;

use crate::clock::SystemClock;
use crate::sandbox::{Sandbox, SandboxError, SandboxSpec};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Marker file that makes a directory safe to wipe on the next demo start.
pub const DEMO_MARKER: &str = ".allmende-demo";

/// The acceptance stories of the brief and the part of the product that
/// builds each.
pub const STORIES: [(u8, &str, &str); 10] = [
    (
        1,
        "SWM registers a smart-meter connector; the dataset appears in every catalog",
        "the data path",
    ),
    (
        2,
        "a TUM researcher gets DPO-approved research access and fetches consented, pseudonymised rows",
        "the access workflow",
    ),
    (
        3,
        "wrong purpose, expired grant or other dataset: denied with reasons",
        "the access workflow",
    ),
    (
        4,
        "a household withdraws consent and lists every access to its data",
        "the access workflow",
    ),
    (
        5,
        "public tier: air quality open, scooter trips only as k-anonymous aggregate",
        "the open-data tier",
    ),
    (
        6,
        "an insurer asking for smart-meter data for underwriting is refused",
        "the access workflow",
    ),
    (
        7,
        "scooter-co delivers MDS batches; a missed delivery is non-compliant",
        "live and obliged sources (MQTT, MDS, obligations)",
    ),
    (
        8,
        "the DPO queries, exports and verifies the audit log offline",
        "the audit log",
    ),
    (
        9,
        "a removed node is refused and cannot decrypt later traffic",
        "the federation directory and MLS",
    ),
    (
        10,
        "the city hub relays SWM to TUM data without being able to read it",
        "the federation directory and MLS",
    ),
];

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "`{0}` exists and is not an allmende demo directory; choose another `--dir` or remove it"
    )]
    Occupied(PathBuf),
    #[error(
        "a demo is still running in `{dir}` (pid {pid}); stop it first or choose another `--dir`"
    )]
    Running { dir: PathBuf, pid: u32 },
    #[error("demo directory `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("story {0} does not exist; stories are numbered 1 to 10")]
    NoSuchStory(u8),
}

/// Prepares a fresh demo directory, wiping an earlier demo's.
pub fn fresh_dir(dir: &Path) -> Result<(), DemoError> {
    let io = |source| DemoError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map_err(io)?.next().is_none();
        let marker = dir.join(DEMO_MARKER);
        if !empty && !marker.exists() {
            return Err(DemoError::Occupied(dir.to_path_buf()));
        }
        // Never wipe the directory of a demo that is still running.
        if let Ok(text) = std::fs::read_to_string(&marker)
            && let Some(pid) = text
                .lines()
                .find_map(|l| l.strip_prefix("pid ")?.trim().parse::<u32>().ok())
            && pid != std::process::id()
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            return Err(DemoError::Running {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        std::fs::remove_dir_all(dir).map_err(io)?;
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(
        dir.join(DEMO_MARKER),
        format!(
            "created by `allmende demo`; safe to delete when it has stopped\npid {}\n",
            std::process::id()
        ),
    )
    .map_err(io)?;
    Ok(())
}

/// Starts the Munich federation in `dir` on ports from `base_port`.
pub async fn start_munich(dir: &Path, base_port: u16) -> Result<Sandbox, DemoError> {
    fresh_dir(dir)?;
    let mut spec = SandboxSpec::munich();
    spec.base_port = Some(base_port);
    spec.postgres_smart_meter = true;
    let mut sb = Sandbox::start(spec, Some(dir.to_path_buf()), Arc::new(SystemClock)).await?;
    sb.register_demo_datasets().await?;
    lorawan::register(&sb).await?;
    // scooter-co's MDS provider endpoint: base+300 (7701 in the demo).
    let mds = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        base_port.saturating_add(300),
    );
    scooter::start(&mut sb, mds).await?;
    Ok(sb)
}

/// What to print after start: nodes and how to talk to them.
pub fn banner(sb: &Sandbox) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Allmende demo: federation `{}` with {} nodes (directory {})\n\n",
        sb.spec.federation,
        sb.nodes.len(),
        sb.root.display()
    ));
    s.push_str(&smart_meter_backend_line(sb));
    if let Some(l) = sb.lorawan.get() {
        s.push_str(&l.line);
    }
    if let Some(f) = sb.scooter.get() {
        s.push_str(&f.line);
    }
    s.push_str(&format!(
        "  {:<18} {:<16} {:<11} {:<24} {}\n",
        "NODE", "ORGANISATION", "KIND", "GRPC (mTLS)", "ADMIN (http, loopback)"
    ));
    for n in &sb.nodes {
        let kind = sb
            .spec
            .orgs
            .iter()
            .find(|o| o.name == n.organisation)
            .map(|o| o.kind.as_str())
            .unwrap_or("?");
        s.push_str(&format!(
            "  {:<18} {:<16} {:<11} {:<24} {}\n",
            n.name,
            n.organisation,
            kind,
            n.grpc_endpoint(),
            n.admin_addr
                .map(|a| format!("http://{a}/metrics"))
                .unwrap_or_else(|| "-".into())
        ));
    }
    if let Some(a) = sb.node("stadt-1").and_then(|n| n.opendata_addr) {
        s.push_str(&format!(
            "\nOpen data without a certificate (CKAN API, /catalog.jsonld; every node on its open-data port):\n\
             \x20 curl --cacert {} https://{a}/api/3/action/package_list\n",
            sb.federation.root_cert().display()
        ));
    }
    let tum_profile = sb.root.join("tum/users/alice.profile.toml");
    let tum = sb
        .node("tum-1")
        .map(|n| n.grpc_addr.to_string())
        .unwrap_or_default();
    s.push_str(&format!(
        "\nTalk to a node as a user (profiles in <dir>/<org>/users/*.profile.toml):\n\
         \x20 allmende health --profile {p}\n\
         \x20 allmende health --profile {p} --json\n\
         \nWith grpcurl (server reflection is on; mTLS needs a user certificate):\n\
         \x20 grpcurl -cacert {root} -cert {d}/tum/users/alice.crt -key {d}/tum/users/alice.key \\\n\
         \x20   {tum} allmende.v1.Federation/WhoAmI\n\
         \x20 grpcurl -cacert {root} -cert {d}/tum/users/alice.crt -key {d}/tum/users/alice.key {tum} list\n\
         \nPress Ctrl-C to stop.\n",
        p = tum_profile.display(),
        root = sb.federation.root_cert().display(),
        d = sb.root.display(),
    ));
    s
}

/// Outcome of `allmende demo --story N`.
#[derive(Debug, PartialEq, Eq)]
pub enum StoryOutcome {
    Passed,
    Failed(String),
}

/// Which connector serves the smart-meter readings, and why.
pub fn smart_meter_backend_line(sb: &Sandbox) -> String {
    match sb.smart_meter_backend() {
        "PostgreSQL" => format!(
            "smart-meter readings: served by the postgres connector from a PostgreSQL started in {}\n\n",
            sb.root.join("postgresql").display()
        ),
        _ => match sb.postgres_problem() {
            Some(why) => format!(
                "smart-meter readings: served by the files connector (PostgreSQL did not start: {why})\n\n"
            ),
            None => "smart-meter readings: served by the files connector (PostgreSQL is not installed)\n\n"
                .to_string(),
        },
    }
}

/// Runs story `n` against a fresh federation.
pub async fn run_story(n: u8) -> Result<StoryOutcome, DemoError> {
    match n {
        1 => story_1().await,
        2 | 3 | 4 | 6 => stories::run(n).await,
        5 => story5::run().await,
        7 => story7::run().await,
        8 => story_8().await,
        9 | 10 => relayed::run(n).await,
        _ => Err(DemoError::NoSuchStory(n)),
    }
}

/// The entries `node` wrote from sequence `from` on, read from its log.
fn audit_entries(
    sb: &Sandbox,
    node: &str,
    from: u64,
) -> Result<Vec<allmende_audit::Entry>, String> {
    let log = &sb
        .node(node)
        .ok_or_else(|| format!("{node} is not running"))?
        .audit;
    let mut out = Vec::new();
    for seq in from..log.status().size {
        if let Some(bytes) = log.entry_bytes(seq).map_err(|e| e.to_string())? {
            out.push(allmende_audit::Entry::decode(&bytes).map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

fn step(n: u32, text: &str) {
    println!("step {n}: {text}");
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        println!("        ok: {what}");
        Ok(())
    } else {
        Err(what.to_owned())
    }
}

async fn story_1() -> Result<StoryOutcome, DemoError> {
    println!(
        "story 1: SWM registers a connector for `smart-meter-readings`; the dataset appears in every node's federated catalog as metadata; the rows stay at SWM\n"
    );
    let sb = Sandbox::start(SandboxSpec::munich(), None, Arc::new(SystemClock)).await?;
    let result = story_1_steps(&sb).await;
    let _ = sb.shutdown().await;
    Ok(match result {
        Ok(()) => StoryOutcome::Passed,
        Err(e) => StoryOutcome::Failed(e),
    })
}

async fn story_1_steps(sb: &Sandbox) -> Result<(), String> {
    use allmende_proto::v1 as pb;
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    step(
        1,
        "SWM's data steward registers the smart-meter connector at the SWM node",
    );
    let files = allmende_connectors::sample::write_demo_data(
        &sb.root.join(crate::sandbox::SAMPLE_DATA_DIR),
        &allmende_connectors::sample::SampleSpec::default(),
    )
    .map_err(|e| fail(&e))?;
    let sample = files
        .datasets
        .iter()
        .find(|d| d.name == "smart-meter-readings")
        .ok_or("no sample smart-meter data")?;
    let desc = crate::demo::munich::smart_meter_readings();
    // Someone of another organisation may not register a source for SWM's node.
    {
        let mut p = sb.profile("tum", "alice").map_err(|e| fail(&e))?;
        p.endpoint = sb.node("swm-1").ok_or("swm-1 missing")?.grpc_endpoint();
        let ch = p.connect().await.map_err(|e| fail(&e))?;
        let r = pb::connectors_client::ConnectorsClient::new(ch)
            .register(pb::RegisterConnectorRequest {
                dataset_json: serde_json::to_string(&desc).map_err(|e| fail(&e))?,
                kind: "files".into(),
                config_json: serde_json::to_string(&sample.config).map_err(|e| fail(&e))?,
            })
            .await;
        check(
            r.as_ref()
                .is_err_and(|e| e.code() == tonic::Code::PermissionDenied),
            "a TUM researcher cannot register a connector at the SWM node",
        )?;
    }
    sb.register_dataset("swm", "steward", &desc, &sample.config)
        .await
        .map_err(|e| fail(&e))?;
    check(
        true,
        &format!("registered; the source has {} rows at SWM", sample.rows),
    )?;

    step(
        2,
        "every node's federated catalog lists the dataset as metadata",
    );
    for n in &sb.nodes {
        let mut entry = None;
        for _ in 0..100 {
            if let Ok(e) = n.catalog.get(Some("swm"), "smart-meter-readings") {
                entry = Some(e);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let e = entry.ok_or_else(|| format!("{} never listed the dataset", n.name))?;
        check(
            e.owner == "swm" && e.owner_node == "swm-1",
            &format!(
                "{}: \"{}\" owned by {} at {}",
                n.name, e.dataset.title, e.owner, e.owner_node
            ),
        )?;
    }

    step(
        3,
        "the rows stay at SWM: other nodes neither serve nor store them",
    );
    for n in sb.nodes.iter().filter(|n| n.name != "swm-1") {
        let p = sb.profile("tum", "alice").map_err(|e| fail(&e))?;
        let mut p = p;
        p.endpoint = n.grpc_endpoint();
        let ch = p.connect().await.map_err(|e| fail(&e))?;
        let r = pb::access_client::AccessClient::new(ch)
            .fetch(pb::FetchRequest {
                dataset: "smart-meter-readings".into(),
                purpose: "AcademicResearch".into(),
                ..Default::default()
            })
            .await;
        let code = match r {
            Err(e) => e.code(),
            Ok(_) => tonic::Code::Ok,
        };
        let mut stored = false;
        if let Ok(rd) = std::fs::read_dir(n.store.path()) {
            for e in rd.flatten() {
                if let Ok(b) = std::fs::read(e.path()) {
                    stored |= b.windows(9).any(|w| w == b"HH-000001");
                }
            }
        }
        check(
            code == tonic::Code::NotFound && !stored,
            &format!(
                "{}: fetch answered {code:?}, no household id in its store",
                n.name
            ),
        )?;
    }
    println!("\nstory 1 passed");
    Ok(())
}

async fn story_8() -> Result<StoryOutcome, DemoError> {
    println!(
        "story 8: the DPO queries the audit log, exports it and verifies it offline; an edited byte is detected; checkpoints are cosigned by peer nodes\n"
    );
    let mut sb = Sandbox::start(SandboxSpec::munich(), None, Arc::new(SystemClock)).await?;
    let result = story_8_steps(&mut sb).await;
    let _ = sb.shutdown().await;
    Ok(match result {
        Ok(()) => StoryOutcome::Passed,
        Err(e) => StoryOutcome::Failed(e),
    })
}

async fn audit_client(
    sb: &Sandbox,
    org: &str,
    user: &str,
) -> Result<allmende_proto::v1::audit_client::AuditClient<tonic::transport::Channel>, String> {
    let ch = stories::channel_at(sb, "swm-1", org, user).await?;
    Ok(allmende_proto::v1::audit_client::AuditClient::new(ch))
}

async fn story_8_steps(sb: &mut Sandbox) -> Result<(), String> {
    use allmende_proto::v1 as pb;
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    step(1, "a TUM researcher tries to read SWM's audit log");
    let err = audit_client(sb, "tum", "alice")
        .await?
        .query(pb::AuditQueryRequest::default())
        .await
        .err();
    check(
        err.as_ref()
            .is_some_and(|e| e.code() == tonic::Code::PermissionDenied),
        "refused: only SWM's DPO reads SWM's log",
    )?;
    if let Some(e) = err {
        println!("        reason: {}", e.message());
    }

    step(
        2,
        "SWM's DPO queries the log by requester, resource and time range",
    );
    let mut dpo = audit_client(sb, "swm", "dpo").await?;
    let now_ms = u64::try_from(sb.clock.now_unix_ms()).unwrap_or(0);
    let r = dpo
        .query(pb::AuditQueryRequest {
            organisation: "tum".into(),
            dataset: "audit-log/swm/swm-1".into(),
            from_ms: now_ms.saturating_sub(3_600_000),
            to_ms: now_ms + 3_600_000,
            limit: 100,
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e))?
        .into_inner();
    for e in &r.entries {
        println!(
            "        #{} {} by {} ({}) -> {} [{}]",
            e.sequence,
            e.action,
            e.organisation,
            e.user_pseudonym,
            e.decision,
            e.policy_ids.join(", ")
        );
    }
    check(
        r.entries
            .iter()
            .any(|e| e.decision == "deny" && e.organisation == "tum"),
        "the researcher's refused attempt is in the log, with the deciding policy",
    )?;
    check(
        r.entries
            .iter()
            .all(|e| !e.user_pseudonym.contains("alice")),
        "users appear only under keyed pseudonyms",
    )?;

    step(3, "peer nodes witness SWM's log and cosign its checkpoints");
    let swm = sb.node("swm-1").ok_or("swm-1 is not running")?;
    let peers = sb.nodes.len() - 1;
    let mut cosigned = 0;
    for _ in 0..100 {
        if let Ok(Some(c)) = swm.audit.latest_checkpoint() {
            cosigned = c.cosignatures.len();
            if cosigned >= peers {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    check(
        cosigned >= peers,
        &format!(
            "the latest checkpoint carries {cosigned} cosignatures from the {peers} peer nodes"
        ),
    )?;

    step(
        4,
        "the DPO exports the log and verifies the bundle offline with keys they trust",
    );
    let bundle = dpo
        .export(pb::AuditExportRequest::default())
        .await
        .map_err(|e| fail(&e))?
        .into_inner();
    // The DPO collected these keys out of band (`allmende audit keys` on each node).
    let mut trust = format!(
        "witness_quorum = {peers}\n[[log]]\norigin = \"{}\"\nkeys = [\"{}\"]\n",
        swm.audit.origin(),
        swm.audit.log_vkey()
    );
    for n in sb.nodes.iter().filter(|n| n.name != "swm-1") {
        trust.push_str(&format!(
            "[[witness]]\nkey = \"{}\"\n",
            n.audit.witness_vkey()
        ));
    }
    let trust = allmende_audit::TrustFile::from_toml(&trust).map_err(|e| fail(&e))?;
    let report = allmende_audit::verify_bundle(&bundle.bundle, &trust);
    check(
        report.is_ok(),
        &format!(
            "{} entries verified: inclusion, log signature and {} cosignatures",
            bundle.entries,
            report.cosignatures.len()
        ),
    )?;

    step(5, "one byte of an entry in the bundle is edited");
    let mut forged = bundle.bundle.clone();
    let pos = forged
        .windows(10)
        .position(|w| w == b"read_audit")
        .ok_or("no entry to edit")?;
    forged[pos] ^= 0x01;
    let report = allmende_audit::verify_bundle(&forged, &trust);
    check(
        !report.is_ok() && report.failed_sequences().len() == 1,
        &format!(
            "detected and named: {}",
            report
                .failures
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    )?;

    step(
        6,
        "one byte of a stored entry is edited in SWM's store while the node is down",
    );
    sb.stop_node("swm-1").await.map_err(|e| fail(&e))?;
    let cfg_path = sb.node_config_path("swm-1").ok_or("no config")?;
    let cfg = crate::config::NodeConfig::load(&cfg_path).map_err(|e| fail(&e))?;
    let victim = 1u64;
    {
        let store = crate::store::Store::open_with(
            &cfg.data_dir.join("store"),
            &crate::store::StoreOptions::default(),
            crate::audit::STORE_MIGRATIONS,
        )
        .map_err(|e| fail(&e))?;
        let entries: crate::store::RawTable<u64> = store
            .raw_table(crate::store::TableName::AuditEntries)
            .map_err(|e| fail(&e))?;
        let mut bytes = entries
            .get(&victim)
            .map_err(|e| fail(&e))?
            .ok_or("no entry 1")?;
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let mut b = crate::store::WriteBatch::new();
        b.put_raw(&entries, &victim, bytes);
        store.commit_durable(b).await.map_err(|e| fail(&e))?;
    }
    sb.start_node("swm-1").await.map_err(|e| fail(&e))?;
    let v = audit_client(sb, "swm", "dpo")
        .await?
        .verify_log(pb::VerifyLogRequest {})
        .await
        .map_err(|e| fail(&e))?
        .into_inner();
    for f in &v.findings {
        println!("        finding: {f}");
    }
    check(
        !v.ok && v.failed_sequences == vec![victim],
        &format!("the node names entry #{victim} as modified"),
    )?;
    println!("\nstory 8 passed");
    Ok(())
}
