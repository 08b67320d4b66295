//! Confinement of local sources: the one place every local file a connector reads is checked
//! and opened.
//!
//! A [`SourceRoots`] names the directories the node's operator allowed for sources and the
//! node's own places that are never readable (its key, store and config directories and files),
//! even when an allowed directory contains them. A path is readable only if
//!
//! - it is absolute and has no `..` component;
//! - it lies lexically below an allowed root (checked before the file system is touched, so a
//!   path elsewhere learns nothing about what exists there);
//! - its canonical form (every symbolic link resolved) still lies below an allowed root, and not
//!   in a reserved directory nor is a reserved file.
//!
//! [`SourceRoots::open`] checks, opens the canonical path without following a final symbolic
//! link, and then checks the *opened* file: its path as the kernel reports it (`/proc/self/fd`)
//! must be the checked one (otherwise its device and inode must match), it must be a regular
//! file, and it must not be a hard link to a reserved file. A link swapped in between the check
//! and the open is therefore refused too. Connectors check again on every open, not only when
//! they are registered.
//!
//! The canonical forms of the roots and reserved places are taken afresh for every listing of a
//! source ([`SourceRoots::pinned`]) and used for that listing and the opens of the read that
//! follows it; the path of every check is still resolved on that check, and every opened file
//! checked as above.

use std::fmt;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::error::ConnectorError;

/// Why a source path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The path is relative.
    Relative,
    /// The path has a `..` component.
    ParentComponent,
    /// The path is not below an allowed root.
    OutsideRoots,
    /// The path resolves (through a symbolic link) outside every allowed root.
    Escapes,
    /// The path lies in (or is) one of the node's own places; names which.
    Reserved(&'static str),
    /// The opened file is not the checked one, or not a regular file.
    Changed,
    /// A PostgreSQL connection names a host the node's operator did not allow
    /// (`sources.postgres_hosts`).
    HostNotAllowed,
    /// An MQTT source names a broker host the node's operator did not allow
    /// (`sources.mqtt_hosts`).
    MqttHostNotAllowed,
    /// An MDS source names a provider host the node's operator did not allow
    /// (`sources.mds_hosts`).
    MdsHostNotAllowed,
    /// An HTTP(S) source (SensorThings) names a host the node's operator did not allow
    /// (`sources.http_hosts`).
    HttpHostNotAllowed,
}

impl Refusal {
    /// A short stable code (for the audit log and metrics).
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Relative => "relative-path",
            Refusal::ParentComponent => "parent-component",
            Refusal::OutsideRoots => "outside-roots",
            Refusal::Escapes => "link-escapes-roots",
            Refusal::Reserved(_) => "node-own-files",
            Refusal::Changed => "changed-while-opening",
            Refusal::HostNotAllowed => "postgres-host-not-allowed",
            Refusal::MqttHostNotAllowed => "mqtt-host-not-allowed",
            Refusal::MdsHostNotAllowed => "mds-host-not-allowed",
            Refusal::HttpHostNotAllowed => "http-host-not-allowed",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Relative => f.write_str(
                "the path is relative; name an absolute path below a directory the node's operator allowed for sources",
            ),
            Refusal::ParentComponent => f.write_str("the path contains `..`"),
            Refusal::OutsideRoots => f.write_str(
                "it is not below a directory the node's operator allowed for sources (`sources.roots`)",
            ),
            Refusal::Escapes => f.write_str(
                "it resolves through a symbolic link to a place outside the allowed source directories",
            ),
            Refusal::Reserved(what) => write!(f, "it is or lies in the node's own {what}, which no source may read"),
            Refusal::Changed => f.write_str("the file opened is not a regular file or not the file checked (it changed while it was opened)"),
            Refusal::HostNotAllowed => f.write_str(
                "the connection names a database host the node's operator did not allow (`sources.postgres_hosts`)",
            ),
            Refusal::MqttHostNotAllowed => f.write_str(
                "the source names an MQTT broker host the node's operator did not allow (`sources.mqtt_hosts`)",
            ),
            Refusal::MdsHostNotAllowed => f.write_str(
                "the source names an MDS provider host the node's operator did not allow (`sources.mds_hosts`)",
            ),
            Refusal::HttpHostNotAllowed => f.write_str(
                "the source names an HTTP host the node's operator did not allow (`sources.http_hosts`)",
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Reserved {
    path: PathBuf,
    what: &'static str,
}

#[derive(Debug, Clone)]
struct Inner {
    /// `None`: any path (tests and tools without a node).
    roots: Option<Vec<PathBuf>>,
    reserved: Vec<Reserved>,
    /// Database hosts (names, addresses, or socket directories) PostgreSQL sources may connect
    /// to; `None`: any (with `anywhere`).
    postgres_hosts: Option<Vec<String>>,
    /// MQTT broker hosts (names or addresses) MQTT sources may connect to; `None`: any (with
    /// `anywhere`).
    mqtt_hosts: Option<Vec<String>>,
    /// MDS provider hosts MDS sources may connect to; `None`: any (with `anywhere`).
    mds_hosts: Option<Vec<String>>,
    /// HTTP(S) hosts (names or addresses) SensorThings sources may fetch from; `None`: any (with
    /// `anywhere`).
    http_hosts: Option<Vec<String>>,
}

/// The directories sources may be read from, and the node's own places they may never touch.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct SourceRoots {
    inner: Arc<Inner>,
    /// The canonical forms of the roots and reserved places, when taken once for a listing and
    /// its read ([`SourceRoots::pinned`]); otherwise taken on every check.
    forms: Option<Arc<Forms>>,
}

/// Roots and reserved places, as configured and canonical (when they exist).
#[derive(Debug, Clone)]
struct Forms {
    roots: Vec<(PathBuf, Option<PathBuf>)>,
    reserved: Vec<(PathBuf, Option<PathBuf>, &'static str)>,
}

impl Forms {
    fn of(inner: &Inner) -> Self {
        Self {
            roots: inner.roots.iter().flatten().map(|r| forms(r)).collect(),
            reserved: inner
                .reserved
                .iter()
                .map(|r| {
                    let (configured, canonical) = forms(&r.path);
                    (configured, canonical, r.what)
                })
                .collect(),
        }
    }
}

/// A root or reserved path, as configured and canonical (when it exists).
fn forms(p: &Path) -> (PathBuf, Option<PathBuf>) {
    (p.to_path_buf(), fs::canonicalize(p).ok())
}

impl SourceRoots {
    /// Reads a small file (a token, a CA bundle, credentials) through the
    /// roots, at most `limit` bytes; errors name only `what`, never the
    /// content.
    pub fn read_small(
        &self,
        path: &Path,
        what: &str,
        limit: u64,
    ) -> Result<Vec<u8>, ConnectorError> {
        use std::io::Read;
        let file = self.open(path, &path.display().to_string())?;
        let mut out = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| ConnectorError::Config(format!("cannot read the {what}: {e}")))?;
        if out.len() as u64 > limit {
            return Err(ConnectorError::Config(format!(
                "the {what} is larger than {limit} bytes"
            )));
        }
        Ok(out)
    }

    /// Sources may be read only below these (absolute) directories. A root that does not exist
    /// allows nothing until it does; roots are canonicalised on every check.
    pub fn new<I, P>(roots: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        Self {
            inner: Arc::new(Inner {
                roots: Some(roots.into_iter().map(Into::into).collect()),
                reserved: Vec::new(),
                postgres_hosts: Some(Vec::new()),
                mqtt_hosts: Some(Vec::new()),
                mds_hosts: Some(Vec::new()),
                http_hosts: Some(Vec::new()),
            }),
            forms: None,
        }
    }

    /// Any path may be read: for tests and tools that run without a node. A node never uses it.
    #[cfg(any(test, feature = "conformance"))]
    pub fn anywhere() -> Self {
        Self {
            inner: Arc::new(Inner {
                roots: None,
                reserved: Vec::new(),
                postgres_hosts: None,
                mqtt_hosts: None,
                mds_hosts: None,
                http_hosts: None,
            }),
            forms: None,
        }
    }

    /// Never reads below `path` (a directory) or `path` itself (a file), even inside an allowed
    /// root; `what` names it in errors (e.g. `key directory`).
    pub fn reserve(mut self, path: impl Into<PathBuf>, what: &'static str) -> Self {
        let inner = Arc::make_mut(&mut self.inner);
        inner.reserved.push(Reserved {
            path: path.into(),
            what,
        });
        self.forms = None;
        self
    }

    /// The same roots with the canonical forms of the roots and reserved places taken now, once,
    /// for one listing of a source and the read that follows it (see the module docs).
    pub fn pinned(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            forms: Some(Arc::new(Forms::of(&self.inner))),
        }
    }

    /// The canonical forms: pinned, or taken now.
    fn forms(&self) -> std::borrow::Cow<'_, Forms> {
        match &self.forms {
            Some(f) => std::borrow::Cow::Borrowed(f.as_ref()),
            None => std::borrow::Cow::Owned(Forms::of(&self.inner)),
        }
    }

    /// Also allows PostgreSQL connections to these hosts: host names or addresses as written in
    /// a connection string's `host`/`hostaddr`, or the directory of a unix socket.
    pub fn allow_postgres_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let inner = Arc::make_mut(&mut self.inner);
        inner
            .postgres_hosts
            .get_or_insert_with(Vec::new)
            .extend(hosts.into_iter().map(Into::into));
        self.forms = None;
        self
    }

    /// Whether a PostgreSQL connection may go to `host` (compared exactly, names without case).
    pub fn check_postgres_host(&self, host: &str) -> Result<(), ConnectorError> {
        host_allowed(
            self.inner.postgres_hosts.as_deref(),
            host,
            Refusal::HostNotAllowed,
        )
    }

    /// Also allows MQTT sources to connect to brokers on these hosts (names or addresses as
    /// written in the broker URL).
    pub fn allow_mqtt_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let inner = Arc::make_mut(&mut self.inner);
        inner
            .mqtt_hosts
            .get_or_insert_with(Vec::new)
            .extend(hosts.into_iter().map(Into::into));
        self.forms = None;
        self
    }

    /// Whether an MQTT source may connect to a broker on `host` (compared exactly, names
    /// without case).
    pub fn check_mqtt_host(&self, host: &str) -> Result<(), ConnectorError> {
        host_allowed(
            self.inner.mqtt_hosts.as_deref(),
            host,
            Refusal::MqttHostNotAllowed,
        )
    }

    /// Also allows MDS sources to connect to providers on these hosts (names or addresses as
    /// written in the provider URL).
    pub fn allow_mds_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let inner = Arc::make_mut(&mut self.inner);
        inner
            .mds_hosts
            .get_or_insert_with(Vec::new)
            .extend(hosts.into_iter().map(Into::into));
        self.forms = None;
        self
    }

    /// Whether an MDS source may connect to a provider on `host` (compared exactly, names
    /// without case).
    pub fn check_mds_host(&self, host: &str) -> Result<(), ConnectorError> {
        host_allowed(
            self.inner.mds_hosts.as_deref(),
            host,
            Refusal::MdsHostNotAllowed,
        )
    }

    /// Also allows HTTP(S) sources (SensorThings) to fetch from these hosts (names or addresses
    /// as written in the service URL).
    pub fn allow_http_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let inner = Arc::make_mut(&mut self.inner);
        inner
            .http_hosts
            .get_or_insert_with(Vec::new)
            .extend(hosts.into_iter().map(Into::into));
        self.forms = None;
        self
    }

    /// Whether an HTTP(S) source may fetch from `host` (compared exactly, names without case).
    pub fn check_http_host(&self, host: &str) -> Result<(), ConnectorError> {
        host_allowed(
            self.inner.http_hosts.as_deref(),
            host,
            Refusal::HttpHostNotAllowed,
        )
    }

    /// The allowed roots as configured (`None`: anywhere).
    pub fn roots(&self) -> Option<&[PathBuf]> {
        self.inner.roots.as_deref()
    }

    /// Where a reserved place lies inside an allowed root or an allowed root inside a reserved
    /// place: such sources are refused (for start-up warnings).
    pub fn overlaps(&self) -> Vec<(PathBuf, &'static str)> {
        let Some(roots) = &self.inner.roots else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for root in roots {
            let (rl, rc) = forms(root);
            let root = rc.unwrap_or(rl);
            for r in &self.inner.reserved {
                let (pl, pc) = forms(&r.path);
                let p = pc.unwrap_or(pl);
                if root.starts_with(&p) {
                    out.push((root.clone(), r.what));
                }
            }
        }
        out
    }

    fn refuse(shown: &str, reason: Refusal) -> ConnectorError {
        ConnectorError::Confined {
            path: shorten(shown),
            reason,
        }
    }

    /// Checks `path` and returns its canonical form (the path itself when unconfined).
    /// `shown` is how errors name it (the user's input).
    pub fn check(&self, path: &Path, shown: &str) -> Result<PathBuf, ConnectorError> {
        if self.inner.roots.is_none() {
            return Ok(path.to_path_buf());
        }
        if !path.is_absolute() {
            return Err(Self::refuse(shown, Refusal::Relative));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(Self::refuse(shown, Refusal::ParentComponent));
        }
        let forms = self.forms();
        // Lexically first: nothing outside the roots is looked at.
        let lexical = forms.roots.iter().any(|(configured, canonical)| {
            path.starts_with(configured) || canonical.as_ref().is_some_and(|c| path.starts_with(c))
        });
        if !lexical {
            return Err(Self::refuse(shown, Refusal::OutsideRoots));
        }
        if let Some(r) = self
            .inner
            .reserved
            .iter()
            .find(|r| path.starts_with(&r.path))
        {
            return Err(Self::refuse(shown, Refusal::Reserved(r.what)));
        }
        let canonical = fs::canonicalize(path).map_err(|e| ConnectorError::Unreachable {
            path: shorten(shown),
            reason: e.to_string(),
        })?;
        Self::contained(&canonical, &forms).map_err(|r| Self::refuse(shown, r))?;
        Ok(canonical)
    }

    /// Whether a canonical path lies below a canonical root and in no reserved place.
    fn contained(canonical: &Path, forms: &Forms) -> Result<(), Refusal> {
        let inside = forms
            .roots
            .iter()
            .any(|(_, c)| c.as_ref().is_some_and(|c| canonical.starts_with(c)));
        if !inside {
            return Err(Refusal::Escapes);
        }
        for (configured, resolved, what) in &forms.reserved {
            if canonical.starts_with(configured)
                || resolved.as_ref().is_some_and(|c| canonical.starts_with(c))
            {
                return Err(Refusal::Reserved(what));
            }
        }
        Ok(())
    }

    /// Checks `path`, opens it for reading and checks the opened file (see the module docs).
    pub fn open(&self, path: &Path, shown: &str) -> Result<fs::File, ConnectorError> {
        let canonical = self.check(path, shown)?;
        let confined = self.inner.roots.is_some();
        let file = open_no_follow(&canonical, confined).map_err(|e| {
            if confined && is_link_loop(&e) {
                // The checked path became a symbolic link before the open.
                Self::refuse(shown, Refusal::Changed)
            } else {
                ConnectorError::Source {
                    file: shorten(shown),
                    reason: format!("cannot open: {e}"),
                }
            }
        })?;
        if self.inner.roots.is_some() {
            self.verify_opened(&file, &canonical)
                .map_err(|r| Self::refuse(shown, r))?;
        }
        Ok(file)
    }

    #[cfg(unix)]
    fn verify_opened(&self, file: &fs::File, canonical: &Path) -> Result<(), Refusal> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().map_err(|_| Refusal::Changed)?;
        if !meta.is_file() {
            return Err(Refusal::Changed);
        }
        // The kernel's name of the opened file; where /proc is absent, its identity.
        match fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
            Ok(real) if real == canonical => {}
            Ok(_) => return Err(Refusal::Changed),
            Err(_) => {
                let now = fs::metadata(canonical).map_err(|_| Refusal::Changed)?;
                if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
                    return Err(Refusal::Changed);
                }
            }
        }
        // A hard link to a reserved file has another name but the same inode.
        for r in &self.inner.reserved {
            if let Ok(m) = fs::metadata(&r.path)
                && m.is_file()
                && (m.dev(), m.ino()) == (meta.dev(), meta.ino())
            {
                return Err(Refusal::Reserved(r.what));
            }
        }
        Ok(())
    }

    #[cfg(not(unix))]
    fn verify_opened(&self, file: &fs::File, _canonical: &Path) -> Result<(), Refusal> {
        match file.metadata() {
            Ok(m) if m.is_file() => Ok(()),
            _ => Err(Refusal::Changed),
        }
    }
}

/// Opens for reading; confined opens never follow a final symbolic link and never block on a
/// FIFO (it is refused afterwards as not a regular file).
#[cfg(unix)]
fn open_no_follow(path: &Path, confined: bool) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = fs::OpenOptions::new();
    o.read(true);
    if confined {
        o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    o.open(path)
}

#[cfg(unix)]
fn is_link_loop(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

#[cfg(not(unix))]
fn is_link_loop(_e: &std::io::Error) -> bool {
    false
}

#[cfg(not(unix))]
fn open_no_follow(path: &Path, _confined: bool) -> std::io::Result<fs::File> {
    fs::File::open(path)
}

/// A path for an error message: whole up to 256 characters.
fn shorten(s: &str) -> String {
    const MAX: usize = 256;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
        roots: SourceRoots,
    }

    /// `<tmp>/root/ok.csv`, `<tmp>/root/store/db` (reserved), `<tmp>/secret.key` (reserved).
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        let root = base.join("root");
        fs::create_dir_all(root.join("store")).unwrap();
        fs::write(root.join("ok.csv"), "a\n1\n").unwrap();
        fs::write(root.join("store/db"), "a\n1\n").unwrap();
        let outside = base.join("secret.key");
        fs::write(&outside, "a\n1\n").unwrap();
        let roots = SourceRoots::new([root.clone()])
            .reserve(root.join("store"), "store directory")
            .reserve(outside.clone(), "key file");
        Fixture {
            _dir: dir,
            root,
            outside,
            roots,
        }
    }

    fn refusal(r: Result<impl fmt::Debug, ConnectorError>) -> Refusal {
        match r {
            Err(ConnectorError::Confined { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_file_below_a_root_is_read() {
        let f = fixture();
        let p = f.root.join("ok.csv");
        assert_eq!(f.roots.check(&p, "ok.csv").unwrap(), p);
        f.roots.open(&p, "ok.csv").unwrap();
    }

    #[test]
    fn relative_parent_and_outside_paths_are_refused_before_the_file_system_is_touched() {
        let f = fixture();
        assert_eq!(
            refusal(f.roots.check(Path::new("ok.csv"), "ok.csv")),
            Refusal::Relative
        );
        let dotdot = f.root.join("..").join("secret.key");
        assert_eq!(
            refusal(f.roots.open(&dotdot, "x")),
            Refusal::ParentComponent
        );
        assert_eq!(
            refusal(f.roots.open(&f.outside, "x")),
            Refusal::OutsideRoots
        );
        // A path outside that does not exist gets the same answer: no existence oracle.
        let missing = f.outside.with_file_name("missing");
        assert_eq!(refusal(f.roots.check(&missing, "x")), Refusal::OutsideRoots);
        // `/root2` is not below `/root` (components, not string prefixes).
        let sibling = f.root.with_file_name("root2").join("a.csv");
        assert_eq!(refusal(f.roots.check(&sibling, "x")), Refusal::OutsideRoots);
    }

    #[test]
    fn a_link_out_of_the_root_is_refused() {
        let f = fixture();
        let link = f.root.join("link.csv");
        symlink(&f.outside, &link).unwrap();
        assert_eq!(refusal(f.roots.open(&link, "link.csv")), Refusal::Escapes);
        let dir_link = f.root.join("up");
        symlink(f.root.parent().unwrap(), &dir_link).unwrap();
        assert_eq!(
            refusal(f.roots.open(&dir_link.join("secret.key"), "x")),
            Refusal::Escapes
        );
    }

    #[test]
    fn pinned_roots_still_check_every_path_and_every_opened_file() {
        let f = fixture();
        let pinned = f.roots.pinned();
        // Made after the forms were taken: each check resolves its own path.
        let link = f.root.join("link.csv");
        symlink(&f.outside, &link).unwrap();
        assert_eq!(refusal(pinned.open(&link, "link.csv")), Refusal::Escapes);
        let into_store = f.root.join("db-link");
        symlink(f.root.join("store/db"), &into_store).unwrap();
        assert_eq!(
            refusal(pinned.open(&into_store, "x")),
            Refusal::Reserved("store directory")
        );
        let hard = f.root.join("hard.key");
        fs::hard_link(&f.outside, &hard).unwrap();
        assert_eq!(
            refusal(pinned.open(&hard, "x")),
            Refusal::Reserved("key file")
        );
        assert_eq!(refusal(pinned.open(&f.outside, "x")), Refusal::OutsideRoots);
        let p = f.root.join("ok.csv");
        assert_eq!(pinned.check(&p, "ok.csv").unwrap(), p);
        pinned.open(&p, "ok.csv").unwrap();
    }

    #[test]
    fn reserved_places_inside_a_root_are_refused() {
        let f = fixture();
        assert_eq!(
            refusal(f.roots.open(&f.root.join("store/db"), "db")),
            Refusal::Reserved("store directory")
        );
        // A link inside the root to a reserved place inside the root.
        let link = f.root.join("db.csv");
        symlink(f.root.join("store/db"), &link).unwrap();
        assert_eq!(
            refusal(f.roots.open(&link, "db.csv")),
            Refusal::Reserved("store directory")
        );
        // A hard link to a reserved file has its own name but the same inode.
        let roots = SourceRoots::new([f.root.clone()]).reserve(f.outside.clone(), "key file");
        let hard = f.root.join("hard.csv");
        fs::hard_link(&f.outside, &hard).unwrap();
        assert_eq!(
            refusal(roots.open(&hard, "hard.csv")),
            Refusal::Reserved("key file")
        );
    }

    #[test]
    fn the_opened_file_is_checked_not_only_the_path() {
        let f = fixture();
        let checked = f.root.join("ok.csv");
        // As if a link were swapped in between the check and the open: the opened file is
        // another one than the checked path.
        let other = fs::File::open(&f.outside).unwrap();
        assert_eq!(
            f.roots.verify_opened(&other, &checked),
            Err(Refusal::Changed)
        );
        let same = fs::File::open(&checked).unwrap();
        assert_eq!(f.roots.verify_opened(&same, &checked), Ok(()));
        // The final component is never followed: a link there is refused at the open.
        let link = f.root.join("late.csv");
        symlink(&checked, &link).unwrap();
        let e = open_no_follow(&link, true).unwrap_err();
        assert!(is_link_loop(&e), "{e}");
    }

    #[test]
    fn a_missing_root_allows_nothing_and_the_unconfined_mode_allows_all() {
        let f = fixture();
        let none = SourceRoots::new([f.root.join("absent")]);
        assert!(none.check(&f.root.join("absent/x.csv"), "x").is_err());
        assert_eq!(
            refusal(none.check(&f.root.join("ok.csv"), "ok.csv")),
            Refusal::OutsideRoots
        );
        SourceRoots::anywhere().open(&f.outside, "x").unwrap();
    }

    #[tokio::test]
    async fn a_link_swapped_in_after_the_connector_opened_is_refused_at_the_read() {
        use crate::{Connector, FileConnector, FileConnectorConfig, FileFormat, ReadRequest};
        let f = fixture();
        let src = f.root.join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("a.csv"), "a\n1\n").unwrap();
        let c = FileConnector::open_async(
            FileConnectorConfig::new(&src, FileFormat::Csv),
            f.roots.clone(),
        )
        .await
        .unwrap();
        assert_eq!(
            c.read(ReadRequest::new())
                .await
                .unwrap()
                .collect_all()
                .await
                .unwrap()
                .num_rows(),
            1
        );
        // Same content, but now a link to a file outside the root.
        fs::remove_file(src.join("a.csv")).unwrap();
        symlink(&f.outside, src.join("a.csv")).unwrap();
        let err = c.read(ReadRequest::new()).await.unwrap_err();
        assert!(
            matches!(
                err,
                ConnectorError::Confined {
                    reason: Refusal::Escapes,
                    ..
                }
            ),
            "{err}"
        );
        assert!(matches!(
            c.health().await.unwrap_err(),
            ConnectorError::Confined { .. }
        ));
        // Opening it anew is refused as well.
        let err = FileConnector::open(
            FileConnectorConfig::new(&src, FileFormat::Csv),
            f.roots.clone(),
        )
        .unwrap_err();
        assert!(matches!(err, ConnectorError::Confined { .. }), "{err}");
    }

    #[test]
    fn overlaps_name_a_root_inside_a_reserved_place() {
        let f = fixture();
        let roots =
            SourceRoots::new([f.root.join("store")]).reserve(f.root.clone(), "config directory");
        assert_eq!(roots.overlaps().len(), 1);
        assert!(f.roots.overlaps().is_empty());
    }
}

/// Whether a source may connect to `host`: it is in `list` (compared exactly, names without
/// case), or there is no list (roots made with `anywhere`).
fn host_allowed(
    list: Option<&[String]>,
    host: &str,
    reason: Refusal,
) -> Result<(), ConnectorError> {
    if list.is_none_or(|l| l.iter().any(|h| h.eq_ignore_ascii_case(host))) {
        Ok(())
    } else {
        Err(ConnectorError::Confined {
            path: crate::error::snippet(host),
            reason,
        })
    }
}
