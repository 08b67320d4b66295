//! `allmende connector …` (stewards) and `allmende fetch` (everyone).

use super::exit;
use super::{Answer, Failure, print_json, status_failure};
use crate::client::ClientProfile;
use allmende_proto::v1 as pb;
use arrow::record_batch::RecordBatch;
use clap::Subcommand;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum ConnectorCmd {
    /// Register (or update) the connector of one of your organisation's datasets.
    Register {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
        /// Connector kind: `files`, `postgres`, `mqtt`, `mds` or `sensorthings` (docs/connectors.md, docs/mds.md).
        #[arg(long, default_value = "files")]
        kind: String,
        /// The dataset id; must match the file's `dataset.id`.
        #[arg(long)]
        dataset: String,
        /// TOML or JSON file with a `dataset` table (metadata, docs/catalog.md)
        /// and a `connector` table (connectors/README.md).
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a commented, valid registration file to start from.
    Template {
        /// Format of the source files: csv, jsonl, geojson or parquet.
        #[arg(long, default_value = "csv")]
        format: String,
    },
    /// Your organisation's connectors on this node.
    List {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Stop serving a dataset (its metadata stays).
    Disable {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
        dataset: String,
    },
    /// Serve a disabled dataset again.
    Enable {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
        dataset: String,
    },
    /// Remove a connector and its catalog entry.
    Remove {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
        dataset: String,
    },
}

/// `allmende fetch` arguments.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    #[arg(long, env = "ALLMENDE_PROFILE")]
    profile: Option<PathBuf>,
    /// Dataset id (served by the profile's node, which must own it).
    dataset: String,
    /// Declared purpose, spelled exactly as in DPV (e.g. `AcademicResearch`).
    #[arg(long, default_value = "")]
    purpose: String,
    /// Columns to return, comma separated (default: all).
    #[arg(long, value_delimiter = ',')]
    columns: Vec<String>,
    /// Row filter `COLUMN OP VALUE` with OP one of = != < <= > >=; repeat for AND.
    #[arg(long = "where")]
    conditions: Vec<String>,
    /// Combine `--where` conditions with OR instead of AND.
    #[arg(long)]
    any: bool,
    /// The grant you present.
    #[arg(long, default_value = "")]
    grant: String,
    /// At most this many rows (the node's limit applies too).
    #[arg(long, default_value_t = 0)]
    max_rows: u64,
    /// Continue after this cursor (printed after a partial fetch).
    #[arg(long, default_value = "")]
    resume: String,
    /// Fetch from the owner node `ORG/NODE` through the city hub: the
    /// profile's node (of your own organisation) forwards on your behalf;
    /// the owner decides on your certificate.
    #[arg(long, value_name = "ORG/NODE")]
    through_hub: Option<String>,
    /// Output file: `.csv`, `.parquet` or `.jsonl`.
    #[arg(long, short = 'o')]
    out: PathBuf,
}

fn info_json(c: &pb::ConnectorInfo) -> serde_json::Value {
    serde_json::json!({"dataset": c.dataset, "kind": c.kind, "enabled": c.enabled, "registered_by": c.registered_by, "problem": c.problem, "columns": c.columns})
}

async fn client(
    profile: Option<PathBuf>,
) -> Result<pb::connectors_client::ConnectorsClient<tonic::transport::Channel>, Failure> {
    let p = ClientProfile::resolve(profile.as_deref())?;
    Ok(pb::connectors_client::ConnectorsClient::new(
        p.connect().await?,
    ))
}

pub async fn connector(cmd: ConnectorCmd, json: bool) -> Result<(), Failure> {
    let show = |c: &pb::ConnectorInfo| {
        if json {
            println!("{}", info_json(c));
        } else {
            println!(
                "{} ({}, {}){}",
                c.dataset,
                c.kind,
                if c.enabled { "enabled" } else { "disabled" },
                if c.problem.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.problem)
                }
            );
        }
    };
    match cmd {
        ConnectorCmd::Register {
            profile,
            kind,
            dataset,
            config,
        } => {
            // Check the file here first: a mistake names the file's own line.
            let file = super::template::load(&config)?;
            if file.dataset.id != dataset {
                return Err(Failure::new(
                    exit::INPUT,
                    format!(
                        "`--dataset {dataset}` does not match `dataset.id` (`{}`) in `{}`",
                        file.dataset.id,
                        config.display()
                    ),
                ));
            }
            let (dataset_json, config_json) = (file.dataset_json, file.connector_json);
            let r = client(profile)
                .await?
                .register(pb::RegisterConnectorRequest {
                    dataset_json,
                    kind,
                    config_json,
                })
                .await
                .answer()?;
            if let Some(c) = &r.connector {
                show(c);
            }
            if !json {
                println!(
                    "published to the federated catalog (version {})",
                    r.catalog_version
                );
            }
            Ok(())
        }
        ConnectorCmd::Template { format } => {
            let format = match format.as_str() {
                "csv" => allmende_connectors::FileFormat::Csv,
                "jsonl" => allmende_connectors::FileFormat::Jsonl,
                "geojson" => allmende_connectors::FileFormat::Geojson,
                "parquet" => allmende_connectors::FileFormat::Parquet,
                other => {
                    return Err(Failure::new(
                        exit::USAGE,
                        format!(
                            "unknown format `{other}`: expected csv, jsonl, geojson or parquet"
                        ),
                    ));
                }
            };
            print!("{}", super::template::template(format)?);
            Ok(())
        }
        ConnectorCmd::List { profile } => {
            let r = client(profile)
                .await?
                .list(pb::ListConnectorsRequest {})
                .await
                .answer()?;
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(r.connectors.iter().map(info_json).collect())
                );
            } else {
                for c in &r.connectors {
                    show(c);
                }
            }
            Ok(())
        }
        ConnectorCmd::Disable { profile, dataset } => {
            let c = client(profile)
                .await?
                .set_enabled(pb::SetConnectorEnabledRequest {
                    dataset,
                    enabled: false,
                })
                .await
                .answer()?;
            show(&c);
            Ok(())
        }
        ConnectorCmd::Enable { profile, dataset } => {
            let c = client(profile)
                .await?
                .set_enabled(pb::SetConnectorEnabledRequest {
                    dataset,
                    enabled: true,
                })
                .await
                .answer()?;
            show(&c);
            Ok(())
        }
        ConnectorCmd::Remove { profile, dataset } => {
            let r = client(profile)
                .await?
                .remove(pb::RemoveConnectorRequest {
                    dataset: dataset.clone(),
                })
                .await
                .answer()?;
            if json {
                print_json(&serde_json::json!({"removed": r.removed}));
            } else if r.removed {
                println!("removed `{dataset}`");
            } else {
                println!("`{dataset}` was not registered");
            }
            Ok(())
        }
    }
}

/// Parses `COLUMN OP VALUE` (e.g. `kwh>=1.5`, `station = Stachus`).
pub fn parse_condition(s: &str) -> Result<pb::Filter, String> {
    let ops = [
        ("<=", pb::CompareOp::Le),
        (">=", pb::CompareOp::Ge),
        ("!=", pb::CompareOp::Ne),
        ("=", pb::CompareOp::Eq),
        ("<", pb::CompareOp::Lt),
        (">", pb::CompareOp::Gt),
    ];
    let (pos, len, op) = ops
        .iter()
        .filter_map(|(t, op)| s.find(t).map(|p| (p, t.len(), *op)))
        .min_by_key(|(p, len, _)| (*p, usize::MAX - *len))
        .ok_or_else(|| format!("`{s}` has no comparison (= != < <= > >=)"))?;
    let column = s[..pos].trim();
    let raw = s[pos + len..].trim();
    if column.is_empty() || raw.is_empty() {
        return Err(format!("`{s}` is not `COLUMN OP VALUE`"));
    }
    use pb::value::Kind;
    let kind = if let Ok(i) = raw.parse::<i64>() {
        Kind::IntValue(i)
    } else if let Ok(f) = raw.parse::<f64>() {
        Kind::FloatValue(f)
    } else if raw == "true" || raw == "false" {
        Kind::BoolValue(raw == "true")
    } else {
        Kind::StringValue(raw.trim_matches('"').to_owned())
    };
    Ok(pb::Filter {
        expr: Some(pb::filter::Expr::Comparison(pb::Comparison {
            column: column.to_owned(),
            op: op.into(),
            value: Some(pb::Value { kind: Some(kind) }),
        })),
    })
}

enum Sink {
    Csv(arrow::csv::Writer<std::fs::File>),
    Jsonl(arrow::json::LineDelimitedWriter<std::fs::File>),
    Parquet(parquet::arrow::ArrowWriter<std::fs::File>),
}

impl Sink {
    fn open(path: &Path, schema: &arrow::datatypes::SchemaRef) -> Result<Self, Failure> {
        let f = std::fs::File::create(path).map_err(|e| {
            Failure::new(
                exit::INPUT,
                format!("cannot create `{}`: {e}", path.display()),
            )
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => Ok(Sink::Csv(
                arrow::csv::WriterBuilder::new().with_header(true).build(f),
            )),
            Some("jsonl") | Some("ndjson") => {
                Ok(Sink::Jsonl(arrow::json::LineDelimitedWriter::new(f)))
            }
            Some("parquet") => Ok(Sink::Parquet(
                parquet::arrow::ArrowWriter::try_new(f, schema.clone(), None)
                    .map_err(|e| Failure::new(exit::FAILED, e.to_string()))?,
            )),
            _ => Err(Failure::new(
                exit::USAGE,
                format!(
                    "`{}`: output must end in .csv, .parquet or .jsonl",
                    path.display()
                ),
            )),
        }
    }

    fn write(&mut self, b: &RecordBatch) -> Result<(), Failure> {
        let r = match self {
            Sink::Csv(w) => w.write(b).map_err(|e| e.to_string()),
            Sink::Jsonl(w) => w.write(b).map_err(|e| e.to_string()),
            Sink::Parquet(w) => w.write(b).map_err(|e| e.to_string()),
        };
        r.map_err(|e| Failure::new(exit::FAILED, format!("cannot write output: {e}")))
    }

    fn finish(self) -> Result<(), Failure> {
        let r = match self {
            Sink::Csv(_) => Ok(()),
            Sink::Jsonl(mut w) => w.finish().map_err(|e| e.to_string()),
            Sink::Parquet(w) => w.close().map(|_| ()).map_err(|e| e.to_string()),
        };
        r.map_err(|e| Failure::new(exit::FAILED, format!("cannot finish output: {e}")))
    }
}

pub async fn fetch(a: FetchArgs, json: bool) -> Result<(), Failure> {
    let mut filters = Vec::new();
    for c in &a.conditions {
        filters.push(parse_condition(c).map_err(|e| Failure::new(exit::USAGE, e))?);
    }
    let filter = match filters.len() {
        0 => None,
        1 => filters.pop(),
        _ => Some(pb::Filter {
            expr: Some(if a.any {
                pb::filter::Expr::Any(pb::FilterList { filters })
            } else {
                pb::filter::Expr::All(pb::FilterList { filters })
            }),
        }),
    };
    if !matches!(
        a.out.extension().and_then(|e| e.to_str()),
        Some("csv" | "parquet" | "jsonl" | "ndjson")
    ) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "`{}`: output must end in .csv, .parquet or .jsonl",
                a.out.display()
            ),
        ));
    }
    let owner = match a.through_hub.as_deref().map(|o| o.split_once('/')) {
        None => None,
        Some(Some((org, node))) if !org.is_empty() && !node.is_empty() => {
            Some((org.to_owned(), node.to_owned()))
        }
        Some(_) => {
            return Err(Failure::new(
                exit::USAGE,
                "`--through-hub` takes the owner node as `ORG/NODE`",
            ));
        }
    };
    let p = ClientProfile::resolve(a.profile.as_deref())?;
    let request = pb::FetchRequest {
        dataset: a.dataset.clone(),
        purpose: a.purpose,
        columns: a.columns,
        filter,
        resume_cursor: a.resume,
        max_rows: a.max_rows,
        grant_id: a.grant,
        request_id: String::new(),
    };
    let mut stream = match owner {
        None => pb::access_client::AccessClient::new(p.connect().await?)
            .fetch(request)
            .await
            .answer()?,
        Some((owner_organisation, owner_node)) => {
            pb::relay_client::RelayClient::new(p.connect().await?)
                .fetch(pb::RelayFetchRequest {
                    owner_organisation,
                    owner_node,
                    request: Some(request),
                })
                .await
                .answer()?
        }
    };
    let tty = std::io::stderr().is_terminal();
    let mut decoder = arrow::ipc::reader::StreamDecoder::new();
    let mut sink: Option<Sink> = None;
    let mut rows = 0u64;
    let mut bytes = 0u64;
    let mut summary = None;
    while let Some(msg) = stream.message().await.map_err(|s| status_failure(&s))? {
        bytes += msg.arrow_ipc.len() as u64;
        let mut buf = arrow::buffer::Buffer::from(msg.arrow_ipc);
        while !buf.is_empty() {
            match decoder.decode(&mut buf) {
                Ok(Some(batch)) => {
                    if sink.is_none() {
                        sink = Some(Sink::open(&a.out, &batch.schema())?);
                    }
                    if let Some(s) = sink.as_mut() {
                        s.write(&batch)?;
                    }
                    rows += batch.num_rows() as u64;
                }
                Ok(None) => {
                    if sink.is_none()
                        && let Some(schema) = decoder.schema()
                    {
                        sink = Some(Sink::open(&a.out, &schema)?);
                    }
                }
                Err(e) => {
                    return Err(Failure::new(
                        exit::FAILED,
                        format!("malformed data from the node: {e}"),
                    ));
                }
            }
        }
        if tty {
            eprint!("\r{rows} rows, {} KiB", bytes / 1024);
            let _ = std::io::stderr().flush();
        }
        if msg.summary.is_some() {
            summary = msg.summary;
        }
    }
    if tty {
        eprintln!();
    }
    let summary = summary
        .ok_or_else(|| Failure::new(exit::UNREACHABLE, "the stream ended without a summary"))?;
    match sink {
        Some(s) => s.finish()?,
        None => return Err(Failure::new(exit::FAILED, "the node sent no schema")),
    }
    if json {
        print_json(
            &serde_json::json!({"rows": summary.rows, "complete": summary.complete, "next_cursor": summary.next_cursor, "audit_sequence": summary.audit_sequence, "out": a.out}),
        );
    } else {
        println!(
            "{} rows of `{}` written to {}",
            summary.rows,
            a.dataset,
            a.out.display()
        );
        if !summary.complete {
            println!("more rows remain: add `--resume {}`", summary.next_cursor);
        }
    }
    Ok(())
}
