//! `allmende opendata …`: publish an anonymised release of a dataset from
//! its release spec, list the node's releases, show a dataset's ε budget.

use super::{Answer, Failure};
use crate::client::ClientProfile;
use crate::opendata::ledger::epsilon;
use allmende_proto::v1 as pb;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum OpenDataCmd {
    /// Publish one anonymised release of a dataset of your organisation
    /// (data stewards), made from its `[[opendata.release]]` spec in the
    /// node's config; debits the dataset's ε budget.
    Publish {
        #[arg(long)]
        dataset: String,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// The releases the node has published, newest first.
    Releases {
        /// Only releases of this dataset.
        #[arg(long, default_value = "")]
        dataset: String,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// A dataset's ε budget in the current period (data stewards).
    Budget {
        #[arg(long)]
        dataset: String,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
}

/// Runs an open-data command and prints its output.
pub async fn run(cmd: OpenDataCmd, json: bool) -> Result<(), Failure> {
    let out = output(cmd, json).await?;
    print!("{out}");
    Ok(())
}

fn budget_json(b: &pb::ReleaseBudget) -> serde_json::Value {
    serde_json::json!({
        "dataset": b.dataset, "unit": b.unit, "period": b.period, "window": b.window,
        "epsilon_budget": epsilon(b.budget_micro), "epsilon_spent": epsilon(b.spent_micro),
        "epsilon_remaining": epsilon(b.remaining_micro), "epsilon_per_release": epsilon(b.cost_micro),
        "releases": b.releases,
    })
}

fn budget_line(b: &pb::ReleaseBudget) -> String {
    format!(
        "ε {} of {} spent, {} remaining per {} per {} ({}; {} release(s), {} each)",
        epsilon(b.spent_micro),
        epsilon(b.budget_micro),
        epsilon(b.remaining_micro),
        b.unit,
        b.period,
        b.window,
        b.releases,
        epsilon(b.cost_micro)
    )
}

fn release_json(r: &pb::ReleaseInfo) -> serde_json::Value {
    serde_json::json!({
        "id": r.id, "dataset": r.dataset, "owner": r.owner, "title": r.title,
        "licence": r.licence, "published_at": r.published_at,
        "files": r.files.iter().map(|f| serde_json::json!({
            "name": f.name, "media_type": f.media_type, "role": f.role,
            "bytes": f.bytes, "sha256": f.sha256,
        })).collect::<Vec<_>>(),
    })
}

async fn client(
    profile: Option<PathBuf>,
) -> Result<pb::open_data_client::OpenDataClient<tonic::transport::Channel>, Failure> {
    let p = ClientProfile::resolve(profile.as_deref())?;
    Ok(pb::open_data_client::OpenDataClient::new(
        p.connect().await?,
    ))
}

/// Runs an open-data command and returns what it would print.
pub async fn output(cmd: OpenDataCmd, json: bool) -> Result<String, Failure> {
    match cmd {
        OpenDataCmd::Publish { dataset, profile } => {
            let r = client(profile)
                .await?
                .publish(pb::PublishReleaseRequest { dataset })
                .await
                .answer()?;
            let release = r.release.clone().unwrap_or_default();
            if json {
                return Ok(format!(
                    "{}\n",
                    serde_json::json!({
                        "release": release_json(&release),
                        "rows_read": r.rows_read, "cells_released": r.cells_released,
                        "cells_suppressed_primary": r.cells_suppressed_primary,
                        "cells_suppressed_secondary": r.cells_suppressed_secondary,
                        "k": r.k, "epsilon_spent": epsilon(r.epsilon_spent_micro),
                        "budget": r.budget.as_ref().map(budget_json),
                        "directory": r.directory,
                    })
                ));
            }
            let mut out = format!(
                "published release `{}` of `{}`\n  rows read: {}\n  cells released: {} (k = {})\n  cells suppressed: {} primary, {} secondary\n",
                release.id,
                release.dataset,
                r.rows_read,
                r.cells_released,
                r.k,
                r.cells_suppressed_primary,
                r.cells_suppressed_secondary
            );
            match &r.budget {
                Some(b) => out.push_str(&format!(
                    "  ε spent: {}; {}\n",
                    epsilon(r.epsilon_spent_micro),
                    budget_line(b)
                )),
                None => out.push_str("  no differential privacy: no ε spent\n"),
            }
            out.push_str(&format!("  directory: {}\n", r.directory));
            for f in &release.files {
                out.push_str(&format!(
                    "  {} ({}, {} bytes)\n",
                    f.name, f.media_type, f.bytes
                ));
            }
            Ok(out)
        }
        OpenDataCmd::Releases { dataset, profile } => {
            let r = client(profile)
                .await?
                .list_releases(pb::ListReleasesRequest { dataset })
                .await
                .answer()?;
            if json {
                return Ok(format!(
                    "{}\n",
                    serde_json::Value::from(
                        r.releases.iter().map(release_json).collect::<Vec<_>>()
                    )
                ));
            }
            if r.releases.is_empty() {
                return Ok("no releases published\n".into());
            }
            let mut out = String::new();
            for rel in &r.releases {
                out.push_str(&format!(
                    "{}  {}  {}  {} file(s)\n",
                    rel.published_at,
                    rel.dataset,
                    rel.id,
                    rel.files.len()
                ));
            }
            Ok(out)
        }
        OpenDataCmd::Budget { dataset, profile } => {
            let b = client(profile)
                .await?
                .budget(pb::ReleaseBudgetRequest { dataset })
                .await
                .answer()?;
            Ok(if json {
                format!("{}\n", budget_json(&b))
            } else {
                format!("`{}`: {}\n", b.dataset, budget_line(&b))
            })
        }
    }
}
