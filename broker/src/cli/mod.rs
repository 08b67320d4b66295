//! The `allmende` command line: `node`, `pki`, `demo`, `health`, `version`.
//!
//! Human tables by default, `--json` for machines. Exit codes:
//! 0 success · 1 failure (operation failed, remote error) · 2 usage error ·
//! 3 configuration or input file error ·
//! 4 node unreachable or unavailable · 5 refused (unauthenticated or
//! permission denied).

pub mod access_cmd;
mod audit_cmd;
pub mod catalog_cmd;
pub mod consent_cmd;
mod data_cmd;
mod federation_cmd;
pub mod join;
pub mod obligations_cmd;
pub mod opendata_cmd;
mod pki_cmd;
mod policy_cmd;
mod template;

use crate::client::{ClientProfile, ProfileError, error_chain};
use crate::clock::{Clock, SystemClock};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

const EXIT_CODES: &str = "Exit codes:\n  0  success\n  1  the operation failed\n  2  usage error\n  3  configuration or input file error\n  4  node unreachable or unavailable\n  5  refused: unauthenticated or permission denied";

#[derive(Debug, Parser)]
#[command(
    name = "allmende",
    version,
    about = "Allmende: a federated data-sovereignty broker",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Federation PKI: root, organisation CAs, node and user certificates.
    #[command(subcommand)]
    Pki(pki_cmd::PkiCmd),
    /// Start the Munich demo federation, or run an acceptance story.
    Demo {
        /// Run acceptance story N (1-10) on a fresh federation and exit:
        /// 1 (connector, catalog), 2 (research grant, consented
        /// pseudonymised rows), 3 (denials with reasons), 4 (consent
        /// withdrawal, who accessed), 5 (open data, anonymised release),
        /// 6 (insurer refused), 7 (MDS obligation, a missed hour), 8
        /// (audit), 9 (a member removed: refused, new MLS epoch) and 10
        /// (relayed through the city hub, sealed end to end).
        #[arg(long)]
        story: Option<u8>,
        /// Where the demo federation lives (wiped and recreated).
        #[arg(long, default_value = "allmende-demo")]
        dir: PathBuf,
        /// First gRPC port (nodes use base..base+4, admin base+100..,
        /// open data base+200.., scooter-co's MDS endpoint base+300).
        #[arg(long, default_value_t = 7401)]
        base_port: u16,
    },
    /// Check a node's health and who it takes you to be.
    Health {
        /// Client profile (TOML: endpoint, root_ca, cert, key).
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Cedar policies: validate offline, explain, reload, list.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCmd),
    /// The tamper-evident audit log: query, export, verify.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCmd),
    /// The federated dataset catalog: search, show.
    #[command(subcommand)]
    Catalog(catalog_cmd::CatalogCmd),
    /// Consent records: import a utility's CSV, withdraw, show.
    #[command(subcommand)]
    Consent(consent_cmd::ConsentCmd),
    /// Access requests and grants: request, pending, show, approve,
    /// reject, revoke, grants.
    #[command(subcommand)]
    Access(access_cmd::AccessCmd),
    /// Register and manage your organisation's data sources.
    #[command(subcommand)]
    Connector(data_cmd::ConnectorCmd),
    /// Fetch rows of a dataset from the node that owns it.
    Fetch(data_cmd::FetchArgs),
    /// Open data: publish anonymised releases, list them, see the ε budget.
    #[command(subcommand)]
    Opendata(opendata_cmd::OpenDataCmd),
    /// Obligations: record, change, end, list; compliance per company and
    /// window.
    #[command(subcommand)]
    Obligations(obligations_cmd::ObligationsCmd),
    /// The federation's members: show the directory; invite and remove
    /// organisations (city operators); join with an invitation.
    #[command(subcommand)]
    Federation(federation_cmd::FederationCmd),
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Run a node until SIGTERM or SIGINT (drains, flushes, exits 0).
    Run {
        /// The node's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Copy a stopped node's store (audit log, state) to a backup file.
    Backup {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a stopped node's store from a backup (the data dir's store
    /// must not exist). On its next start the node checks its log against
    /// what its witnesses cosigned and reports a rollback.
    Restore {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        from: PathBuf,
    },
}

/// Exit codes of the `allmende` command (`docs/cli.md`).
pub mod exit {
    /// The operation failed.
    pub const FAILED: u8 = 1;
    /// Usage error (also: a story that does not exist).
    pub const USAGE: u8 = 2;
    /// A configuration or input file (or argument value) is wrong.
    pub const INPUT: u8 = 3;
    /// The node is unreachable or unavailable.
    pub const UNREACHABLE: u8 = 4;
    /// Refused: not authenticated, or permission denied.
    pub const REFUSED: u8 = 5;
    /// A policy property does not hold.
    pub const PROPERTY_BROKEN: u8 = 6;
}

/// A CLI failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ProfileError> for Failure {
    fn from(e: ProfileError) -> Self {
        let code = match e {
            ProfileError::Connect { .. } => exit::UNREACHABLE,
            _ => exit::INPUT,
        };
        Failure::new(code, error_chain(&e))
    }
}

/// The answer of a unary call, or the node's status as a [`Failure`].
pub trait Answer<T> {
    fn answer(self) -> Result<T, Failure>;
}

impl<T> Answer<T> for Result<tonic::Response<T>, tonic::Status> {
    fn answer(self) -> Result<T, Failure> {
        self.map(tonic::Response::into_inner)
            .map_err(|s| status_failure(&s))
    }
}

/// Prints one JSON value on its own line (the `--json` output).
pub fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// Maps a gRPC status from a node to an exit code. A status without a code
/// from the node (a transport failure) is "unreachable", unless TLS says the
/// node refused our certificate.
pub fn status_failure(s: &tonic::Status) -> Failure {
    let chain = status_sentence(s);
    let lower = chain.to_lowercase();
    let cert_refused = lower.contains("certificate") || lower.contains("handshake");
    let code = match s.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => exit::REFUSED,
        tonic::Code::Unknown if cert_refused => exit::REFUSED,
        // A connection the node closed (e.g. after refusing our certificate
        // once the handshake had completed on our side) arrives as
        // Unknown or Cancelled without a status from the node.
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Unknown
        | tonic::Code::Cancelled => exit::UNREACHABLE,
        tonic::Code::InvalidArgument | tonic::Code::NotFound => exit::INPUT,
        _ => exit::FAILED,
    };
    if code == exit::REFUSED && s.code() == tonic::Code::Unknown {
        return Failure::new(code, format!("the node refused the connection: {chain}"));
    }
    Failure::new(code, chain)
}

/// A status as a sentence: the code in words, the node's message, and the
/// causes of a transport failure — never tonic's debug form.
pub fn status_sentence(s: &tonic::Status) -> String {
    let words = match s.code() {
        tonic::Code::Ok => "ok",
        tonic::Code::Cancelled => "cancelled",
        tonic::Code::Unknown => "failed",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::DeadlineExceeded => "timed out",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::ResourceExhausted => "too many requests",
        tonic::Code::FailedPrecondition => "not possible now",
        tonic::Code::Aborted => "aborted",
        tonic::Code::OutOfRange => "out of range",
        tonic::Code::Unimplemented => "not supported by this node",
        tonic::Code::Internal => "internal error at the node",
        tonic::Code::Unavailable => "node unavailable",
        tonic::Code::DataLoss => "data loss",
        tonic::Code::Unauthenticated => "not authenticated",
    };
    let mut out = format!("{words}: {}", s.message());
    if s.message().is_empty() {
        out = words.to_owned();
    }
    let mut cur = std::error::Error::source(s);
    while let Some(c) = cur {
        let m = c.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = c.source();
    }
    out
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let json = cli.json;
    match cli.command {
        Command::Version => {
            if json {
                print_json(&serde_json::json!({ "version": crate::VERSION }));
            } else {
                println!("allmende {}", crate::VERSION);
            }
            Ok(())
        }
        Command::Node(NodeCmd::Run { config }) => node_run(config).await,
        Command::Node(NodeCmd::Backup { config, out }) => {
            let cfg = crate::config::NodeConfig::load(&config)
                .map_err(|e| Failure::new(exit::INPUT, e.to_string()))?;
            let store = crate::store::Store::open_with(
                &cfg.data_dir.join("store"),
                &crate::store::StoreOptions {
                    cache_bytes: cfg.store_cache_bytes,
                },
                crate::audit::STORE_MIGRATIONS,
            )
            .map_err(|e| Failure::new(exit::FAILED, format!("{e} (is the node still running?)")))?;
            let n = store
                .backup_to(&out)
                .map_err(|e| Failure::new(exit::FAILED, e.to_string()))?;
            println!("backed up {n} records to {}", out.display());
            Ok(())
        }
        Command::Node(NodeCmd::Restore { config, from }) => {
            let cfg = crate::config::NodeConfig::load(&config)
                .map_err(|e| Failure::new(exit::INPUT, e.to_string()))?;
            let n = crate::store::Store::restore_from(
                &from,
                &cfg.data_dir.join("store"),
                &crate::store::StoreOptions {
                    cache_bytes: cfg.store_cache_bytes,
                },
                crate::audit::STORE_MIGRATIONS,
            )
            .map_err(|e| Failure::new(exit::FAILED, e.to_string()))?;
            println!("restored {n} records into {}", cfg.data_dir.display());
            Ok(())
        }
        Command::Pki(cmd) => pki_cmd::run(cmd, json, SystemClock.now_unix_secs()),
        Command::Demo {
            story,
            dir,
            base_port,
        } => demo(story, dir, base_port).await,
        Command::Health { profile } => health(profile, json).await,
        Command::Policy(cmd) => policy_cmd::run(cmd, json).await,
        Command::Audit(cmd) => audit_cmd::run(cmd, json).await,
        Command::Connector(cmd) => data_cmd::connector(cmd, json).await,
        Command::Fetch(args) => data_cmd::fetch(args, json).await,
        Command::Catalog(cmd) => catalog_cmd::run(cmd, json).await,
        Command::Consent(cmd) => consent_cmd::run(cmd, json).await,
        Command::Access(cmd) => access_cmd::run(cmd, json).await,
        Command::Opendata(cmd) => opendata_cmd::run(cmd, json).await,
        Command::Obligations(cmd) => obligations_cmd::run(cmd, json).await,
        Command::Federation(cmd) => {
            federation_cmd::run(cmd, json, SystemClock.now_unix_secs()).await
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn node_run(config: PathBuf) -> Result<(), Failure> {
    let cfg = crate::config::NodeConfig::load(&config)
        .map_err(|e| Failure::new(exit::INPUT, e.to_string()))?;
    crate::telemetry::init(cfg.log_format, &cfg.log_level);
    let handle = crate::node::start(cfg, Arc::new(SystemClock))
        .await
        .map_err(|e| Failure::new(exit::INPUT, error_chain(&e)))?;
    // Scripts and tests wait for this line.
    println!(
        "listening grpc={} admin={}",
        handle.grpc_endpoint(),
        handle
            .admin_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_else(|| "-".into())
    );
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Failure::new(exit::FAILED, format!("cannot listen for SIGHUP: {e}")))?;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            // A reload proves the new set (seconds with cvc5); a shutdown
            // request does not wait for it.
            _ = hup.recv() => tokio::select! {
                () = &mut stop => break,
                r = handle.reload_policies() => match r {
                    Ok(hash) => tracing::info!(policy_set = %hash, "policies reloaded"),
                    Err(e) => tracing::error!(error = %e, "policy reload refused; the old set keeps serving"),
                },
            },
        }
    }
    tracing::info!("shutdown requested");
    handle
        .shutdown()
        .await
        .map_err(|e| Failure::new(exit::FAILED, error_chain(&e)))
}

async fn demo(story: Option<u8>, dir: PathBuf, base_port: u16) -> Result<(), Failure> {
    use crate::demo::{self, StoryOutcome};
    crate::telemetry::init(crate::config::LogFormat::Human, "warn");
    if let Some(n) = story {
        return match demo::run_story(n).await {
            Ok(StoryOutcome::Passed) => {
                println!("story {n}: every step behaved as the story says");
                Ok(())
            }
            Ok(StoryOutcome::Failed(why)) => Err(Failure::new(
                exit::FAILED,
                format!("story {n} failed: {why}"),
            )),
            Err(e) => Err(Failure::new(exit::USAGE, e.to_string())),
        };
    }
    let sb = demo::start_munich(&dir, base_port)
        .await
        .map_err(|e| Failure::new(exit::FAILED, error_chain(&e)))?;
    println!("{}", demo::banner(&sb));
    shutdown_signal().await;
    println!("stopping the demo federation");
    sb.shutdown()
        .await
        .map_err(|e| Failure::new(exit::FAILED, error_chain(&e)))
}

async fn health(profile: Option<PathBuf>, json: bool) -> Result<(), Failure> {
    use allmende_proto::v1::federation_client::FederationClient;
    use tonic_health::pb::health_client::HealthClient;
    let p = ClientProfile::resolve(profile.as_deref())?;
    let channel = p.connect().await?;
    let status = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .answer()?
        .status;
    let who = FederationClient::new(channel)
        .who_am_i(allmende_proto::v1::WhoAmIRequest {})
        .await
        .answer()?;
    let serving = status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let server = who.server.unwrap_or_default();
    let me = who.principal.unwrap_or_default();
    if json {
        print_json(&serde_json::json!({
            "endpoint": p.endpoint,
            "serving": serving,
            "node": server.node,
            "organisation": server.organisation,
            "federation": server.federation,
            "version": server.software_version,
            "membership_version": server.membership_version,
            "you": {
                "organisation": me.organisation,
                "organisation_kind": me.organisation_kind().as_str_name(),
                "name": me.name,
                "role": me.role().as_str_name(),
            }
        }));
    } else {
        println!(
            "{:<10} {:<14} {:<16} {:<8} YOU",
            "STATUS", "NODE", "ORGANISATION", "VERSION"
        );
        println!(
            "{:<10} {:<14} {:<16} {:<8} {} ({}, {})",
            if serving { "SERVING" } else { "NOT_SERVING" },
            server.node,
            server.organisation,
            server.software_version,
            me.name,
            me.organisation,
            me.role().as_str_name()
        );
    }
    if serving {
        Ok(())
    } else {
        Err(Failure::new(
            exit::UNREACHABLE,
            format!("node at `{}` is not serving", p.endpoint),
        ))
    }
}
