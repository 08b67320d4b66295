//! `allmende.v1.OpenData` messages from releases and budgets.

use crate::opendata::publish::{BudgetState, Published};
use crate::opendata::releases::{FileRole, Manifest};
use allmende_proto::v1 as pb;

fn role(r: FileRole) -> &'static str {
    match r {
        FileRole::Data => "data",
        FileRole::Report => "report",
        FileRole::Metadata => "metadata",
    }
}

/// A release's manifest on the wire.
pub fn release_info(m: &Manifest) -> pb::ReleaseInfo {
    pb::ReleaseInfo {
        id: m.id.clone(),
        dataset: m.dataset.clone(),
        owner: m.owner.clone(),
        title: m.title.clone(),
        description: m.description.clone(),
        licence: m.licence.clone(),
        published_at: m.published_at.clone(),
        files: m
            .files
            .iter()
            .map(|f| pb::ReleaseFileInfo {
                name: f.name.clone(),
                media_type: f.media_type.clone(),
                role: role(f.role).to_owned(),
                bytes: f.bytes,
                sha256: f.sha256.clone(),
            })
            .collect(),
    }
}

/// A dataset's budget on the wire.
pub fn budget(b: &BudgetState) -> pb::ReleaseBudget {
    pb::ReleaseBudget {
        dataset: b.balance.dataset.clone(),
        unit: b.unit.clone(),
        period: b.period.to_owned(),
        window: b.balance.window.clone(),
        budget_micro: b.balance.budget_micro,
        spent_micro: b.balance.spent_micro,
        remaining_micro: b.balance.remaining_micro(),
        releases: b.balance.releases,
        cost_micro: b.cost_micro,
    }
}

/// The answer to a publish.
pub fn published(p: &Published) -> pb::PublishReleaseResponse {
    pb::PublishReleaseResponse {
        release: Some(release_info(&p.manifest)),
        report_json: p.report_json.clone(),
        rows_read: p.rows_read,
        cells_released: p.cells_released,
        cells_suppressed_primary: p.suppressed_primary,
        cells_suppressed_secondary: p.suppressed_secondary,
        k: p.k,
        epsilon_spent_micro: p.epsilon_micro,
        budget: p.budget.as_ref().map(budget),
        directory: p.directory.display().to_string(),
    }
}

/// The node's releases.
pub fn releases(all: &[Manifest]) -> pb::ListReleasesResponse {
    pb::ListReleasesResponse {
        releases: all.iter().map(release_info).collect(),
    }
}
