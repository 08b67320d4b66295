//! The onboarding flow: federation root, organisation CAs, node and user
//! certificates, revocation. Each step works on its own directory; private
//! keys are created where they are used and never leave that directory
//! (written with mode 0600).
//!
//! | step | who | reads | writes |
//! |---|---|---|---|
//! | `init-federation` | city | - | `root-ca.key`, `root-ca.crt`, `membership.json` |
//! | `org-request` | organisation | - | `org-ca.key`, `org-ca.csr` |
//! | `org-sign` | city | federation dir, `org-ca.csr` | `org-ca.crt`, new `membership.json` |
//! | `issue-node` / `issue-user` | organisation | org dir | leaf key + chain |
//! | `revoke` | city | federation dir, a certificate | new `membership.json` |
//! | `remove_member` | city (its node: `federation remove`) | federation dir | new `membership.json` |
//! | `set_nodes` | city | federation dir, node certificates | new `membership.json` (directory entries) |

use super::identity::{
    LeafIdentity, OrgKind, Role, Subject, org_uri, parse_org_uri, valid_leaf_name, valid_org_name,
};
use super::membership::{
    Denied, MEMBERSHIP_FORMAT, Member, MembershipDoc, MembershipError, NodeEntry, SignedMembership,
    sha256_hex,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// File names inside the federation (city) directory.
pub const ROOT_KEY: &str = "root-ca.key";
pub const ROOT_CERT: &str = "root-ca.crt";
pub const MEMBERSHIP: &str = "membership.json";
/// File names inside an organisation directory.
pub const ORG_KEY: &str = "org-ca.key";
pub const ORG_CSR: &str = "org-ca.csr";
pub const ORG_CERT: &str = "org-ca.crt";

/// Default lifetimes.
pub const ROOT_DAYS: i64 = 3650;
pub const ORG_DAYS: i64 = 1825;
pub const NODE_DAYS: i64 = 365;
pub const USER_DAYS: i64 = 30;

/// Errors of the onboarding steps.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` already exists; refusing to overwrite key material")]
    Exists { path: PathBuf },
    #[error("invalid name `{0}`: use lower-case letters, digits and `-`")]
    InvalidOrgName(String),
    #[error("invalid node name or user id `{0}`: use letters, digits, `.`, `_` and `-`")]
    InvalidLeafName(String),
    #[error("certificate error: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid certificate `{path}`: {reason}")]
    BadCert { path: PathBuf, reason: String },
    #[error("invalid signing request `{path}`: {reason}")]
    BadCsr { path: PathBuf, reason: String },
    #[error("organisation `{0}` is already a member; revoke its CA first")]
    AlreadyMember(String),
    #[error("membership: {0}")]
    Membership(#[from] MembershipError),
    #[error("organisation `{0}` is not a member of the federation")]
    NotMember(String),
    #[error("organisation `{0}` holds the federation root and cannot be removed")]
    RootOrganisation(String),
    #[error("the request names organisation `{requested}`, the invitation is for `{invited}`")]
    WrongOrganisation { requested: String, invited: String },
    #[error("validity must be between 1 and {max} days, got {got}")]
    BadValidity { got: i64, max: i64 },
}

fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_string(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file with mode 0600, refusing to overwrite an existing one.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let werr = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                PkiError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                werr(e)
            }
        })?;
    f.write_all(bytes).map_err(werr)?;
    f.sync_all().map_err(werr)
}

/// Writes a public file atomically (temp file + rename), mode 0644.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    let werr = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(werr)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(werr)?;
    tmp.write_all(bytes).map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(())
}

fn new_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

fn load_key(path: &Path) -> Result<KeyPair, PkiError> {
    let pem = read_string(path)?;
    KeyPair::from_pem(&pem).map_err(|e| PkiError::BadCert {
        path: path.to_path_buf(),
        reason: format!("not a private key: {e}"),
    })
}

fn validity(
    now_unix: i64,
    days: i64,
    max: i64,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    if !(1..=max).contains(&days) {
        return Err(PkiError::BadValidity { got: days, max });
    }
    let now = OffsetDateTime::from_unix_timestamp(now_unix).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    // Small back-dating tolerates clock skew between nodes.
    Ok((now - Duration::minutes(5), now + Duration::days(days)))
}

/// Facts read from a certificate.
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub der: Vec<u8>,
    pub sha256: String,
    pub spki_sha256: String,
    pub uris: Vec<String>,
    pub public_key: Vec<u8>,
    pub not_after: i64,
    pub org_units: Vec<String>,
}

/// Parses the first certificate of a PEM file.
pub fn cert_facts_from_pem(path: &Path, pem: &str) -> Result<CertFacts, PkiError> {
    let bad = |reason: String| PkiError::BadCert {
        path: path.to_path_buf(),
        reason,
    };
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    cert_facts(&p.contents).map_err(bad)
}

/// Parses a DER certificate.
pub fn cert_facts(der: &[u8]) -> Result<CertFacts, String> {
    use x509_parser::prelude::*;
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| format!("not X.509: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after certificate".into());
    }
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::URI(u) = n {
                uris.push((*u).to_owned());
            }
        }
    }
    let org_units = cert
        .subject()
        .iter_organizational_unit()
        .filter_map(|a| a.as_str().ok().map(str::to_owned))
        .collect();
    Ok(CertFacts {
        der: der.to_vec(),
        sha256: sha256_hex(der),
        spki_sha256: sha256_hex(cert.public_key().raw),
        uris,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        not_after: cert.validity().not_after.timestamp(),
        org_units,
    })
}

/// Paths of a federation (city) directory.
#[derive(Debug, Clone)]
pub struct FederationDir(pub PathBuf);

impl FederationDir {
    pub fn root_key(&self) -> PathBuf {
        self.0.join(ROOT_KEY)
    }
    pub fn root_cert(&self) -> PathBuf {
        self.0.join(ROOT_CERT)
    }
    pub fn membership(&self) -> PathBuf {
        self.0.join(MEMBERSHIP)
    }

    /// Reads and verifies the current membership.
    pub fn load_membership(&self) -> Result<MembershipDoc, PkiError> {
        let root = cert_facts_from_pem(&self.root_cert(), &read_string(&self.root_cert())?)?;
        let signed = SignedMembership::from_json(&read(&self.membership())?)?;
        Ok(signed.verify(&root.public_key)?)
    }

    fn store_membership(&self, doc: &MembershipDoc) -> Result<Vec<u8>, PkiError> {
        doc.validate()?;
        let key = load_key(&self.root_key())?;
        let json = doc.sign(&key.serialize_der())?.to_json();
        write_public(&self.membership(), &json)?;
        Ok(json)
    }
}

/// `allmende pki init-federation`: creates the root CA and an empty membership.
pub fn init_federation(
    dir: &Path,
    federation: &str,
    now_unix: i64,
) -> Result<FederationDir, PkiError> {
    if !valid_org_name(federation) {
        return Err(PkiError::InvalidOrgName(federation.into()));
    }
    let fed = FederationDir(dir.to_path_buf());
    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("Allmende federation root {federation}"),
    );
    dn.push(DnType::OrganizationName, federation);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(format!("allmende://{federation}").try_into()?)];
    let (nb, na) = validity(now_unix, ROOT_DAYS, ROOT_DAYS)?;
    params.not_before = nb;
    params.not_after = na;
    let cert = params.self_signed(&key)?;
    write_secret(&fed.root_key(), key.serialize_pem().as_bytes())?;
    write_public(&fed.root_cert(), cert.pem().as_bytes())?;
    let doc = MembershipDoc {
        format: MEMBERSHIP_FORMAT,
        federation: federation.to_owned(),
        version: 1,
        issued_at: now_unix,
        root_ca_sha256: sha256_hex(cert.der()),
        members: vec![],
        denied: vec![],
        nodes: vec![],
    };
    fed.store_membership(&doc)?;
    Ok(fed)
}

/// `allmende pki org-request`: the organisation's CA key and signing request.
pub fn org_request(dir: &Path, federation: &str, org: &str) -> Result<PathBuf, PkiError> {
    for n in [federation, org] {
        if !valid_org_name(n) {
            return Err(PkiError::InvalidOrgName(n.into()));
        }
    }
    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("Allmende organisation CA {org}"),
    );
    dn.push(DnType::OrganizationName, org);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(org_uri(federation, org).try_into()?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let csr = params.serialize_request(&key)?;
    write_secret(&dir.join(ORG_KEY), key.serialize_pem().as_bytes())?;
    let csr_path = dir.join(ORG_CSR);
    write_public(&csr_path, csr.pem()?.as_bytes())?;
    Ok(csr_path)
}

/// `allmende pki org-sign`: the city signs an organisation's request and adds
/// the organisation, with its kind, to the signed membership.
pub fn org_sign(
    fed: &FederationDir,
    csr_path: &Path,
    kind: OrgKind,
    display_name: &str,
    out_cert: &Path,
    now_unix: i64,
) -> Result<Member, PkiError> {
    let csr_pem = read_string(csr_path)?;
    let signed = sign_org(
        fed,
        &csr_pem,
        csr_path,
        &OrgAdmission {
            kind,
            display_name,
            invited_org: None,
        },
        now_unix,
        0,
    )?;
    write_public(out_cert, signed.cert_pem.as_bytes())?;
    Ok(signed.member)
}

/// What the city decided about an organisation it admits: its kind and
/// name, and (joining by invitation) the one organisation the request may
/// name.
#[derive(Debug, Clone, Copy)]
pub struct OrgAdmission<'a> {
    pub kind: OrgKind,
    pub display_name: &'a str,
    pub invited_org: Option<&'a str>,
}

/// An organisation CA signed and added to the membership.
#[derive(Debug, Clone)]
pub struct SignedOrg {
    pub member: Member,
    /// The organisation CA certificate (PEM).
    pub cert_pem: String,
    /// The re-signed membership: its version and its signed bytes.
    pub version: u64,
    pub signed_json: Vec<u8>,
}

/// Signs the organisation CA request `csr_pem` (`origin` names it in
/// errors) and adds the organisation with the admission's kind to the
/// membership, re-signed with a version above both the file's and
/// `above_version`. Only the public key and the organisation name are taken
/// from the request; with an invited organisation, the request must name
/// exactly it.
pub fn sign_org(
    fed: &FederationDir,
    csr_pem: &str,
    origin: &Path,
    admission: &OrgAdmission<'_>,
    now_unix: i64,
    above_version: u64,
) -> Result<SignedOrg, PkiError> {
    let bad = |reason: String| PkiError::BadCsr {
        path: origin.to_path_buf(),
        reason,
    };
    let (csr, uri, federation, org) = parse_csr(csr_pem).map_err(bad)?;
    let mut doc = fed.load_membership()?;
    if federation != doc.federation {
        return Err(bad(format!(
            "requests membership of federation `{federation}`, this is `{}`",
            doc.federation
        )));
    }
    if let Some(invited) = admission.invited_org
        && invited != org
    {
        return Err(PkiError::WrongOrganisation {
            requested: org,
            invited: invited.to_owned(),
        });
    }
    if doc.member(&org).is_some() {
        return Err(PkiError::AlreadyMember(org));
    }
    // The city decides the certificate's content; only the public key and
    // the organisation name come from the request.
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("Allmende organisation CA {org}"),
    );
    dn.push(DnType::OrganizationName, org.as_str());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(uri.clone().try_into()?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    let (nb, na) = validity(now_unix, ORG_DAYS, ORG_DAYS)?;
    params.not_before = nb;
    params.not_after = na;
    let root_pem = read_string(&fed.root_cert())?;
    let issuer = Issuer::from_ca_cert_pem(&root_pem, load_key(&fed.root_key())?)?;
    let cert = params.signed_by(&csr.public_key, &issuer)?;
    let facts = cert_facts(cert.der()).map_err(bad)?;
    let member = Member {
        org,
        kind: admission.kind,
        display_name: admission.display_name.to_owned(),
        ca_cert_pem: cert.pem(),
        ca_spki_sha256: facts.spki_sha256,
        ca_cert_sha256: facts.sha256,
        added_at: now_unix,
    };
    doc.members.push(member.clone());
    doc.version = doc
        .version
        .saturating_add(1)
        .max(above_version.saturating_add(1));
    doc.issued_at = now_unix;
    let signed_json = fed.store_membership(&doc)?;
    Ok(SignedOrg {
        member,
        cert_pem: cert.pem(),
        version: doc.version,
        signed_json,
    })
}

/// A parsed organisation CA request: the request, its URI, federation and
/// organisation.
fn parse_csr(
    csr_pem: &str,
) -> Result<(CertificateSigningRequestParams, String, String, String), String> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| e.to_string())?;
    let uri = csr
        .params
        .subject_alt_names
        .iter()
        .find_map(|s| match s {
            SanType::URI(u) => Some(u.as_str().to_owned()),
            _ => None,
        })
        .ok_or_else(|| "no `allmende://<federation>/<org>` URI".to_owned())?;
    let (federation, org) = parse_org_uri(&uri).map_err(|e| e.to_string())?;
    Ok((csr, uri, federation, org))
}

/// The federation and organisation an organisation CA request names.
pub fn csr_organisation(csr_pem: &str) -> Result<(String, String), String> {
    parse_csr(csr_pem).map(|(_, _, f, o)| (f, o))
}

/// An invitation's onboarding certificate and key (PEM).
#[derive(Clone)]
pub struct OnboardingCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub sha256: String,
}

impl std::fmt::Debug for OnboardingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("OnboardingCert")
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Issues the onboarding client certificate of invitation `invitation` for
/// organisation `org`, directly under the federation root, valid until
/// `not_after_unix` (`pki::onboarding`).
pub fn issue_onboarding(
    fed: &FederationDir,
    org: &str,
    invitation: &str,
    not_after_unix: i64,
    now_unix: i64,
) -> Result<OnboardingCert, PkiError> {
    if !valid_org_name(org) {
        return Err(PkiError::InvalidOrgName(org.into()));
    }
    let doc = fed.load_membership()?;
    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Allmende onboarding {org}"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        super::onboarding::onboarding_uri(&doc.federation, org, invitation).try_into()?,
    )];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let (nb, _) = validity(now_unix, 1, 1)?;
    params.not_before = nb;
    params.not_after =
        OffsetDateTime::from_unix_timestamp(not_after_unix).map_err(|_| PkiError::BadValidity {
            got: not_after_unix,
            max: i64::MAX,
        })?;
    let root_pem = read_string(&fed.root_cert())?;
    let issuer = Issuer::from_ca_cert_pem(&root_pem, load_key(&fed.root_key())?)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(OnboardingCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        sha256: sha256_hex(cert.der()),
    })
}

/// An organisation directory (`org-ca.key`, `org-ca.crt`).
#[derive(Debug)]
pub struct OrgCa {
    pub federation: String,
    pub org: String,
    cert_pem: String,
    key: KeyPair,
}

impl OrgCa {
    /// Loads an organisation CA from its directory.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(ORG_CERT);
        let cert_pem = read_string(&cert_path)?;
        let facts = cert_facts_from_pem(&cert_path, &cert_pem)?;
        let uri = facts.uris.first().ok_or_else(|| PkiError::BadCert {
            path: cert_path.clone(),
            reason: "no organisation URI".into(),
        })?;
        let (federation, org) = parse_org_uri(uri).map_err(|e| PkiError::BadCert {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            federation,
            org,
            cert_pem,
            key: load_key(&dir.join(ORG_KEY))?,
        })
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one private constructor for both leaf kinds"
    )]
    fn issue(
        &self,
        subject: Subject,
        role: Option<Role>,
        dns: &[String],
        ips: &[IpAddr],
        days: i64,
        max_days: i64,
        now_unix: i64,
    ) -> Result<(KeyPair, String), PkiError> {
        if !valid_leaf_name(subject.name()) {
            return Err(PkiError::InvalidLeafName(subject.name().into()));
        }
        let id = LeafIdentity {
            federation: self.federation.clone(),
            organisation: self.org.clone(),
            subject: subject.clone(),
        };
        let key = new_key()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, subject.name());
        dn.push(DnType::OrganizationName, self.org.as_str());
        if let Some(r) = role {
            dn.push(DnType::OrganizationalUnitName, r.as_str());
        }
        params.distinguished_name = dn;
        let mut sans = vec![SanType::URI(id.uri().try_into()?)];
        for d in dns {
            sans.push(SanType::DnsName(d.clone().try_into()?));
        }
        for ip in ips {
            sans.push(SanType::IpAddress(*ip));
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match subject {
            Subject::Node(_) => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Subject::User(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        let (nb, na) = validity(now_unix, days, max_days)?;
        params.not_before = nb;
        params.not_after = na;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        // The chain a client presents: leaf, then the organisation CA.
        let chain = format!("{}{}", cert.pem(), self.cert_pem);
        Ok((key, chain))
    }

    /// `allmende pki issue-node`: writes `<out>/node.key` and `<out>/node.crt`.
    pub fn issue_node(
        &self,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
        days: i64,
        out: &Path,
        now_unix: i64,
    ) -> Result<LeafFiles, PkiError> {
        let (key, chain) = self.issue(
            Subject::Node(name.into()),
            None,
            dns,
            ips,
            days,
            ORG_DAYS,
            now_unix,
        )?;
        LeafFiles::write(out, "node", &key, &chain)
    }

    /// `allmende pki issue-user`: writes `<out>/<id>.key` and `<out>/<id>.crt`.
    pub fn issue_user(
        &self,
        id: &str,
        role: Role,
        days: i64,
        out: &Path,
        now_unix: i64,
    ) -> Result<LeafFiles, PkiError> {
        let (key, chain) = self.issue(
            Subject::User(id.into()),
            Some(role),
            &[],
            &[],
            days,
            366,
            now_unix,
        )?;
        LeafFiles::write(out, id, &key, &chain)
    }

    /// `allmende pki renew-user`: a new key and certificate with the identity
    /// and role of an existing user certificate of this organisation.
    pub fn renew_user(
        &self,
        old_cert: &Path,
        days: i64,
        out: &Path,
        now_unix: i64,
    ) -> Result<LeafFiles, PkiError> {
        let facts = cert_facts_from_pem(old_cert, &read_string(old_cert)?)?;
        let bad = |reason: String| PkiError::BadCert {
            path: old_cert.to_path_buf(),
            reason,
        };
        let uri = facts
            .uris
            .first()
            .ok_or_else(|| bad("no identity URI".into()))?;
        let id: LeafIdentity = uri
            .parse()
            .map_err(|e: super::identity::IdentityError| bad(e.to_string()))?;
        if id.organisation != self.org || id.federation != self.federation {
            return Err(bad(format!(
                "belongs to `{}`, not to this organisation",
                id.organisation
            )));
        }
        let Subject::User(user) = id.subject else {
            return Err(bad("not a user certificate".into()));
        };
        let role: Role = facts
            .org_units
            .first()
            .ok_or_else(|| bad("no role".into()))?
            .parse()
            .map_err(|e: allmende_vocab::UnknownValue| bad(e.to_string()))?;
        self.issue_user(&user, role, days, out, now_unix)
    }
}

/// Where a leaf's key and chain were written.
#[derive(Debug, Clone)]
pub struct LeafFiles {
    pub key: PathBuf,
    pub chain: PathBuf,
}

impl LeafFiles {
    fn write(out: &Path, stem: &str, key: &KeyPair, chain: &str) -> Result<Self, PkiError> {
        let files = Self {
            key: out.join(format!("{stem}.key")),
            chain: out.join(format!("{stem}.crt")),
        };
        write_secret(&files.key, key.serialize_pem().as_bytes())?;
        write_public(&files.chain, chain.as_bytes())?;
        Ok(files)
    }
}

/// `allmende pki revoke`: adds a certificate (leaf or organisation CA) to
/// the federation's deny list and re-signs the membership.
pub fn revoke(
    fed: &FederationDir,
    cert_path: &Path,
    reason: &str,
    now_unix: i64,
) -> Result<Denied, PkiError> {
    let facts = cert_facts_from_pem(cert_path, &read_string(cert_path)?)?;
    let mut doc = fed.load_membership()?;
    let denied = Denied {
        cert_sha256: facts.sha256.clone(),
        subject: facts.uris.first().cloned().unwrap_or_default(),
        reason: reason.to_owned(),
        at: now_unix,
    };
    if !doc.denied.iter().any(|d| d.cert_sha256 == facts.sha256) {
        doc.denied.push(denied.clone());
        doc.version += 1;
        doc.issued_at = now_unix;
        fed.store_membership(&doc)?;
    }
    Ok(denied)
}

/// Takes organisation `org` out of the federation
/// ([`MembershipDoc::remove_member`]: member and node entries gone, its CA
/// and node certificates denied) and re-signs the membership with a version
/// above both the file's and `above_version` (the version a node already
/// trusts). The organisation of kind city holds the root and is never
/// removed. Returns the new version and the signed document.
pub fn remove_member(
    fed: &FederationDir,
    org: &str,
    reason: &str,
    now_unix: i64,
    above_version: u64,
) -> Result<(u64, Vec<u8>), PkiError> {
    let mut doc = fed.load_membership()?;
    match doc.member(org) {
        None => return Err(PkiError::NotMember(org.to_owned())),
        Some(m) if m.kind == OrgKind::City => {
            return Err(PkiError::RootOrganisation(org.to_owned()));
        }
        Some(_) => {}
    }
    doc.remove_member(org, reason, now_unix);
    doc.version = doc.version.max(above_version.saturating_add(1));
    let json = fed.store_membership(&doc)?;
    Ok((doc.version, json))
}

/// Records (or replaces) node entries in the directory and re-signs it
/// with a version above both the file's and `above_version`. Each entry's
/// organisation must be a member. Returns the new version and the signed
/// document.
pub fn set_nodes(
    fed: &FederationDir,
    entries: &[NodeEntry],
    now_unix: i64,
    above_version: u64,
) -> Result<(u64, Vec<u8>), PkiError> {
    let mut doc = fed.load_membership()?;
    for e in entries {
        if doc.member(&e.org).is_none() {
            return Err(PkiError::NotMember(e.org.clone()));
        }
        doc.nodes.retain(|n| !(n.org == e.org && n.node == e.node));
        doc.nodes.push(e.clone());
    }
    doc.version = doc
        .version
        .saturating_add(1)
        .max(above_version.saturating_add(1));
    doc.issued_at = now_unix;
    let json = fed.store_membership(&doc)?;
    Ok((doc.version, json))
}

/// Records one node entry in the directory (`entry.org` must be a member)
/// and re-signs it with a version above both the file's and
/// `above_version`. The node's other fields are kept: its MLS key package
/// stays while its certificate is the same (a new certificate needs a new
/// key package, bound to it). Returns the new version and the signed
/// document.
pub fn upsert_node(
    fed: &FederationDir,
    entry: &NodeEntry,
    now_unix: i64,
    above_version: u64,
) -> Result<(u64, Vec<u8>), PkiError> {
    let doc = fed.load_membership()?;
    let mut e = entry.clone();
    if let Some(old) = doc
        .nodes
        .iter()
        .find(|n| n.org == e.org && n.node == e.node)
        && old.cert_sha256 == e.cert_sha256
        && e.mls_key_package.is_empty()
    {
        e.mls_key_package.clone_from(&old.mls_key_package);
    }
    set_nodes(fed, &[e], now_unix, above_version)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;
    use crate::clock::ManualClock;
    use crate::pki::verifier::Trust;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    const NOW: i64 = 1_800_000_000;

    fn setup(dir: &Path) -> FederationDir {
        let fed = init_federation(&dir.join("city"), "munich", NOW).unwrap();
        for (org, kind) in [("swm", OrgKind::Utility), ("tum", OrgKind::University)] {
            let csr = org_request(&dir.join(org), "munich", org).unwrap();
            org_sign(&fed, &csr, kind, org, &dir.join(org).join(ORG_CERT), NOW).unwrap();
        }
        fed
    }

    fn trust(fed: &FederationDir, at: i64) -> std::sync::Arc<Trust> {
        let root = CertificateDer::from_pem_file(fed.root_cert()).unwrap();
        Trust::new(
            root.to_vec(),
            &std::fs::read(fed.membership()).unwrap(),
            ManualClock::at_unix_ms(at * 1000),
        )
        .unwrap()
    }

    fn chain(path: &Path) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(path)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn issued_user_authenticates_with_kind_and_role_until_expiry() {
        let d = tempfile::tempdir().unwrap();
        let fed = setup(d.path());
        let tum = OrgCa::load(&d.path().join("tum")).unwrap();
        let f = tum
            .issue_user(
                "alice",
                Role::Researcher,
                USER_DAYS,
                &d.path().join("u"),
                NOW,
            )
            .unwrap();
        let c = chain(&f.chain);
        let p = trust(&fed, NOW + 60).authenticate(&c[0], &c[1..]).unwrap();
        assert_eq!(p.organisation, "tum");
        assert_eq!(p.organisation_kind, OrgKind::University);
        assert_eq!(p.role, Some(Role::Researcher));
        // 30 days later the certificate is expired: the node clock decides.
        let later = NOW + (USER_DAYS + 1) * 86_400;
        assert_eq!(
            trust(&fed, later).authenticate(&c[0], &c[1..]),
            Err(crate::pki::AuthError::Expired)
        );
    }

    /// The per-request re-check follows the membership: a removed
    /// organisation, a changed kind and a revoked organisation CA refuse a
    /// principal bound before the change.
    #[test]
    fn recheck_follows_membership_changes_of_the_organisation() {
        let d = tempfile::tempdir().unwrap();
        let fed = setup(d.path());
        let tum = OrgCa::load(&d.path().join("tum")).unwrap();
        let f = tum
            .issue_user("alice", Role::Researcher, 30, &d.path().join("u"), NOW)
            .unwrap();
        let c = chain(&f.chain);
        let t = trust(&fed, NOW + 60);
        let p = t.authenticate(&c[0], &c[1..]).unwrap();
        assert_eq!(t.recheck(&p), Ok(()));
        let install = |t: &Trust, doc: &mut crate::pki::membership::MembershipDoc| {
            doc.version += 1;
            fed.store_membership(doc).unwrap();
            t.install_membership(&std::fs::read(fed.membership()).unwrap())
                .unwrap();
        };
        // The kind changes: decisions made on the old kind stop.
        let mut doc = fed.load_membership().unwrap();
        for m in &mut doc.members {
            if m.org == "tum" {
                m.kind = OrgKind::Company;
            }
        }
        install(&t, &mut doc);
        assert_eq!(t.recheck(&p), Err(crate::pki::AuthError::KindChanged));
        // The organisation leaves the federation.
        let t = trust(&fed, NOW + 60);
        let p = t.authenticate(&c[0], &c[1..]).unwrap();
        doc.members.retain(|m| m.org != "tum");
        install(&t, &mut doc);
        assert_eq!(t.recheck(&p), Err(crate::pki::AuthError::NotAMemberCa));
        // Its CA is revoked (the leaf itself is not on the deny list).
        let fed2 = setup(&d.path().join("again"));
        let tum2 = OrgCa::load(&d.path().join("again/tum")).unwrap();
        let f2 = tum2
            .issue_user("alice", Role::Researcher, 30, &d.path().join("u2"), NOW)
            .unwrap();
        let c2 = chain(&f2.chain);
        let t2 = trust(&fed2, NOW + 60);
        let p2 = t2.authenticate(&c2[0], &c2[1..]).unwrap();
        revoke(
            &fed2,
            &d.path().join("again/tum").join(ORG_CERT),
            "left",
            NOW,
        )
        .unwrap();
        t2.install_membership(&std::fs::read(fed2.membership()).unwrap())
            .unwrap();
        assert_eq!(t2.recheck(&p2), Err(crate::pki::AuthError::Revoked));
    }

    #[test]
    fn renewal_keeps_identity_and_role_with_a_new_key() {
        let d = tempfile::tempdir().unwrap();
        let fed = setup(d.path());
        let swm = OrgCa::load(&d.path().join("swm")).unwrap();
        let old = swm
            .issue_user("dpo", Role::Dpo, 30, &d.path().join("old"), NOW)
            .unwrap();
        let later = NOW + 25 * 86_400;
        let new = swm
            .renew_user(&old.chain, 30, &d.path().join("new"), later)
            .unwrap();
        assert_ne!(
            std::fs::read(&old.key).unwrap(),
            std::fs::read(&new.key).unwrap()
        );
        let c = chain(&new.chain);
        let p = trust(&fed, NOW + 40 * 86_400)
            .authenticate(&c[0], &c[1..])
            .unwrap();
        assert_eq!((p.subject.name(), p.role), ("dpo", Some(Role::Dpo)));
        // Another organisation's CA does not renew swm's users.
        let tum = OrgCa::load(&d.path().join("tum")).unwrap();
        assert!(
            tum.renew_user(&old.chain, 30, &d.path().join("x"), later)
                .is_err()
        );
    }

    #[test]
    fn org_sign_refuses_foreign_federation_duplicates_and_garbage() {
        let d = tempfile::tempdir().unwrap();
        let fed = setup(d.path());
        let csr = org_request(&d.path().join("b"), "berlin", "bvg").unwrap();
        let e = org_sign(
            &fed,
            &csr,
            OrgKind::Company,
            "x",
            &d.path().join("b.crt"),
            NOW,
        )
        .unwrap_err();
        assert!(e.to_string().contains("federation `berlin`"), "{e}");
        let csr = org_request(&d.path().join("swm2"), "munich", "swm").unwrap();
        let e = org_sign(
            &fed,
            &csr,
            OrgKind::Company,
            "x",
            &d.path().join("s.crt"),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(e, PkiError::AlreadyMember(_)));
        let junk = d.path().join("junk.csr");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        )
        .unwrap();
        assert!(matches!(
            org_sign(
                &fed,
                &junk,
                OrgKind::Company,
                "x",
                &d.path().join("j.crt"),
                NOW
            ),
            Err(PkiError::BadCsr { .. })
        ));
        assert!(matches!(
            org_request(&d.path().join("c"), "munich", "Bad Name"),
            Err(PkiError::InvalidOrgName(_))
        ));
        // Membership now lists two organisations, version 3 (init + 2 signs).
        let doc = fed.load_membership().unwrap();
        assert_eq!(doc.version, 3);
        assert_eq!(doc.members.len(), 2);
    }

    #[test]
    fn keys_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        setup(d.path());
        for k in ["city/root-ca.key", "swm/org-ca.key"] {
            let mode = std::fs::metadata(d.path().join(k))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{k}");
        }
        assert!(matches!(
            org_request(&d.path().join("swm"), "munich", "swm"),
            Err(PkiError::Exists { .. })
        ));
    }

    #[test]
    fn revoking_twice_bumps_the_version_once() {
        let d = tempfile::tempdir().unwrap();
        let fed = setup(d.path());
        let swm = OrgCa::load(&d.path().join("swm")).unwrap();
        let f = swm
            .issue_user("a", Role::Citizen, 30, &d.path().join("u"), NOW)
            .unwrap();
        revoke(&fed, &f.chain, "lost", NOW).unwrap();
        revoke(&fed, &f.chain, "lost", NOW).unwrap();
        let doc = fed.load_membership().unwrap();
        assert_eq!((doc.version, doc.denied.len()), (4, 1));
    }

    #[test]
    fn removal_refuses_the_city_and_strangers_and_outranks_the_node() {
        let d = tempfile::tempdir().unwrap();
        let fed = setup(d.path());
        let csr = org_request(&d.path().join("stadt"), "munich", "stadt").unwrap();
        org_sign(
            &fed,
            &csr,
            OrgKind::City,
            "Stadt",
            &d.path().join("stadt").join(ORG_CERT),
            NOW,
        )
        .unwrap();
        assert!(matches!(
            remove_member(&fed, "stadt", "x", NOW, 0),
            Err(PkiError::RootOrganisation(_))
        ));
        assert!(matches!(
            remove_member(&fed, "nobody", "x", NOW, 0),
            Err(PkiError::NotMember(_))
        ));
        let t = trust(&fed, NOW);
        // The node already trusts a higher version than the file: the
        // removal is signed above it, so no node takes it as a no-op.
        let (v, json) = remove_member(&fed, "tum", "left", NOW, 40).unwrap();
        assert_eq!(v, 41);
        assert_eq!(t.install_membership(&json).unwrap(), 41);
        let doc = fed.load_membership().unwrap();
        assert!(doc.member("tum").is_none());
        let tum_ca = cert_facts_from_pem(
            Path::new("tum"),
            &std::fs::read_to_string(d.path().join("tum").join(ORG_CERT)).unwrap(),
        )
        .unwrap();
        assert!(t.snapshot().is_denied(&tum_ca.sha256));
    }

    /// An onboarding certificate is no member certificate: the member
    /// path refuses it; the onboarding path binds it to its invitation and
    /// refuses member leaves and other organisations' roots.
    #[test]
    fn onboarding_certificates_are_refused_as_members_and_bound_to_their_invitation() {
        let d = tempfile::tempdir().unwrap();
        let fed = setup(d.path());
        let id = "0123456789abcdef0123456789abcdef";
        let o = issue_onboarding(&fed, "fz", id, NOW + 3600, NOW).unwrap();
        let leaf = CertificateDer::from_pem_slice(o.cert_pem.as_bytes()).unwrap();
        let t = trust(&fed, NOW + 60);
        assert_eq!(
            t.authenticate(&leaf, &[]),
            Err(crate::pki::AuthError::NotAMemberCa)
        );
        let bound = t.authenticate_onboarding(&leaf).unwrap();
        assert_eq!(
            (bound.organisation.as_str(), bound.invitation.as_str()),
            ("fz", id)
        );
        assert_eq!(bound.certificate_sha256, o.sha256);
        // Expired with its lifetime.
        assert_eq!(
            trust(&fed, NOW + 7200).authenticate_onboarding(&leaf),
            Err(crate::pki::AuthError::Expired)
        );
        // A member's node certificate is no onboarding certificate.
        let swm = OrgCa::load(&d.path().join("swm")).unwrap();
        let f = swm
            .issue_node("swm-1", &[], &[], 30, &d.path().join("n"), NOW)
            .unwrap();
        let c = chain(&f.chain);
        assert!(t.authenticate_onboarding(&c[0]).is_err());
        // Another federation's onboarding certificate does not chain.
        let other = init_federation(&d.path().join("berlin"), "berlin", NOW).unwrap();
        let o2 = issue_onboarding(&other, "fz", id, NOW + 3600, NOW).unwrap();
        let leaf2 = CertificateDer::from_pem_slice(o2.cert_pem.as_bytes()).unwrap();
        assert!(matches!(
            t.authenticate_onboarding(&leaf2),
            Err(crate::pki::AuthError::UnknownIssuer(_))
        ));
    }

    /// Recording a node keeps its MLS key package while its certificate
    /// stays the same, and drops it with a new certificate.
    #[test]
    fn upserting_a_node_keeps_its_key_package_for_the_same_certificate() {
        let d = tempfile::tempdir().unwrap();
        let fed = setup(d.path());
        let entry = |cert: &str, kp: &str| NodeEntry {
            org: "swm".into(),
            node: "swm-1".into(),
            endpoint: "https://127.0.0.1:7401".into(),
            cert_sha256: cert.into(),
            mls_key_package: kp.into(),
        };
        set_nodes(&fed, &[entry("aa", "KP")], NOW, 0).unwrap();
        let mut moved = entry("aa", "");
        moved.endpoint = "https://127.0.0.1:7402".into();
        let (v, _) = upsert_node(&fed, &moved, NOW, 0).unwrap();
        let doc = fed.load_membership().unwrap();
        assert_eq!(doc.version, v);
        assert_eq!(doc.nodes.len(), 1);
        assert_eq!(
            (
                doc.nodes[0].endpoint.as_str(),
                doc.nodes[0].mls_key_package.as_str()
            ),
            ("https://127.0.0.1:7402", "KP")
        );
        upsert_node(&fed, &entry("bb", ""), NOW, 0).unwrap();
        assert!(
            fed.load_membership().unwrap().nodes[0]
                .mls_key_package
                .is_empty()
        );
        assert!(matches!(
            upsert_node(
                &fed,
                &NodeEntry {
                    org: "nobody".into(),
                    ..entry("cc", "")
                },
                NOW,
                0
            ),
            Err(PkiError::NotMember(_))
        ));
    }
}
