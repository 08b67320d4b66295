//! The federation across Linux network namespaces: the city, SWM and TUM
//! each run a real `allmende node` process in a namespace of their own,
//! linked by veth pairs to a bridge in a "switch" namespace (10.77.0.0/24),
//! each listening on its namespace address with a certificate naming it.
//! Users run the CLI inside their organisation's namespace. Checked: the
//! catalog reaches TUM from SWM, a TUM researcher fetches rows SWM granted,
//! every node follows the city's directory over the network, and removing
//! TUM at the city node makes its next fetch at SWM fail within one refresh.
//! In a second layout TUM's namespace reaches only the city: the direct
//! fetch fails to connect, the fetch relayed through the city hub returns
//! the rows, and the hub's store holds none of them.
//!
//! Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) and `ip` from iproute2;
//! without them the test prints why and passes (`skip_reason`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The nodes' gRPC port; each namespace has its own port space.
const PORT: u16 = 7401;
/// The admin listener's port, on each namespace's loopback.
const ADMIN_PORT: u16 = 7501;
/// Seconds between directory fetches at SWM and TUM.
const REFRESH_SECS: u64 = 1;

/// One node of the federation: organisation, kind, display name, its
/// namespace's last address byte, its users (id, role).
struct Member {
    org: &'static str,
    kind: &'static str,
    display: &'static str,
    host: u8,
    users: &'static [(&'static str, &'static str)],
}

const MEMBERS: [Member; 3] = [
    Member {
        org: "stadt",
        kind: "city",
        display: "Landeshauptstadt München",
        host: 1,
        users: &[("operator", "operator")],
    },
    Member {
        org: "swm",
        kind: "utility",
        display: "Stadtwerke München",
        host: 2,
        users: &[("steward", "steward")],
    },
    Member {
        org: "tum",
        kind: "university",
        display: "Technische Universität München",
        host: 3,
        users: &[("alice", "researcher")],
    },
];

fn addr(host: u8) -> String {
    format!("10.77.0.{host}")
}

fn endpoint(host: u8) -> String {
    format!("https://{}:{PORT}", addr(host))
}

/// Why the test cannot build namespaces here, or `None` when it can:
/// `euid` is the effective user id, `probe` tries `ip netns add` (called
/// only as root).
fn skip_reason(euid: u32, probe: impl FnOnce() -> Result<(), String>) -> Option<String> {
    if euid != 0 {
        return Some(format!(
            "skipped: network namespaces need root (running as uid {euid})"
        ));
    }
    probe()
        .err()
        .map(|e| format!("skipped: `ip netns add` failed (no CAP_SYS_ADMIN?): {e}"))
}

#[test]
fn skip_reason_names_root_and_a_failed_netns_add() {
    let never = || -> Result<(), String> { panic!("probed although not root") };
    let r = skip_reason(1000, never).unwrap();
    assert!(r.contains("need root") && r.contains("uid 1000"), "{r}");
    let r = skip_reason(0, || Err("Operation not permitted".into())).unwrap();
    assert!(
        r.contains("`ip netns add` failed") && r.contains("Operation not permitted"),
        "{r}"
    );
    assert_eq!(skip_reason(0, || Ok(())), None);
}

/// Runs `ip ARGS`; an error carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces of one run; deleting a namespace deletes the veth ends
/// and the bridge in it. Dropped after the node processes
/// ([`Federation`]), also when an assertion fails.
struct Namespaces {
    prefix: String,
    made: Vec<String>,
}

impl Namespaces {
    /// Namespaces named `alm<pid><tag><short>`, unique per run and test.
    fn new(tag: &str) -> Self {
        Self {
            prefix: format!("alm{}{tag}", std::process::id()),
            made: Vec::new(),
        }
    }

    fn name(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// Adds namespace `<prefix><short>` with its loopback up.
    fn add(&mut self, short: &str) -> Result<String, String> {
        let ns = self.name(short);
        // A namespace left by a killed run with the same pid.
        let _ = ip(&["netns", "del", &ns]);
        ip(&["netns", "add", &ns])?;
        self.made.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("could not delete namespace {ns}: {e}");
            }
        }
    }
}

/// How a node's namespace is linked to the switch.
#[derive(Clone, Copy, PartialEq)]
enum Link {
    /// The whole /24: every node reachable.
    Lan,
    /// A /32 with a route to the city only (`hub`): every other node is
    /// unreachable from this namespace (the layout of a relayed fetch).
    HubOnly { hub: u8 },
}

/// Links namespace `ns` to the bridge in `sw` through a veth pair
/// (`p<host>` on the bridge, `eth0` in `ns`) with address 10.77.0.<host>.
fn link(sw: &str, ns: &str, host: u8, how: Link) -> Result<(), String> {
    let port = format!("p{host}");
    ip(&[
        "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ])?;
    ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"])?;
    match how {
        Link::Lan => ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", addr(host)),
            "dev",
            "eth0",
        ])?,
        Link::HubOnly { .. } => ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/32", addr(host)),
            "dev",
            "eth0",
        ])?,
    }
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    if let Link::HubOnly { hub } = how {
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            &format!("{}/32", addr(hub)),
            "dev",
            "eth0",
        ])?;
    }
    Ok(())
}

/// The Prometheus text of the node in namespace `ns`, from its admin
/// listener on that namespace's loopback (bash's `/dev/tcp`, no client
/// needed).
fn metrics_in(ns: &str) -> String {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "bash", "-c"])
        .arg(format!(
            "exec 3<>/dev/tcp/127.0.0.1/{ADMIN_PORT} && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
        ))
        .stdin(Stdio::null())
        .output()
        .expect("spawn ip netns exec bash");
    assert!(o.status.success(), "metrics in {ns}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The value of the metric line starting with `series` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs the CLI inside namespace `ns`.
fn cli_in(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_allmende")])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn ip netns exec")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs the CLI in `ns`, expecting success; returns the JSON it printed.
fn ok_json(ns: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let o = cli_in(ns, &all);
    assert!(o.status.success(), "{args:?} in {ns}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&o)))
}

/// The offline PKI steps, run in the test's own namespace (files only).
fn pki(args: &[&str]) {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", text(&o));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Onboards the three organisations with the CLI, certificates naming each
/// node's namespace address; every node gets its own copy of the root and
/// the membership (so directory changes reach it only over the network).
/// Returns each node's config.
fn onboard(dir: &Path, sources: &Path) -> Vec<PathBuf> {
    let fed = dir.join("federation");
    pki(&[
        "pki",
        "init-federation",
        "--federation",
        "munich",
        "--dir",
        s(&fed),
    ]);
    for m in &MEMBERS {
        let org_dir = dir.join(m.org).join("ca");
        pki(&[
            "pki",
            "org-request",
            "--federation",
            "munich",
            "--org",
            m.org,
            "--dir",
            s(&org_dir),
        ]);
        pki(&[
            "pki",
            "org-sign",
            "--federation-dir",
            s(&fed),
            "--csr",
            s(&org_dir.join("org-ca.csr")),
            "--kind",
            m.kind,
            "--display-name",
            m.display,
            "--out",
            s(&org_dir.join("org-ca.crt")),
        ]);
    }
    let mut configs = Vec::new();
    for m in &MEMBERS {
        let org_dir = dir.join(m.org).join("ca");
        let node = format!("{}-1", m.org);
        let nd = dir.join(m.org).join("node");
        pki(&[
            "pki",
            "issue-node",
            "--org-dir",
            s(&org_dir),
            "--name",
            &node,
            "--ip",
            &addr(m.host),
            "--out",
            s(&nd),
        ]);
        for (id, role) in m.users {
            pki(&[
                "pki",
                "issue-user",
                "--org-dir",
                s(&org_dir),
                "--id",
                id,
                "--role",
                role,
                "--out",
                s(&dir.join(m.org).join("users")),
            ]);
        }
        for f in ["root-ca.crt", "membership.json"] {
            std::fs::copy(fed.join(f), nd.join(f)).unwrap();
        }
        let mut cfg = format!(
            "version = 1\n[node]\nname = \"{node}\"\ndata_dir = \"data\"\n[listen]\ngrpc = \"{}:{PORT}\"\nadmin = \"127.0.0.1:{ADMIN_PORT}\"\n[tls]\nroot_ca = \"root-ca.crt\"\ncert = \"node.crt\"\nkey = \"node.key\"\nmembership = \"membership.json\"\n[store]\ncache_mb = 8\n[sources]\nroots = [\"{}\"]\n",
            addr(m.host),
            s(sources)
        );
        for peer in MEMBERS.iter().filter(|p| p.org != m.org) {
            cfg.push_str(&format!(
                "\n[[peers]]\nname = \"{}-1\"\nendpoint = \"{}\"\n",
                peer.org,
                endpoint(peer.host)
            ));
        }
        if m.kind == "city" {
            cfg.push_str(&format!(
                "\n[federation]\nroot_dir = \"{}\"\nendpoint = \"{}\"\n",
                s(&fed),
                endpoint(m.host)
            ));
        } else {
            // The node records its own directory entry at the city
            // (`[federation] endpoint`): what the hub relays to.
            cfg.push_str(&format!(
                "\n[federation]\ndirectory = \"{}\"\ndirectory_refresh_secs = {REFRESH_SECS}\nendpoint = \"{}\"\n",
                endpoint(MEMBERS[0].host),
                endpoint(m.host)
            ));
        }
        let path = nd.join("node.toml");
        std::fs::write(&path, cfg).unwrap();
        configs.push(path);
    }
    configs
}

/// A user's client profile aimed at the node at `host`.
fn profile(dir: &Path, org: &str, user: &str, host: u8) -> String {
    let u = dir.join(org).join("users");
    let p = dir.join(format!("{org}-{user}-at-{host}.profile.toml"));
    std::fs::write(
        &p,
        format!(
            "endpoint = \"{}\"\nroot_ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            endpoint(host),
            s(&dir.join("federation/root-ca.crt")),
            s(&u.join(format!("{user}.crt"))),
            s(&u.join(format!("{user}.key")))
        ),
    )
    .unwrap();
    s(&p).to_owned()
}

/// SWM's dataset: internal, research allowed, rows with a marker value.
const REGISTRATION: &str = r#"
[dataset]
id = "netzlast"
title = "Netzlast Umspannwerke"
description = "Stündliche Last der Umspannwerke im Stromnetz der Stadtwerke."
language = "de"
licence = "dl-de-by-2.0"
themes = ["ENER"]
keywords = ["Netzlast"]
access_rights = "restricted"
legal_basis = "NotApplicable"
classification = "internal"
contains_personal_data = false
public_space_origin = false
allowed_purposes = ["AcademicResearch"]
anonymisation_required = false
update_frequency = "hourly"

[dataset.contact_point]
name = "Stadtwerke München, Netze"
email = "netze@swm.example"

[dataset.schema]
identifier_columns = []

[[dataset.schema.fields]]
name = "station"
type = "string"
nullable = false

[[dataset.schema.fields]]
name = "timestamp"
type = "timestamp"
nullable = false

[[dataset.schema.fields]]
name = "load_mw"
type = "float64"
nullable = true
"#;

/// SWM's steward registers `netzlast` at SWM's node, from `swm_ns`.
fn register_netzlast(fed: &Federation, swm_ns: &str, steward: &str) {
    let reg = fed.path().join("netzlast.toml");
    ok_json(
        swm_ns,
        &[
            "connector",
            "register",
            "--dataset",
            "netzlast",
            "--config",
            s(&reg),
            "--profile",
            steward,
        ],
    );
}

/// Alice requests `netzlast` for research from the namespace `from` with
/// her profile aimed at SWM's node; SWM's steward approves in `swm_ns`.
/// Returns the grant's id.
fn research_grant(from: &str, swm_ns: &str, alice_at_swm: &str, steward: &str) -> String {
    let req = ok_json(
        from,
        &[
            "access",
            "request",
            "--dataset",
            "netzlast",
            "--purpose",
            "AcademicResearch",
            "--days",
            "30",
            "--justification",
            "Lastprognose",
            "--profile",
            alice_at_swm,
        ],
    );
    let req_id = req["id"].as_str().unwrap().to_owned();
    let approved = ok_json(
        swm_ns,
        &["access", "approve", &req_id, "--profile", steward],
    );
    approved["grant"]["id"].as_str().unwrap().to_owned()
}

/// Alice's fetch of `netzlast` under `grant` from the namespace `ns` into
/// `out`, at the node her `profile` names, relayed to the owner node
/// `through` (`ORG/NODE`) when given.
fn fetch_in(ns: &str, grant: &str, out: &Path, profile: &str, through: Option<&str>) -> Output {
    let mut args = vec![
        "fetch",
        "netzlast",
        "--purpose",
        "AcademicResearch",
        "--grant",
        grant,
        "--out",
        s(out),
        "--profile",
        profile,
    ];
    if let Some(owner) = through {
        args.extend(["--through-hub", owner]);
    }
    cli_in(ns, &args)
}

/// `out` holds SWM's rows (both marker values).
fn assert_rows(out: &Path) {
    let rows = std::fs::read_to_string(out).unwrap();
    assert!(
        rows.contains("UW-Nord-7731") && rows.contains("38.25"),
        "{rows}"
    );
}

/// Retries `f` every 100 ms until it returns `Some`, up to `secs`.
fn until<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running federation of one test: its nodes, files and namespaces,
/// torn down in this order (fields drop in declaration order).
struct Federation {
    _nodes: Vec<Spawned>,
    dir: tempfile::TempDir,
    /// Namespace of the city, SWM, TUM (`MEMBERS`' order).
    ns: Vec<String>,
    nss: Namespaces,
}

impl Federation {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A user's profile aimed at the node at `host`.
    fn profile(&self, org: &str, user: &str, host: u8) -> String {
        profile(self.path(), org, user, host)
    }
}

/// Builds the namespaces (`tag` keeps two tests of one process apart),
/// links TUM's as `tum`, onboards and starts the three nodes; `None` when
/// namespaces cannot be made here (the reason printed).
fn start(tag: &str, tum: Link) -> Option<Federation> {
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    let mut nss = Namespaces::new(tag);
    let mut sw = None;
    if let Some(why) = skip_reason(euid, || {
        sw = Some(nss.add("sw")?);
        Ok(())
    }) {
        eprintln!("netns: {why}");
        println!("netns: {why}");
        return None;
    }
    let sw = sw.unwrap();
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]).unwrap();
    ip(&["-n", &sw, "link", "set", "br0", "up"]).unwrap();
    let mut ns = Vec::new();
    for m in &MEMBERS {
        let n = nss.add(m.org).unwrap();
        let how = if m.org == "tum" { tum } else { Link::Lan };
        link(&sw, &n, m.host, how).unwrap();
        ns.push(n);
    }
    println!("netns: namespaces {}", nss.made.join(", "));

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sources = d.join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    let csv = sources.join("netzlast.csv");
    std::fs::write(
        &csv,
        "station,timestamp,load_mw\nUW-Nord-7731,2025-03-03T10:00:00Z,41.5\nUW-Sued-2,2025-03-03T10:00:00Z,38.25\n",
    )
    .unwrap();
    std::fs::write(
        d.join("netzlast.toml"),
        format!(
            "{REGISTRATION}\n[connector]\npath = \"{}\"\nformat = \"csv\"\n",
            s(&csv)
        ),
    )
    .unwrap();
    let configs = onboard(d, &sources);

    // Each node a real process in its namespace, on its namespace address.
    let mut nodes = Vec::new();
    for ((cfg, n), m) in configs.iter().zip(&ns).zip(&MEMBERS) {
        let log = std::fs::File::create(cfg.with_file_name("node.log")).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", n, env!("CARGO_BIN_EXE_allmende")])
            .args(["node", "run", "--config", s(cfg)])
            .stdin(Stdio::null())
            .stderr(log);
        let (child, lines) = spawn_command_until(cmd, "listening");
        let banner = lines.join("\n");
        assert!(
            banner.contains(&format!("grpc={}", endpoint(m.host))),
            "{banner}"
        );
        nodes.push(child);
    }
    Some(Federation {
        _nodes: nodes,
        dir,
        ns,
        nss,
    })
}

#[test]
fn federation_across_network_namespaces() {
    let Some(fed) = start("d", Link::Lan) else {
        return;
    };
    let d = fed.path();
    let (city_ns, swm_ns, tum_ns) = (&fed.ns[0], &fed.ns[1], &fed.ns[2]);
    let swm_membership = std::fs::read(d.join("swm/node/membership.json")).unwrap();
    let operator = fed.profile("stadt", "operator", 1);
    let steward = fed.profile("swm", "steward", 2);
    let alice_home = fed.profile("tum", "alice", 3);
    let alice_at_swm = fed.profile("tum", "alice", 2);

    // SWM registers its dataset; its catalog entry reaches TUM's node.
    register_netzlast(&fed, swm_ns, &steward);
    let entry = until(20, || {
        let v = ok_json(tum_ns, &["catalog", "search", "--profile", &alice_home]);
        v["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["dataset"] == "netzlast")
            .cloned()
    })
    .expect("SWM's entry never reached TUM's node");
    assert_eq!(entry["owner"], "swm", "{entry}");

    // Alice, in TUM's namespace, asks SWM's node; SWM's steward approves.
    let grant = research_grant(tum_ns, swm_ns, &alice_at_swm, &steward);
    let out = d.join("rows.csv");
    let fetch = |out: &Path| fetch_in(tum_ns, &grant, out, &alice_at_swm, None);
    let o = fetch(&out);
    assert!(o.status.success(), "fetch: {}", text(&o));
    assert_rows(&out);

    // The city removes TUM; SWM takes the new directory from the city's
    // node over the network (its own membership file stays as it was) and
    // refuses TUM within one refresh.
    let before = ok_json(swm_ns, &["federation", "show", "--profile", &steward])["version"]
        .as_u64()
        .unwrap();
    let removed = ok_json(
        city_ns,
        &[
            "federation",
            "remove",
            "--organisation",
            "tum",
            "--reason",
            "left the federation",
            "--profile",
            &operator,
        ],
    );
    let version = removed["version"].as_u64().unwrap();
    assert!(version > before, "{removed}");
    let t0 = Instant::now();
    let shown = until(10, || {
        let v = ok_json(swm_ns, &["federation", "show", "--profile", &steward]);
        (v["version"].as_u64() == Some(version)).then_some(v)
    })
    .expect("SWM never took the city's new directory");
    let took = t0.elapsed();
    assert!(
        !shown["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["org"] == "tum"),
        "{shown}"
    );
    let refused_series =
        "allmende_tls_handshakes_refused_total{node=\"swm-1\",reason=\"not_a_member_ca\"}";
    let refused = fetch(&d.join("after.csv"));
    assert!(
        refused.status.code() == Some(4) && !refused.status.success(),
        "TUM's fetch at SWM after its removal: {}",
        text(&refused)
    );
    // Refused in SWM's TLS verifier, TUM's CA being no longer a member
    // (TUM's node is refused there too, so the count is not alice's alone).
    assert!(
        metric(&metrics_in(swm_ns), refused_series) >= 1.0,
        "no handshake refused as a non-member's at SWM"
    );
    assert_eq!(
        std::fs::read(d.join("swm/node/membership.json")).unwrap(),
        swm_membership,
        "SWM's membership file changed: the directory must come over the network"
    );
    // One refresh, plus the time the CLI takes to ask.
    assert!(
        took < Duration::from_secs(REFRESH_SECS + 4),
        "removal took {took:?} to reach SWM"
    );
    println!(
        "netns: removal refused at SWM after {took:?} in {}: {}",
        fed.nss.made.join(", "),
        String::from_utf8_lossy(&refused.stderr).trim()
    );
}

/// Story 10's layout: TUM's namespace has a route to the city's address
/// only. TUM's researcher reaches the city's node and TUM's, but a direct
/// call from TUM's namespace to SWM's node fails to connect; her fetch
/// relayed by TUM's node through the city hub returns SWM's rows, and no
/// row value is in any file of the hub's store.
#[test]
fn tum_reaches_only_the_city_hub() {
    let Some(fed) = start("h", Link::HubOnly { hub: 1 }) else {
        return;
    };
    let d = fed.path();
    let (city_ns, swm_ns, tum_ns) = (&fed.ns[0], &fed.ns[1], &fed.ns[2]);
    let operator = fed.profile("stadt", "operator", 1);
    let steward = fed.profile("swm", "steward", 2);
    let alice_at_city = fed.profile("tum", "alice", 1);
    let alice_home = fed.profile("tum", "alice", 3);
    let alice_at_swm = fed.profile("tum", "alice", 2);
    let v = ok_json(tum_ns, &["health", "--profile", &alice_at_city]);
    assert_eq!(v["node"], "stadt-1", "{v}");
    let v = ok_json(tum_ns, &["health", "--profile", &alice_home]);
    assert_eq!(v["node"], "tum-1", "{v}");
    let o = cli_in(tum_ns, &["health", "--profile", &alice_at_swm]);
    assert_eq!(
        o.status.code(),
        Some(4),
        "direct call reached SWM: {}",
        text(&o)
    );

    // The city lists itself; SWM's and TUM's nodes record their entries at
    // the city over the network (`[federation] endpoint`) and publish an
    // MLS key package. Wait until the city's directory and SWM's copy of
    // it (fetched every refresh) list all three, with the key packages.
    let listed = |ns: &str, profile: &str| {
        let v = ok_json(ns, &["federation", "show", "--profile", profile]);
        let nodes = v["nodes"].as_array()?.clone();
        let at = |name: &str, host: u8| {
            nodes
                .iter()
                .find(|n| n["node"] == name && n["endpoint"] == endpoint(host).as_str())
        };
        let with_kp = |name: &str, host: u8| {
            at(name, host)
                .is_some_and(|n| n["mls_key_package"].as_str().is_some_and(|k| !k.is_empty()))
        };
        (at("stadt-1", 1).is_some() && with_kp("swm-1", 2) && with_kp("tum-1", 3)).then_some(())
    };
    until(30, || listed(city_ns, &operator))
        .expect("the city's directory never listed its node and SWM's and TUM's with key packages");
    until(10, || listed(swm_ns, &steward)).expect("SWM never took the city's directory");

    // SWM registers its dataset. Alice files her request from a network
    // that reaches SWM (the city's namespace here); SWM's steward approves.
    register_netzlast(&fed, swm_ns, &steward);
    let grant = research_grant(city_ns, swm_ns, &alice_at_swm, &steward);
    let fetch =
        |out: &Path, profile: &str, through| fetch_in(tum_ns, &grant, out, profile, through);

    // From TUM's namespace: the direct fetch cannot connect, the relayed
    // one returns the rows.
    let o = fetch(&d.join("direct.csv"), &alice_at_swm, None);
    assert_eq!(o.status.code(), Some(4), "direct fetch: {}", text(&o));
    let out = d.join("relayed.csv");
    let o = fetch(&out, &alice_home, Some("swm/swm-1"));
    assert!(o.status.success(), "relayed fetch: {}", text(&o));
    assert_rows(&out);

    // The hub relayed sealed frames: no row value in its store's files.
    let marker = b"UW-Nord-7731";
    let mut files = vec![d.join("stadt/node/data")];
    let mut seen = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            seen += 1;
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker),
                "a row value in the hub's store: {}",
                p.display()
            );
        }
    }
    assert!(seen > 0, "the hub's store has no files");
    println!(
        "netns: hub-only layout in {}: TUM reaches the city, not SWM; relayed fetch returned the rows",
        fed.nss.made.join(", ")
    );
}
