//! Publishing anonymised releases: the node, acting for the data steward
//! the policies allowed, reads every row of one of its own datasets from
//! its connector, runs the release engine (`allmende-opendata`) with the
//! dataset's release spec from the node config, and writes the release
//! (`data.parquet`, `data.csv`, `report.json`, `dcat.jsonld`) into the
//! release directory. The rows never leave the node; only the release does.
//!
//! Order (fail closed): the caller's `publish_open_data` decision is made
//! and audited by the gRPC handler first; then the spec is checked against
//! the dataset's schema; then the ε cost is debited from the ledger, durably
//! (a refusal is audited); only then are the rows read, noise drawn and the
//! files written — into a hidden directory; then the release intent is
//! audited (durable), and only then does the release become visible (one
//! rename), followed by its completion entry. No audit entry, no release.

use super::ledger::{self, Balance, Ledger, LedgerError};
use super::releases::{FileRole, Manifest, NewFile, Releases, ReleasesError};
use crate::audit::{AuditError, AuditLog, Draft};
use crate::catalog::Catalog;
use crate::catalog::dcat::{self, ReleaseDescription, ReleaseFileDescription};
use crate::clock::SharedClock;
use crate::pki::Principal;
use crate::registry::{Registry, RegistryError};
use allmende_audit::{EntryKind, ReleaseOutcome};
use allmende_connectors::{ConnectorError, ReadRequest};
use allmende_opendata::{BudgetPeriod, ReleaseSpec};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The audit action of a release (its intent and completion entries).
pub const RELEASE_ACTION: &str = "opendata.release";

/// The policy id a refusal for lack of ε budget is audited with.
pub const BUDGET_REFUSAL: &str = "opendata-epsilon-budget";

/// Rows per batch when the publisher reads a dataset.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// Why a release was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// This node's config has no release spec for the dataset.
    #[error(
        "no release spec for `{0}` in this node's config (add an `[[opendata.release]]` table)"
    )]
    NoSpec(String),
    /// The dataset is not one of this node's registered datasets.
    #[error("`{0}` is not a dataset registered at this node; only the owner's node publishes it")]
    NotOwned(String),
    /// The spec does not fit the dataset (a missing column, a wrong type).
    #[error("the release spec does not fit dataset `{dataset}`: {message}")]
    Spec { dataset: String, message: String },
    /// The ε budget of the current period is spent.
    #[error("{0} per {unit} per {period}", unit = .1, period = .2)]
    Budget(LedgerError, String, &'static str),
    /// The engine refused or failed.
    #[error("release of `{dataset}` failed: {message}")]
    Engine { dataset: String, message: String },
    /// The dataset's source could not be read.
    #[error("the source of `{dataset}` cannot be read: {source}")]
    Source {
        dataset: String,
        source: ConnectorError,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Releases(#[from] ReleasesError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A dataset's budget state with its spec's unit, period and cost.
#[derive(Debug, Clone)]
pub struct BudgetState {
    pub balance: Balance,
    pub unit: String,
    pub period: &'static str,
    pub cost_micro: u64,
}

/// What one publish produced.
#[derive(Debug, Clone)]
pub struct Published {
    pub manifest: Manifest,
    /// `report.json` as written.
    pub report_json: String,
    pub rows_read: u64,
    pub cells_released: u64,
    pub suppressed_primary: u64,
    pub suppressed_secondary: u64,
    pub k: u64,
    pub epsilon_micro: u64,
    /// The budget after the release (`None` without differential privacy).
    pub budget: Option<BudgetState>,
    /// The release's directory on the node.
    pub directory: std::path::PathBuf,
}

/// The open-data publisher of one node.
#[derive(Debug)]
pub struct Publisher {
    specs: BTreeMap<String, ReleaseSpec>,
    public_url: Option<String>,
    spec_base: Option<std::path::PathBuf>,
    releases: Releases,
    ledger: Ledger,
    registry: Arc<Registry>,
    catalog: Arc<Catalog>,
    audit: AuditLog,
    clock: SharedClock,
    federation: String,
}

/// What the publisher needs from the node.
#[derive(Debug)]
pub struct PublisherParts {
    pub specs: Vec<ReleaseSpec>,
    pub public_url: Option<String>,
    /// Where relative paths in specs (regions files) are read from: the
    /// config file's directory.
    pub spec_base: Option<std::path::PathBuf>,
    pub releases: Releases,
    pub registry: Arc<Registry>,
    pub catalog: Arc<Catalog>,
    pub audit: AuditLog,
    pub clock: SharedClock,
    pub federation: String,
}

impl Publisher {
    /// The publisher over `parts`, its ledger in the node's store.
    pub fn open(parts: PublisherParts, store: crate::store::Store) -> Result<Self, PublishError> {
        Ok(Self {
            specs: parts
                .specs
                .into_iter()
                .map(|s| (s.dataset.clone(), s))
                .collect(),
            public_url: parts.public_url,
            spec_base: parts.spec_base,
            releases: parts.releases,
            ledger: Ledger::open(store)?,
            registry: parts.registry,
            catalog: parts.catalog,
            audit: parts.audit,
            clock: parts.clock,
            federation: parts.federation,
        })
    }

    /// The release directory.
    pub fn releases(&self) -> &Releases {
        &self.releases
    }

    /// The published releases, newest first, of `dataset` if given.
    pub fn list(&self, dataset: Option<&str>) -> Result<Vec<Manifest>, PublishError> {
        let mut all = self.releases.list()?;
        if let Some(d) = dataset {
            all.retain(|m| m.dataset == d);
        }
        Ok(all)
    }

    fn spec(&self, dataset: &str) -> Result<&ReleaseSpec, PublishError> {
        self.specs
            .get(dataset)
            .ok_or_else(|| PublishError::NoSpec(crate::text::shown(dataset, 100)))
    }

    /// The ε budget of `dataset` in the current window (`None` when its
    /// spec uses no differential privacy).
    pub fn budget(&self, dataset: &str) -> Result<Option<BudgetState>, PublishError> {
        let spec = self.spec(dataset)?;
        let Some(plan) = self.plan(spec)? else {
            return Ok(None);
        };
        let balance = self
            .ledger
            .balance(dataset, &plan.window, plan.budget_micro)?;
        Ok(Some(plan.state(balance, spec)))
    }

    fn plan(&self, spec: &ReleaseSpec) -> Result<Option<Plan>, PublishError> {
        let bad = |message: String| PublishError::Spec {
            dataset: spec.dataset.clone(),
            message,
        };
        let (Some(cost), Some(budget)) = (spec.epsilon_cost(), spec.budget.as_ref()) else {
            if spec.dp.is_some() {
                return Err(bad("`dp` needs a `budget`".into()));
            }
            return Ok(None);
        };
        let cost_micro = ledger::cost_micro(cost)
            .ok_or_else(|| bad(format!("`dp.epsilon` `{cost}` is not a positive ε")))?;
        let budget_micro = ledger::budget_micro(budget.epsilon).ok_or_else(|| {
            bad(format!(
                "`budget.epsilon` `{}` is not a positive ε",
                budget.epsilon
            ))
        })?;
        Ok(Some(Plan {
            window: ledger::window(budget.period, self.clock.now_unix_ms()),
            period: budget.period,
            cost_micro,
            budget_micro,
        }))
    }

    /// Publishes one release of `dataset` for `caller`, whose
    /// `publish_open_data` decision the caller of this function has made
    /// and audited.
    pub async fn publish(
        &self,
        caller: &Principal,
        dataset: &str,
    ) -> Result<Published, PublishError> {
        let spec = self.spec(dataset)?;
        let served = match self.registry.served(dataset) {
            Ok(s) => s,
            Err(RegistryError::Unknown(_)) => {
                return Err(PublishError::NotOwned(crate::text::shown(dataset, 100)));
            }
            Err(e) => return Err(e.into()),
        };
        let source = self
            .catalog
            .local(dataset)
            .ok_or_else(|| PublishError::NotOwned(crate::text::shown(dataset, 100)))?;
        let schema = served.connector.describe().schema.clone();
        let engine =
            engine::Engine::new(spec, &schema, self.spec_base.as_deref()).map_err(|message| {
                PublishError::Spec {
                    dataset: dataset.to_owned(),
                    message,
                }
            })?;

        // The debit is durable before any row is read or noise drawn.
        let plan = self.plan(spec)?;
        let balance = match &plan {
            None => None,
            Some(p) => match self
                .ledger
                .debit(dataset, &p.window, p.budget_micro, p.cost_micro)
                .await
            {
                Ok(b) => Some(p.state(b, spec)),
                Err(e @ LedgerError::Exhausted { .. }) => {
                    self.audit_budget_refusal(caller, dataset).await?;
                    return Err(PublishError::Budget(
                        e,
                        spec.unit.clone(),
                        ledger::period_name(p.period),
                    ));
                }
                Err(LedgerError::Store(s)) => return Err(s.into()),
            },
        };

        let read = served
            .connector
            .read(ReadRequest::new().batch_size(READ_BATCH_ROWS))
            .await
            .map_err(|source| PublishError::Source {
                dataset: dataset.to_owned(),
                source,
            })?
            .collect_all()
            .await
            .map_err(|source| PublishError::Source {
                dataset: dataset.to_owned(),
                source,
            })?;
        let batches: Vec<_> = read.batches.into_iter().map(|(b, _)| b).collect();
        let now_ms = self.clock.now_unix_ms();
        let out = engine
            .run(&batches, &crate::timefmt::format_unix_ms(now_ms))
            .map_err(|message| PublishError::Engine {
                dataset: dataset.to_owned(),
                message,
            })?;

        let id = release_id(dataset, now_ms);
        let published_at = crate::timefmt::format_unix_ms(now_ms);
        let epsilon_micro = plan.as_ref().map_or(0, |p| p.cost_micro);
        let report = report_json(&out.report, &id, epsilon_micro, balance.as_ref(), spec)?;
        let title = format!("{} (anonymisiert)", source.dataset.title);
        let description = format!(
            "Anonymisierte Veröffentlichung von `{}`: {}; Zellen mit weniger als {} {} unterdrückt{}.",
            dataset,
            out.grouping,
            out.k,
            spec.unit,
            if epsilon_micro > 0 {
                format!(
                    ", differentielle Privatsphäre mit ε = {}",
                    ledger::epsilon(epsilon_micro)
                )
            } else {
                String::new()
            }
        );
        let data = [
            (
                "data.parquet",
                "application/vnd.apache.parquet",
                out.parquet,
            ),
            ("data.csv", "text/csv", out.csv),
        ];
        let described = ReleaseDescription {
            id: id.clone(),
            title: title.clone(),
            description: description.clone(),
            issued: published_at.clone(),
            files: data
                .iter()
                .map(|(name, media, content)| ReleaseFileDescription {
                    name: (*name).to_owned(),
                    media_type: (*media).to_owned(),
                    bytes: content.len() as u64,
                    sha256: hex::encode(sha2::Sha256::digest(content)),
                })
                .collect(),
            download_base: self
                .public_url
                .as_ref()
                .map(|u| format!("{}/download/release/{id}", u.trim_end_matches('/'))),
        };
        let dcat = dcat::release_graph(&source, &self.federation, &described).to_json_ld();
        let mut files: Vec<NewFile> = data
            .into_iter()
            .map(|(name, media, content)| NewFile {
                name: name.to_owned(),
                media_type: media.to_owned(),
                role: FileRole::Data,
                content,
            })
            .collect();
        files.push(NewFile {
            name: "report.json".into(),
            media_type: "application/json".into(),
            role: FileRole::Report,
            content: report.clone().into_bytes(),
        });
        files.push(NewFile {
            name: "dcat.jsonld".into(),
            media_type: "application/ld+json".into(),
            role: FileRole::Metadata,
            content: dcat.into_bytes(),
        });
        let manifest = Manifest {
            id: id.clone(),
            dataset: dataset.to_owned(),
            owner: source.owner.clone(),
            title,
            description,
            licence: source.dataset.licence.clone(),
            published_at,
            files: Vec::new(),
        };
        let bytes: u64 = files.iter().map(|f| f.content.len() as u64).sum();
        let prepared = self.releases.prepare(manifest, files)?;

        // Audited before the release becomes visible.
        let mut draft = Draft::by(
            caller,
            &format!(
                "{RELEASE_ACTION} k={} epsilon={}",
                out.k,
                ledger::epsilon(epsilon_micro)
            ),
            dataset,
            EntryKind::ReleaseIntent,
        );
        draft.request_id = Some(id.clone());
        let guard = self.audit.begin_release(draft).await?;
        let manifest = self.releases.commit(prepared)?;
        guard
            .complete(
                crate::audit::ReleaseStats {
                    rows_released: out.cells_released,
                    rows_filtered: out.suppressed_primary + out.suppressed_secondary,
                    bytes,
                },
                ReleaseOutcome::Completed,
            )
            .await?;
        tracing::info!(dataset = %dataset, release = %id, cells = out.cells_released, "open-data release published");
        Ok(Published {
            directory: self.releases.root().join(&manifest.id),
            manifest,
            report_json: report,
            rows_read: out.rows_read,
            cells_released: out.cells_released,
            suppressed_primary: out.suppressed_primary,
            suppressed_secondary: out.suppressed_secondary,
            k: out.k,
            epsilon_micro,
            budget: balance,
        })
    }

    async fn audit_budget_refusal(
        &self,
        caller: &Principal,
        dataset: &str,
    ) -> Result<(), AuditError> {
        let mut d = Draft::by(caller, RELEASE_ACTION, dataset, EntryKind::Decision);
        d.decision = Some(allmende_audit::Decision::Deny);
        d.policy_ids = vec![BUDGET_REFUSAL.into()];
        self.audit.append(d).await.map(|_| ())
    }
}

/// The ledger entry a spec's release debits.
#[derive(Debug, Clone)]
struct Plan {
    window: String,
    period: BudgetPeriod,
    cost_micro: u64,
    budget_micro: u64,
}

impl Plan {
    fn state(&self, balance: Balance, spec: &ReleaseSpec) -> BudgetState {
        BudgetState {
            balance,
            unit: spec.unit.clone(),
            period: ledger::period_name(self.period),
            cost_micro: self.cost_micro,
        }
    }
}

/// `<dataset>-<yyyymmdd>-<hhmmss>-<8 hex>`: unique, `[a-z0-9-]`.
fn release_id(dataset: &str, now_ms: i64) -> String {
    let clean: String = dataset
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let clean = crate::text::shown(clean.trim_matches('-'), 80);
    let t = crate::timefmt::format_unix_ms(now_ms);
    let stamp: String = t.chars().filter(char::is_ascii_digit).collect();
    let stamp = crate::text::shown(&stamp, 14);
    let (date, time) = stamp.split_at(stamp.len().min(8));
    let mut r = [0u8; 4];
    let random = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r)
        .map(|()| hex::encode(r))
        .unwrap_or_else(|_| format!("{:08x}", now_ms.rem_euclid(1 << 32)));
    format!("{clean}-{date}-{time}-{random}")
}

/// `report.json`: the engine's report with the release id, the ε spent and
/// the budget after the release (unit, period, window).
fn report_json(
    engine_report: &serde_json::Value,
    id: &str,
    epsilon_micro: u64,
    budget: Option<&BudgetState>,
    spec: &ReleaseSpec,
) -> Result<String, PublishError> {
    let mut report = serde_json::Map::new();
    report.insert("release_id".into(), id.into());
    report.insert("dataset".into(), spec.dataset.clone().into());
    report.insert(
        "epsilon_spent".into(),
        ledger::epsilon(epsilon_micro).into(),
    );
    if let Some(b) = budget {
        report.insert(
            "budget".into(),
            serde_json::json!({
                "unit": b.unit,
                "period": b.period,
                "window": b.balance.window,
                "epsilon": ledger::epsilon(b.balance.budget_micro),
                "epsilon_spent": ledger::epsilon(b.balance.spent_micro),
                "epsilon_remaining": ledger::epsilon(b.balance.remaining_micro()),
            }),
        );
    }
    report.insert("engine".into(), engine_report.clone());
    serde_json::to_string_pretty(&serde_json::Value::Object(report)).map_err(|e| {
        PublishError::Engine {
            dataset: spec.dataset.clone(),
            message: format!("report: {e}"),
        }
    })
}

/// The one place the release engine is called.
mod engine {
    use allmende_opendata::{OpenDpNoise, ReleaseSpec, Releaser};
    use arrow::datatypes::Schema;
    use arrow::record_batch::RecordBatch;
    use std::path::Path;

    /// What the publisher takes from one engine run.
    pub(super) struct Output {
        pub report: serde_json::Value,
        pub parquet: Vec<u8>,
        pub csv: Vec<u8>,
        pub rows_read: u64,
        pub cells_released: u64,
        /// k-anonymity: cells under k; differential privacy: cells whose
        /// noisy unit count stayed under the threshold.
        pub suppressed_primary: u64,
        pub suppressed_secondary: u64,
        pub k: u64,
        /// The group-by columns in words, for the description.
        pub grouping: String,
    }

    pub(super) struct Engine {
        releaser: Releaser<OpenDpNoise>,
        k: u64,
        grouping: String,
    }

    impl Engine {
        /// The spec checked against the dataset's schema (the error names
        /// the column); regions files are read below `base`.
        pub(super) fn new(
            spec: &ReleaseSpec,
            schema: &Schema,
            base: Option<&Path>,
        ) -> Result<Self, String> {
            let releaser = Releaser::new_in(spec.clone(), schema, OpenDpNoise, base)
                .map_err(|e| e.to_string())?;
            let grouping = spec
                .group_by
                .iter()
                .map(|g| {
                    g.as_name
                        .clone()
                        .or_else(|| g.column.clone())
                        .or_else(|| g.columns.as_ref().map(|c| c.join("/")))
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join(" × ");
            Ok(Self {
                releaser,
                k: spec.k,
                grouping: format!("je {grouping}"),
            })
        }

        pub(super) fn run(
            mut self,
            batches: &[RecordBatch],
            generated_at: &str,
        ) -> Result<Output, String> {
            for b in batches {
                self.releaser.push(b).map_err(|e| e.to_string())?;
            }
            let release = self
                .releaser
                .finish(generated_at)
                .map_err(|e| e.to_string())?;
            let mut parquet = Vec::new();
            allmende_opendata::write_parquet(&release, &mut parquet).map_err(|e| e.to_string())?;
            let mut csv = Vec::new();
            allmende_opendata::write_csv(&release, &mut csv).map_err(|e| e.to_string())?;
            let r = &release.report;
            let d = &release.diagnostics;
            let (primary, secondary) = match r.dp {
                Some(_) => (d.cells_below_threshold, 0),
                None => (
                    r.suppressed_primary.unwrap_or(0),
                    r.suppressed_secondary.unwrap_or(0),
                ),
            };
            Ok(Output {
                report: serde_json::to_value(r).map_err(|e| e.to_string())?,
                parquet,
                csv,
                rows_read: d.rows_read,
                cells_released: r.cells_released,
                suppressed_primary: primary,
                suppressed_secondary: secondary,
                k: self.k,
                grouping: self.grouping,
            })
        }
    }
}
