//! The federated catalog across real nodes: an entry registered at swm-1
//! reaches every node's replica through change notification; updates and
//! removals follow; forged listings (wrong owner organisation, bad signature,
//! another key) are refused while a genuine one from the same peer is taken;
//! search filters work over gRPC and the CLI; the DCAT-AP.de export of one
//! entry and of the whole federated catalog (`Catalog.Export`, Turtle and
//! JSON-LD) passes the vendored SHACL shapes (pyshacl, offline), both formats
//! give the same graph, and hostile titles and descriptions round-trip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::catalog::{
    CatalogEntry, CatalogError, DatasetDescription, NodeSigner, PeerListing, SignedPayload,
};
use allmende::cli::catalog_cmd::{self, CatalogCmd};
use allmende::config::PeerConfig;
use allmende::demo::munich as ds;
use allmende::sandbox::Sandbox;
use allmende::tls::TlsMaterial;
use allmende_e2e::{connect_with, material, munich};
use allmende_proto::v1 as pb;
use pb::catalog_client::CatalogClient;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Well below the 30 s pull interval: an entry that arrives within this
/// came through a change notification.
const NOTIFY_DEADLINE: Duration = Duration::from_secs(10);

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < NOTIFY_DEADLINE,
            "timed out after {NOTIFY_DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client(
    sb: &Sandbox,
    org: &str,
    user: &str,
    node: &str,
) -> CatalogClient<tonic::transport::Channel> {
    let p = sb.profile(org, user).unwrap();
    let endpoint = sb.node(node).unwrap().grpc_endpoint();
    CatalogClient::new(connect_with(&endpoint, &material(&p)).await.unwrap())
}

fn profile_path(sb: &Sandbox, org: &str, user: &str) -> PathBuf {
    sb.root
        .join(org)
        .join("users")
        .join(format!("{user}.profile.toml"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_swm_entry_reaches_every_replica_and_follows_changes() {
    let sb = munich().await;
    let swm = sb.node("swm-1").unwrap();
    let id = "smart-meter-readings";
    let published = swm
        .catalog
        .upsert_local(ds::smart_meter_readings())
        .await
        .unwrap();
    assert_eq!(published.owner, "swm");
    assert_eq!(published.owner_node, "swm-1");
    assert_eq!(published.publisher_name, "Stadtwerke München");
    for n in sb.nodes.iter().filter(|n| n.name != "swm-1") {
        eventually(&format!("{id} at {}", n.name), || {
            n.catalog.get(Some("swm"), id).is_ok()
        })
        .await;
        // Exactly what swm signed.
        assert_eq!(n.catalog.get(Some("swm"), id).unwrap(), published);
        assert_eq!(n.catalog.peer_version("swm", "swm-1"), Some(1));
    }

    // A TUM researcher finds it at tum-1, from tum-1's replica.
    let mut c = client(&sb, "tum", "alice", "tum-1").await;
    let found = c
        .search(pb::SearchCatalogRequest {
            query: "Stromzähler".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.total, 1);
    let e = &found.entries[0];
    assert_eq!((e.dataset.as_str(), e.owner.as_str()), (id, "swm"));
    assert!(e.replica);
    assert_eq!(e.subject_column, "household_id");
    assert_eq!(e.classification, "personal");
    // At its owner it is not a replica.
    let own = client(&sb, "swm", "steward", "swm-1")
        .await
        .get(pb::GetCatalogEntryRequest {
            dataset: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert!(!own.replica);

    // A change follows.
    let mut changed = ds::smart_meter_readings();
    changed.title = "Smart-Meter-Viertelstundenwerte".into();
    let v2 = swm.catalog.upsert_local(changed).await.unwrap();
    assert_eq!(v2.version, 2);
    for n in sb.nodes.iter().filter(|n| n.name != "swm-1") {
        eventually(&format!("the new title at {}", n.name), || {
            n.catalog
                .get(Some("swm"), id)
                .is_ok_and(|e| e.dataset.title == "Smart-Meter-Viertelstundenwerte")
        })
        .await;
    }
    // And a removal.
    assert!(swm.catalog.remove_local(id).await.unwrap());
    for n in &sb.nodes {
        eventually(&format!("the removal at {}", n.name), || {
            matches!(
                n.catalog.get(Some("swm"), id),
                Err(CatalogError::NotFound(_))
            )
        })
        .await;
    }
    sb.shutdown().await.unwrap();
}

/// A catalog peer under the test's control, speaking as a real node
/// certificate of `stadt` (`stadt-2`).
#[derive(Clone, Default)]
struct FakePeer {
    listing: Arc<Mutex<pb::ListCatalogResponse>>,
    lists: Arc<Mutex<usize>>,
}

#[tonic::async_trait]
impl pb::catalog_server::Catalog for FakePeer {
    async fn list(
        &self,
        _req: tonic::Request<pb::ListCatalogRequest>,
    ) -> Result<tonic::Response<pb::ListCatalogResponse>, tonic::Status> {
        let l = self.listing.lock().unwrap().clone();
        *self.lists.lock().unwrap() += 1;
        Ok(tonic::Response::new(l))
    }
    async fn notify(
        &self,
        _req: tonic::Request<pb::NotifyCatalogRequest>,
    ) -> Result<tonic::Response<pb::NotifyCatalogResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::NotifyCatalogResponse::default()))
    }
    async fn search(
        &self,
        _req: tonic::Request<pb::SearchCatalogRequest>,
    ) -> Result<tonic::Response<pb::SearchCatalogResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn get(
        &self,
        _req: tonic::Request<pb::GetCatalogEntryRequest>,
    ) -> Result<tonic::Response<pb::GetCatalogEntryResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
    async fn export(
        &self,
        _req: tonic::Request<pb::ExportCatalogRequest>,
    ) -> Result<tonic::Response<pb::ExportCatalogResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
}

/// Issues a second node certificate of `stadt` and serves `fake` with it.
async fn start_fake_peer(sb: &Sandbox, fake: FakePeer) -> (String, TlsMaterial) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let dir = sb.root.join("stadt").join("nodes").join("stadt-2");
    let org_ca = allmende::pki::ca::OrgCa::load(&sb.org_dir("stadt")).unwrap();
    org_ca
        .issue_node(
            "stadt-2",
            &["localhost".to_owned()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            allmende::pki::ca::NODE_DAYS,
            &dir,
            now,
        )
        .unwrap();
    let root = sb.federation.root_cert();
    let m = TlsMaterial::load(&dir.join("node.crt"), &dir.join("node.key"), &root).unwrap();
    let trust = allmende::pki::Trust::new(
        m.root_der(&root).unwrap(),
        &std::fs::read(sb.federation.membership()).unwrap(),
        Arc::new(allmende::clock::SystemClock),
    )
    .unwrap();
    let metrics = allmende::metrics::NodeMetrics::new("stadt-2");
    let cfg =
        allmende::tls::server_config(trust.clone(), &m, metrics.clone(), &dir.join("node.crt"))
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    let incoming = allmende::tls::incoming(listener, cfg, trust, metrics);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::catalog_server::CatalogServer::new(fake))
            .serve_with_incoming(incoming),
    );
    (endpoint, m)
}

fn entry(owner: &str, node: &str, version: u64, d: DatasetDescription) -> CatalogEntry {
    CatalogEntry {
        owner: owner.into(),
        owner_node: node.into(),
        publisher_name: "Landeshauptstadt München".into(),
        version,
        updated_at_ms: 1_741_000_000_000,
        dataset: d,
    }
}

fn listing(
    signer: &NodeSigner,
    version: u64,
    records: Vec<allmende::catalog::SignedRecord>,
) -> pb::ListCatalogResponse {
    pb::ListCatalogResponse::from(&PeerListing {
        organisation: "stadt".into(),
        node: "stadt-2".into(),
        catalog_version: version,
        public_key: signer.public_key().to_vec(),
        records,
        more: false,
    })
}

fn sign(signer: &NodeSigner, e: CatalogEntry) -> allmende::catalog::SignedRecord {
    signer.sign(&SignedPayload::Entry(Box::new(e))).unwrap()
}

fn named(id: &str) -> DatasetDescription {
    DatasetDescription {
        id: id.into(),
        ..ds::air_quality()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_listings_are_refused_and_a_genuine_one_is_taken() {
    let sb = munich().await;
    let fake = FakePeer::default();
    let (endpoint, fake_material) = start_fake_peer(&sb, fake.clone()).await;
    let tum = sb.node("tum-1").unwrap();
    let mut peers = tum.peers();
    peers.push(PeerConfig {
        name: "stadt-2".into(),
        endpoint,
    });
    tum.set_peers(peers);
    // The fake node announces itself to tum-1 with its own certificate.
    let to_tum = CatalogClient::new(
        connect_with(&tum.grpc_endpoint(), &fake_material)
            .await
            .unwrap(),
    );
    let (k1, _) = NodeSigner::generate().unwrap();
    let (k2, _) = NodeSigner::generate().unwrap();

    // Serve `l`, announce a version far ahead (so that tum-1 pulls whatever
    // it holds), and wait until tum-1 has fetched it.
    let round = |l: pb::ListCatalogResponse| {
        let fake = fake.clone();
        let mut to_tum = to_tum.clone();
        async move {
            let before = *fake.lists.lock().unwrap();
            *fake.listing.lock().unwrap() = l;
            let r = to_tum
                .notify(pb::NotifyCatalogRequest {
                    catalog_version: 1_000,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(r.pull_scheduled);
            eventually("tum-1 to pull from the fake peer", || {
                *fake.lists.lock().unwrap() > before
            })
            .await;
        }
    };

    // 1. A stadt node serving an entry that names swm as owner.
    round(listing(
        &k1,
        1,
        vec![sign(&k1, entry("swm", "stadt-2", 1, named("forged-owner")))],
    ))
    .await;
    // 2. Its own entry, bytes changed after signing.
    let mut tampered = sign(&k1, entry("stadt", "stadt-2", 1, named("bad-signature")));
    tampered.payload = tampered.payload.replace("Luftqualität", "Luftqualitaet");
    round(listing(&k1, 1, vec![tampered])).await;
    // 3. Genuine: taken (pulls from one peer run one at a time, so 1 and 2
    //    were decided before this one arrives).
    round(listing(
        &k1,
        1,
        vec![sign(&k1, entry("stadt", "stadt-2", 1, named("genuine-1")))],
    ))
    .await;
    eventually("the genuine entry", || {
        tum.catalog.get(Some("stadt"), "genuine-1").is_ok()
    })
    .await;
    assert_eq!(tum.catalog.peer_version("stadt", "stadt-2"), Some(1));
    // 4. The same node with another key (pinned on first use: refused).
    round(listing(
        &k2,
        2,
        vec![sign(&k2, entry("stadt", "stadt-2", 2, named("other-key")))],
    ))
    .await;
    // 5. Genuine again, with the pinned key.
    round(listing(
        &k1,
        2,
        vec![sign(&k1, entry("stadt", "stadt-2", 2, named("genuine-2")))],
    ))
    .await;
    eventually("the second genuine entry", || {
        tum.catalog.get(Some("stadt"), "genuine-2").is_ok()
    })
    .await;
    for forged in ["forged-owner", "bad-signature", "other-key"] {
        assert!(
            tum.catalog.get(None, forged).is_err(),
            "`{forged}` must have been refused"
        );
    }
    assert_eq!(tum.catalog.peer_version("stadt", "stadt-2"), Some(2));

    // Only nodes announce changes, and only configured peers are pulled.
    let mut as_user = client(&sb, "stadt", "operator", "tum-1").await;
    let err = as_user
        .notify(pb::NotifyCatalogRequest { catalog_version: 9 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let mut to_swm = CatalogClient::new(
        connect_with(&sb.node("swm-1").unwrap().grpc_endpoint(), &fake_material)
            .await
            .unwrap(),
    );
    let r = to_swm
        .notify(pb::NotifyCatalogRequest { catalog_version: 9 })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.pull_scheduled, "swm-1 does not know stadt-2 as a peer");
    drop(to_tum);
    sb.shutdown().await.unwrap();
}

async fn publish_demo_datasets(sb: &Sandbox) {
    for (org, d) in ds::datasets() {
        let node = sb.node(&format!("{org}-1")).unwrap();
        node.catalog.upsert_local(d).await.unwrap();
    }
    let tum = sb.node("tum-1").unwrap();
    eventually("all four demo datasets at tum-1", || {
        tum.catalog.entries().len() == 4
    })
    .await;
}

fn ids(r: &pb::SearchCatalogResponse) -> BTreeSet<String> {
    r.entries.iter().map(|e| e.dataset.clone()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_and_the_cli() {
    let sb = munich().await;
    publish_demo_datasets(&sb).await;
    let mut c = client(&sb, "tum", "alice", "tum-1").await;
    let mut search = async |query: &str, owner: &str, theme: &str, classification: &str| {
        c.search(pb::SearchCatalogRequest {
            query: query.into(),
            owner: owner.into(),
            theme: theme.into(),
            classification: classification.into(),
            limit: 0,
        })
        .await
        .map(|r| r.into_inner())
    };
    assert_eq!(search("", "", "", "").await.unwrap().total, 4);
    assert_eq!(
        ids(&search("", "stadt", "", "").await.unwrap()),
        set(&["air-quality", "traffic-counts"])
    );
    assert_eq!(
        ids(&search("", "", "TRAN", "").await.unwrap()),
        set(&["traffic-counts", "scooter-trips"])
    );
    assert_eq!(
        ids(&search("", "", "", "personal").await.unwrap()),
        set(&["smart-meter-readings", "scooter-trips"])
    );
    assert_eq!(
        ids(&search("", "", "TRAN", "public").await.unwrap()),
        set(&["traffic-counts"])
    );
    assert_eq!(
        ids(&search("stromzaehler", "", "", "").await.unwrap()),
        set(&["smart-meter-readings"])
    );
    assert_eq!(
        ids(&search("Stromzähler", "", "", "").await.unwrap()),
        set(&["smart-meter-readings"])
    );
    assert_eq!(
        ids(&search("feinstaub münchen", "", "", "").await.unwrap()),
        set(&["air-quality"])
    );
    assert!(
        search("feinstaub", "swm", "", "")
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    let err = search("", "", "energy", "").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("unknown theme `energy`"),
        "{}",
        err.message()
    );
    let err = search("", "", "", "secret").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Get with the DCAT-AP.de export.
    let got = c
        .get(pb::GetCatalogEntryRequest {
            dataset: "air-quality".into(),
            owner: String::new(),
            include_dcat: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        got.dcat_turtle
            .contains("<allmende://munich/stadt/dataset/air-quality>")
    );
    let err = c
        .get(pb::GetCatalogEntryRequest {
            dataset: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // The CLI, with alice's profile.
    let profile = Some(profile_path(&sb, "tum", "alice"));
    let table = catalog_cmd::output(
        CatalogCmd::Search {
            query: vec!["verkehr".into()],
            owner: String::new(),
            theme: "tran".into(),
            classification: String::new(),
            limit: 50,
            profile: profile.clone(),
        },
        false,
    )
    .await
    .unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("DATASET"), "{table}");
    assert!(
        lines[1].starts_with("traffic-counts  stadt  public"),
        "{table}"
    );
    assert_eq!(lines[2], "1 of 1 matching entry", "{table}");
    let json = catalog_cmd::output(
        CatalogCmd::Search {
            query: vec![],
            owner: "swm".into(),
            theme: String::new(),
            classification: String::new(),
            limit: 50,
            profile: profile.clone(),
        },
        true,
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["total"], 1);
    assert_eq!(v["entries"][0]["schema"]["subject_column"], "household_id");
    let shown = catalog_cmd::output(
        CatalogCmd::Show {
            dataset: "smart-meter-readings".into(),
            owner: String::new(),
            dcat: false,
            profile: profile.clone(),
        },
        false,
    )
    .await
    .unwrap();
    assert!(
        shown.contains("owner           swm (Stadtwerke München), node swm-1, replica"),
        "{shown}"
    );
    assert!(
        shown.contains("household_id  string     required  data subject"),
        "{shown}"
    );
    let missing = catalog_cmd::output(
        CatalogCmd::Show {
            dataset: "nope".into(),
            owner: String::new(),
            dcat: false,
            profile,
        },
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code, 3, "{}", missing.message);
    assert!(missing.message.contains("`nope`"), "{}", missing.message);
    sb.shutdown().await.unwrap();
}

const VALIDATE_PY: &str = r#"
import collections, json, os, sys
import rdflib
from rdflib.compare import isomorphic
from rdflib.namespace import DCAT, DCTERMS, RDF, SH
import pyshacl

shapes_dir, files = sys.argv[1], sys.argv[2:]
shapes = rdflib.Graph()
for f in ["dcat-ap_2.1.1_shacl_shapes.ttl", "dcat-ap-spec-german-additions.ttl",
          "dcat-ap-de-deprecated.ttl", "dcat-ap-spec-german-messages.ttl"]:
    shapes.parse(os.path.join(shapes_dir, f), format="turtle")
ont = rdflib.Graph()
vocab = os.path.join(shapes_dir, "vocab")
for f in sorted(os.listdir(vocab)):
    ont.parse(os.path.join(vocab, f))
out, graphs = {}, {}
for path in files:
    data = rdflib.Graph()
    # JSON-LD with its @context inline: rdflib reads it without network.
    data.parse(path, format="json-ld" if path.endswith(".jsonld") else "turtle")
    graphs[path] = data
    _, report, _ = pyshacl.validate(data, shacl_graph=shapes, ont_graph=ont,
                                    inference="rdfs", do_owl_imports=False, advanced=True)
    violations, warnings = [], collections.Counter()
    for r in report.subjects(RDF.type, SH.ValidationResult):
        sev = report.value(r, SH.resultSeverity)
        if sev == SH.Violation:
            violations.append(str(report.value(r, SH.resultMessage)))
        else:
            warnings[str(report.value(r, SH.resultMessage))] += 1
    datasets = list(data.subjects(RDF.type, DCAT.Dataset))
    texts = sorted(str(o) for d in datasets for p in (DCTERMS.title, DCTERMS.description)
                   for o in data.objects(d, p))
    out[os.path.basename(path)] = {"violations": violations,
                                   "warnings": sum(warnings.values()),
                                   "warning_kinds": dict(warnings),
                                   "triples": len(data), "datasets": len(datasets),
                                   "catalogs": len(list(data.subjects(RDF.type, DCAT.Catalog))),
                                   "texts": texts}
# Files of the same name but for the extension are the same graph in two formats.
stems = collections.defaultdict(list)
for path in files:
    stems[os.path.splitext(path)[0]].append(path)
for stem, paths in stems.items():
    if len(paths) == 2:
        out[os.path.basename(stem) + ".isomorphic"] = isomorphic(graphs[paths[0]], graphs[paths[1]])
print(json.dumps(out))
"#;

/// `../shared` beside the workspace (CI clones the repository with it there).
fn shapes_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = workspace
        .parent()
        .unwrap()
        .join("shared/vendor/dcat-ap-de-2.0-shacl");
    assert!(
        dir.join("dcat-ap_2.1.1_shacl_shapes.ttl").is_file(),
        "the vendored DCAT-AP.de shapes are missing at `{}` (expected ../shared beside the workspace)",
        dir.display()
    );
    dir
}

fn validate(files: &[PathBuf]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("validate.py");
    std::fs::write(&script, VALIDATE_PY).unwrap();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(shapes_dir())
        .args(files)
        .output()
        .expect("python3 must be installed (scripts/test.sh installs pyshacl)");
    assert!(
        out.status.success(),
        "the SHACL validation did not run (is pyshacl installed? scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn dcat_export_conforms_to_the_dcat_ap_de_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut minimal = ds::air_quality();
    minimal.id = "minimal".into();
    minimal.themes.clear();
    minimal.keywords.clear();
    minimal.spatial = None;
    minimal.temporal = None;
    minimal.contact_point = None;
    minimal.access_url = Some("https://opendata.muenchen.example/dataset/minimal".into());
    let mut all: Vec<(String, DatasetDescription)> = ds::datasets()
        .into_iter()
        .map(|(o, d)| (o.to_owned(), d))
        .collect();
    all.push(("stadt".into(), minimal));
    for (org, d) in all {
        let id = d.id.clone();
        let e = CatalogEntry {
            owner: org.clone(),
            owner_node: format!("{org}-1"),
            publisher_name: format!("{org} (Anzeigename)"),
            version: 3,
            updated_at_ms: 1_741_000_000_000,
            dataset: d,
        };
        let ttl = allmende::catalog::dcat::to_turtle(&e, "munich");
        let path = dir.path().join(format!("{id}.ttl"));
        std::fs::write(&path, &ttl).unwrap();
        files.push(path);
        if id == "air-quality" {
            // Negative control: without title and access URL the shapes must
            // object. (A missing licence is no SHACL violation in DCAT-AP.de;
            // the catalog's own validation refuses it.)
            let broken: String = ttl
                .lines()
                .map(|l| {
                    if !l.contains("dct:title") && !l.contains("dcat:accessURL") {
                        format!("{l}\n")
                    } else if l.ends_with(" .") {
                        // `p o ; .` is valid Turtle: end the subject.
                        "    .\n".to_owned()
                    } else {
                        String::new()
                    }
                })
                .collect();
            let path = dir.path().join("broken.ttl");
            std::fs::write(&path, broken).unwrap();
            files.push(path);
        }
    }
    let report = validate(&files);
    for (name, r) in report.as_object().unwrap() {
        let violations = r["violations"].as_array().unwrap();
        if name == "broken.ttl" {
            let text = serde_json::to_string(violations).unwrap();
            assert!(text.contains("dct:title"), "{name}: {text}");
            assert!(text.contains("dcat:accessURL"), "{name}: {text}");
        } else {
            assert!(
                violations.is_empty(),
                "{name} has SHACL violations: {violations:#?}"
            );
            assert!(r["triples"].as_u64().unwrap() > 30, "{name}: {r}");
        }
    }
    assert_eq!(report.as_object().unwrap().len(), 6);
}

/// A dataset whose texts try to break out of Turtle and JSON-LD literals.
fn hostile() -> DatasetDescription {
    let mut d = ds::air_quality();
    d.id = "hostile".into();
    d.title = r#"Titel """ mit > und <x> \ ' "" ''' „Zitat“ – Straße 東京 😀"#.into();
    d.description = "Zeile 1 \"\"\"\n> Zeile 2 \\\" \t'''\n\"@de . <urn:x> ] } ;".into();
    d.keywords = vec!["a\"b".into(), "c\\d".into()];
    // An IRI whose scheme is a prefix of the JSON-LD context.
    d.spatial = Some(allmende::catalog::Spatial {
        label: "Ort > \"Mitte\"".into(),
        iri: Some("dct:ort".into()),
    });
    d.contact_point = Some(allmende::catalog::ContactPoint {
        name: "Büro \"X\" <y>".into(),
        email: Some("kontakt@tum.example".into()),
        url: None,
    });
    d
}

async fn export(
    c: &mut CatalogClient<tonic::transport::Channel>,
    format: pb::CatalogFormat,
) -> pb::ExportCatalogResponse {
    c.export(pb::ExportCatalogRequest {
        format: format.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_federated_catalog_exports_as_dcat_ap_de() {
    let sb = munich().await;
    publish_demo_datasets(&sb).await;
    // tum-1's own entry beside its replicas of three other organisations.
    let tum = sb.node("tum-1").unwrap();
    tum.catalog.upsert_local(hostile()).await.unwrap();
    assert_eq!(tum.catalog.entries().len(), 5);

    let mut c = client(&sb, "tum", "alice", "tum-1").await;
    let ttl = export(&mut c, pb::CatalogFormat::Turtle).await;
    let jsonld = export(&mut c, pb::CatalogFormat::JsonLd).await;
    assert_eq!((ttl.datasets, jsonld.datasets), (5, 5));
    assert_eq!(ttl.media_type, "text/turtle");
    assert_eq!(jsonld.media_type, "application/ld+json");
    // The export is deterministic.
    assert_eq!(
        export(&mut c, pb::CatalogFormat::Turtle).await.document,
        ttl.document
    );
    // The JSON-LD context is inline, never a reference to fetch.
    let j: serde_json::Value = serde_json::from_str(&jsonld.document).unwrap();
    assert!(j["@context"].is_object(), "{}", j["@context"]);
    assert_eq!(j["@context"]["dcat"], "http://www.w3.org/ns/dcat#");
    // Every owner organisation is one agent, named as in the membership.
    for (org, name) in [
        ("stadt", "Landeshauptstadt München"),
        ("swm", "Stadtwerke München"),
        ("scooter-co", "Scooter Co. GmbH"),
        ("tum", "Technische Universität München"),
    ] {
        let agent = format!("<allmende://munich/{org}>\n    a foaf:Agent, foaf:Organization ;");
        assert_eq!(
            ttl.document.matches(&agent).count(),
            1,
            "{org}: {}",
            ttl.document
        );
        assert!(
            ttl.document.contains(&format!("foaf:name \"{name}\"")),
            "{name}"
        );
    }

    // Whoever may search may export: the insurer's analyst at swm-1 gets
    // the datasets an unfiltered search shows him.
    let mut insurer = client(&sb, "versicherung-ag", "analyst", "swm-1").await;
    eventually("the hostile entry at swm-1", || {
        sb.node("swm-1").unwrap().catalog.entries().len() == 5
    })
    .await;
    let searched = insurer
        .search(pb::SearchCatalogRequest::default())
        .await
        .unwrap()
        .into_inner();
    let exported = export(&mut insurer, pb::CatalogFormat::Turtle).await;
    assert_eq!(u64::from(exported.datasets), searched.total);
    for e in &searched.entries {
        assert!(
            exported.document.contains(&format!(
                "<allmende://munich/{}/dataset/{}>",
                e.owner, e.dataset
            )),
            "{} missing",
            e.dataset
        );
    }
    let err = insurer
        .export(pb::ExportCatalogRequest { format: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("turtle, jsonld"),
        "{}",
        err.message()
    );
    let err = insurer
        .export(pb::ExportCatalogRequest { format: 99 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Both formats validate, give the same graph and carry the hostile
    // texts unchanged.
    let dir = tempfile::tempdir().unwrap();
    let ttl_path = dir.path().join("catalog.ttl");
    let jsonld_path = dir.path().join("catalog.jsonld");
    std::fs::write(&ttl_path, &ttl.document).unwrap();
    std::fs::write(&jsonld_path, &jsonld.document).unwrap();
    let report = validate(&[ttl_path, jsonld_path]);
    eprintln!("{report:#}");
    for name in ["catalog.ttl", "catalog.jsonld"] {
        let r = &report[name];
        let violations = r["violations"].as_array().unwrap();
        assert!(
            violations.is_empty(),
            "{name} has SHACL violations: {violations:#?}"
        );
        assert_eq!(r["datasets"], 5, "{name}");
        assert_eq!(r["catalogs"], 1, "{name}");
        eprintln!(
            "{name}: {} triples, 0 violations, {} warnings: {:#}",
            r["triples"], r["warnings"], r["warning_kinds"]
        );
        // The one kind of warning: places are named, not given a geometry.
        for kind in r["warning_kinds"].as_object().unwrap().keys() {
            assert!(kind.starts_with("dct:Location: SOLL"), "{name}: {kind}");
        }
        assert_eq!(r["warnings"], 2, "{name}: one per place");
        let texts: Vec<&str> = r["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let h = hostile();
        assert!(texts.contains(&h.title.as_str()), "{name}: {texts:#?}");
        assert!(
            texts.contains(&h.description.as_str()),
            "{name}: {texts:#?}"
        );
    }
    assert_eq!(report["catalog.isomorphic"], true, "{report:#}");
    sb.shutdown().await.unwrap();
}
