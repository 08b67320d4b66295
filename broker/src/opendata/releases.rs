//! Published open-data releases on disk. Each release is one directory
//! `<root>/<id>/` holding `manifest.json` and exactly the files the manifest
//! names (with size and SHA-256). The publisher writes a release into a
//! temporary directory and renames it into place, so a reader sees a whole
//! release or none; the open-data API serves only files a manifest names,
//! after checking size and hash did not change.
//!
//! The default root is `<data_dir>/opendata/releases` ([`DEFAULT_DIR`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The release directory under `node.data_dir` by default.
pub const DEFAULT_DIR: &str = "opendata/releases";

/// The manifest's file name inside a release directory.
pub const MANIFEST: &str = "manifest.json";

/// Longest release id.
const MAX_ID: usize = 128;

/// Why a release could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ReleasesError {
    /// A release id that is not `[a-z0-9-]`, 1 to 128 characters.
    #[error("`{0}` is not a release id (lowercase letters, digits and `-`)")]
    BadId(String),
    /// A file name a manifest may not hold.
    #[error("`{0}` is not a release file name (letters, digits, `-`, `_`, `.`)")]
    BadFileName(String),
    /// A release with this id exists already.
    #[error("release `{0}` exists already")]
    Exists(String),
    /// A file no longer matches its manifest (changed on disk).
    #[error("file `{file}` of release `{id}` does not match its manifest")]
    Tampered { id: String, file: String },
    /// Reading or writing the directory failed.
    #[error("release directory `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A manifest that does not parse.
    #[error("manifest `{path}`: {message}")]
    Manifest { path: PathBuf, message: String },
}

/// What a file of a release holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRole {
    /// The released table (Parquet, CSV).
    Data,
    /// The machine-readable release report (k, suppressed cells, ε spent).
    Report,
    /// The release's DCAT-AP.de metadata.
    Metadata,
}

/// One file of a release as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseFile {
    /// File name inside the release directory, e.g. `data.csv`.
    pub name: String,
    /// IANA media type, e.g. `text/csv`.
    pub media_type: String,
    /// What the file holds.
    pub role: FileRole,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

/// A release's manifest: what the open-data API lists and serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Release id, `[a-z0-9-]`, unique on this node.
    pub id: String,
    /// The dataset the release was made from.
    pub dataset: String,
    /// The organisation that owns the dataset and published the release.
    pub owner: String,
    /// Title of the release (for portals).
    pub title: String,
    /// Description of the release (for portals).
    pub description: String,
    /// Licence identifier of the released data (e.g. `dl-by-de/2.0`).
    pub licence: String,
    /// When it was published, RFC 3339 UTC.
    pub published_at: String,
    /// The files of the release.
    pub files: Vec<ReleaseFile>,
}

impl Manifest {
    /// The file called `name`, if the release has one.
    pub fn file(&self, name: &str) -> Option<&ReleaseFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// A file to write into a new release.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub name: String,
    pub media_type: String,
    pub role: FileRole,
    pub content: Vec<u8>,
}

/// The release directory of one node.
#[derive(Debug, Clone)]
pub struct Releases {
    root: PathBuf,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != MANIFEST
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleasesError + '_ {
    move |source| ReleasesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Releases {
    /// The releases under `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory the releases live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn checked_id<'a>(&self, id: &'a str) -> Result<&'a str, ReleasesError> {
        if valid_id(id) {
            Ok(id)
        } else {
            Err(ReleasesError::BadId(crate::text::shown(id, 60)))
        }
    }

    /// Every readable release, newest first (by `published_at`, then id).
    /// A directory without a valid manifest (a write in progress, a foreign
    /// directory) is left out and logged.
    pub fn list(&self) -> Result<Vec<Manifest>, ReleasesError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&self.root))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().filter(|n| valid_id(n)) else {
                continue;
            };
            match self.get(id) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {}
                Err(e) => tracing::warn!(release = id, error = %e, "release left out"),
            }
        }
        out.sort_by(|a, b| {
            b.published_at
                .cmp(&a.published_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// The manifest of release `id`, `None` if there is no such release.
    pub fn get(&self, id: &str) -> Result<Option<Manifest>, ReleasesError> {
        let id = self.checked_id(id)?;
        let path = self.root.join(id).join(MANIFEST);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let m: Manifest = serde_json::from_slice(&text).map_err(|e| ReleasesError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if m.id != id || m.files.iter().any(|f| !valid_file_name(&f.name)) {
            return Err(ReleasesError::Manifest {
                path,
                message: "names another release or a file outside the release".to_owned(),
            });
        }
        Ok(Some(m))
    }

    /// The content of file `name` of release `id`, checked against the
    /// manifest's size and hash. `None` if the release or the file does
    /// not exist (only files the manifest names can be read).
    pub fn read(&self, id: &str, name: &str) -> Result<Option<Vec<u8>>, ReleasesError> {
        let Some(m) = self.get(id)? else {
            return Ok(None);
        };
        let Some(f) = m.file(name) else {
            return Ok(None);
        };
        let path = self.root.join(id).join(&f.name);
        let content = std::fs::read(&path).map_err(io(&path))?;
        if content.len() as u64 != f.bytes || sha256_hex(&content) != f.sha256 {
            return Err(ReleasesError::Tampered {
                id: id.to_owned(),
                file: f.name.clone(),
            });
        }
        Ok(Some(content))
    }

    /// Writes a new release: the files and the manifest go into a temporary
    /// directory, are synced, and the directory is renamed into place.
    /// `manifest.files` is filled in from `files`.
    pub fn write(
        &self,
        manifest: Manifest,
        files: Vec<NewFile>,
    ) -> Result<Manifest, ReleasesError> {
        let prepared = self.prepare(manifest, files)?;
        self.commit(prepared)
    }

    /// The first half of [`Releases::write`]: writes and syncs the files and
    /// the manifest into a hidden temporary directory that no reader lists
    /// or serves. The release becomes visible only with
    /// [`Releases::commit`]; dropping the [`Prepared`] removes it.
    pub fn prepare(
        &self,
        mut manifest: Manifest,
        files: Vec<NewFile>,
    ) -> Result<Prepared, ReleasesError> {
        let id = self.checked_id(&manifest.id)?.to_owned();
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let target = self.root.join(&id);
        if target.exists() {
            return Err(ReleasesError::Exists(id));
        }
        let tmp = self.root.join(format!(".tmp-{id}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        let mut prepared = Prepared {
            tmp: tmp.clone(),
            target,
            manifest: None,
        };
        manifest.files.clear();
        for f in files {
            if !valid_file_name(&f.name) || manifest.file(&f.name).is_some() {
                return Err(ReleasesError::BadFileName(crate::text::shown(&f.name, 60)));
            }
            let path = tmp.join(&f.name);
            write_synced(&path, &f.content)?;
            manifest.files.push(ReleaseFile {
                name: f.name,
                media_type: f.media_type,
                role: f.role,
                bytes: f.content.len() as u64,
                sha256: sha256_hex(&f.content),
            });
        }
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ReleasesError::Manifest {
            path: tmp.join(MANIFEST),
            message: e.to_string(),
        })?;
        write_synced(&tmp.join(MANIFEST), &json)?;
        prepared.manifest = Some(manifest);
        Ok(prepared)
    }

    /// The second half of [`Releases::write`]: renames the prepared
    /// directory into place (atomic) and syncs the release directory.
    pub fn commit(&self, mut prepared: Prepared) -> Result<Manifest, ReleasesError> {
        let manifest = prepared
            .manifest
            .take()
            .ok_or_else(|| ReleasesError::Manifest {
                path: prepared.tmp.clone(),
                message: "committed twice".to_owned(),
            })?;
        if prepared.target.exists() {
            return Err(ReleasesError::Exists(manifest.id));
        }
        std::fs::rename(&prepared.tmp, &prepared.target).map_err(io(&prepared.target))?;
        std::fs::File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.root))?;
        Ok(manifest)
    }
}

/// A release written but not yet visible ([`Releases::prepare`]); dropped
/// without [`Releases::commit`], its temporary directory is removed.
#[derive(Debug)]
pub struct Prepared {
    tmp: PathBuf,
    target: PathBuf,
    manifest: Option<Manifest>,
}

impl Prepared {
    /// The manifest the release will have.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.manifest.is_some() || !self.target.exists() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

fn write_synced(path: &Path, content: &[u8]) -> Result<(), ReleasesError> {
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(content).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    fn manifest(id: &str, at: &str) -> Manifest {
        Manifest {
            id: id.to_owned(),
            dataset: "scooter-trips".to_owned(),
            owner: "scooter-co".to_owned(),
            title: "E-Scooter-Fahrten, anonymisiert".to_owned(),
            description: "Fahrten je Stunde und Rasterzelle".to_owned(),
            licence: "dl-by-de/2.0".to_owned(),
            published_at: at.to_owned(),
            files: Vec::new(),
        }
    }

    fn csv(content: &str) -> NewFile {
        NewFile {
            name: "data.csv".to_owned(),
            media_type: "text/csv".to_owned(),
            role: FileRole::Data,
            content: content.as_bytes().to_vec(),
        }
    }

    #[test]
    fn written_releases_are_listed_newest_first_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let r = Releases::new(dir.path().join("releases"));
        assert!(r.list().unwrap().is_empty());
        r.write(manifest("a-1", "2025-03-03T00:00:00Z"), vec![csv("x\n1\n")])
            .unwrap();
        let m = r
            .write(manifest("a-2", "2025-03-04T00:00:00Z"), vec![csv("x\n2\n")])
            .unwrap();
        assert_eq!(m.files[0].bytes, 4);
        let ids: Vec<_> = r.list().unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["a-2", "a-1"]);
        assert_eq!(r.read("a-1", "data.csv").unwrap().unwrap(), b"x\n1\n");
        assert!(r.read("a-1", "other.csv").unwrap().is_none());
        assert!(r.read("a-9", "data.csv").unwrap().is_none());
        assert!(matches!(
            r.write(manifest("a-1", "2025-03-05T00:00:00Z"), vec![]),
            Err(ReleasesError::Exists(_))
        ));
    }

    #[test]
    fn hostile_ids_and_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = Releases::new(dir.path());
        for id in ["", "..", "../x", "A", "a/b", "-a", &"a".repeat(129)] {
            assert!(matches!(r.get(id), Err(ReleasesError::BadId(_))), "{id}");
        }
        for name in ["../x", ".hidden", "manifest.json", "a/b", ""] {
            let mut f = csv("x");
            f.name = name.to_owned();
            let e = r.write(manifest("b-1", "2025-03-03T00:00:00Z"), vec![f]);
            assert!(matches!(e, Err(ReleasesError::BadFileName(_))), "{name}");
        }
        assert!(r.list().unwrap().is_empty());
    }

    #[test]
    fn a_prepared_release_is_invisible_until_committed() {
        let dir = tempfile::tempdir().unwrap();
        let r = Releases::new(dir.path());
        let p = r
            .prepare(manifest("d-1", "2025-03-03T00:00:00Z"), vec![csv("x\n1\n")])
            .unwrap();
        assert!(r.list().unwrap().is_empty());
        assert!(r.get("d-1").unwrap().is_none());
        let m = r.commit(p).unwrap();
        assert_eq!(r.get("d-1").unwrap().unwrap(), m);
        // Dropped without a commit: nothing stays behind.
        drop(
            r.prepare(manifest("d-2", "2025-03-03T00:00:00Z"), vec![csv("x")])
                .unwrap(),
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_changed_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = Releases::new(dir.path());
        r.write(manifest("c-1", "2025-03-03T00:00:00Z"), vec![csv("x\n1\n")])
            .unwrap();
        std::fs::write(dir.path().join("c-1/data.csv"), b"x\n9\n").unwrap();
        assert!(matches!(
            r.read("c-1", "data.csv"),
            Err(ReleasesError::Tampered { .. })
        ));
    }
}
