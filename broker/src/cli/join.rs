//! The joining organisation's side of `allmende federation join`: with the
//! invitation file from the city, create the organisation CA key locally
//! (it never leaves `--dir`), send only the signing request to the city node
//! over mTLS (the invitation's onboarding certificate, the city checked
//! against the invitation's root only), check and write what comes back
//! (organisation CA certificate, root certificate, signed membership), and
//! optionally issue a node certificate and record the node's directory entry
//! with that node's own certificate (`docs/federation.md` § Joining).

use super::{Failure, exit, status_failure};
use crate::invitations::{INVITATION_FORMAT, InvitationFile};
use crate::pki::ca::{self, OrgCa, PkiError, cert_facts_from_pem};
use crate::pki::membership::SignedMembership;
use crate::tls::TlsMaterial;
use allmende_proto::v1 as pb;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The node to set up while joining.
#[derive(Debug, Clone)]
pub struct NodeRequest {
    pub name: String,
    /// Its gRPC endpoint as the directory lists it (`https://host:port`).
    pub endpoint: String,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// What a join produced.
#[derive(Debug, Clone)]
pub struct JoinOutcome {
    pub organisation: String,
    pub kind: crate::pki::OrgKind,
    pub version: u64,
    pub org_dir: PathBuf,
    /// The node's directory (`node.key`, `node.crt`, `root-ca.crt`,
    /// `membership.json`) and the directory version after its entry.
    pub node: Option<(PathBuf, u64)>,
}

fn input(msg: String) -> Failure {
    Failure::new(exit::INPUT, msg)
}

fn pki(e: PkiError) -> Failure {
    let code = match e {
        PkiError::Rcgen(_) => exit::FAILED,
        _ => exit::INPUT,
    };
    Failure::new(code, e.to_string())
}

/// Reads and checks an invitation file.
pub fn read_invitation(path: &Path) -> Result<InvitationFile, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| input(format!("cannot read invitation `{}`: {e}", path.display())))?;
    let file: InvitationFile = serde_json::from_slice(&bytes).map_err(|e| {
        input(format!(
            "`{}` is not an invitation file: {e}",
            path.display()
        ))
    })?;
    if file.format != INVITATION_FORMAT {
        return Err(input(format!(
            "invitation `{}` has format `{}`, this build reads `{INVITATION_FORMAT}`",
            path.display(),
            file.format
        )));
    }
    let root = cert_facts_from_pem(path, &file.root_cert_pem).map_err(pki)?;
    if root.sha256 != file.root_sha256 {
        return Err(input(format!(
            "invitation `{}`: the root certificate does not match its fingerprint",
            path.display()
        )));
    }
    if !file.city_endpoint.starts_with("https://") {
        return Err(input(format!(
            "invitation `{}` names no `https://` endpoint of the city node",
            path.display()
        )));
    }
    Ok(file)
}

async fn channel(endpoint: &str, m: &TlsMaterial) -> Result<tonic::transport::Channel, Failure> {
    crate::tls::connect(endpoint, m).await.map_err(|e| {
        Failure::new(
            exit::UNREACHABLE,
            format!(
                "cannot reach the city node at `{endpoint}`: {}",
                crate::client::error_chain(&e)
            ),
        )
    })
}

/// The organisation CA request in `dir`: made now, or the one left by an
/// earlier attempt that got no certificate.
fn org_request(dir: &Path, file: &InvitationFile) -> Result<String, Failure> {
    if dir.join(ca::ORG_CERT).exists() {
        return Err(input(format!(
            "`{}` already holds an organisation CA certificate; join into an empty directory",
            dir.display()
        )));
    }
    let csr = dir.join(ca::ORG_CSR);
    if !(dir.join(ca::ORG_KEY).exists() && csr.exists()) {
        ca::org_request(dir, &file.federation, &file.organisation).map_err(pki)?;
    }
    std::fs::read_to_string(&csr)
        .map_err(|e| input(format!("cannot read `{}`: {e}", csr.display())))
}

/// Joins the federation with the invitation `file`, writing the
/// organisation's files into `dir`; with `node`, also issues the node's
/// certificate into `<dir>/nodes/<name>` and records its directory entry.
pub async fn join(
    file: &InvitationFile,
    dir: &Path,
    node: Option<&NodeRequest>,
    now: i64,
) -> Result<JoinOutcome, Failure> {
    let csr_pem = org_request(dir, file)?;
    let onboarding = TlsMaterial {
        chain_pem: file.onboarding_cert_pem.clone(),
        key_pem: file.onboarding_key_pem.clone(),
        root_pem: file.root_cert_pem.clone(),
    };
    let r = pb::federation_client::FederationClient::new(
        channel(&file.city_endpoint, &onboarding).await?,
    )
    .join(pb::JoinRequest {
        secret: file.secret.clone(),
        csr_pem,
    })
    .await
    .map_err(|s| status_failure(&s))?
    .into_inner();
    // What came back must be what was asked for: the same root, a
    // membership signed by it listing this organisation with the invited
    // kind and exactly the returned CA certificate.
    let bad = |m: &str| Failure::new(exit::FAILED, format!("the city's answer {m}"));
    if r.root_cert_pem != file.root_cert_pem {
        return Err(bad("names another root certificate than the invitation"));
    }
    let root = cert_facts_from_pem(dir, &file.root_cert_pem).map_err(pki)?;
    let doc = SignedMembership::from_json(&r.signed_membership)
        .and_then(|s| s.verify(&root.public_key))
        .map_err(|e| bad(&format!("holds no valid membership: {e}")))?;
    let ca_cert = cert_facts_from_pem(dir, &r.org_ca_cert_pem).map_err(pki)?;
    let member = doc
        .member(&file.organisation)
        .ok_or_else(|| bad("does not list the organisation"))?;
    if member.kind != file.kind || member.ca_cert_sha256 != ca_cert.sha256 {
        return Err(bad(
            "lists the organisation with another kind or CA certificate",
        ));
    }
    ca::write_public(&dir.join(ca::ORG_CERT), r.org_ca_cert_pem.as_bytes()).map_err(pki)?;
    ca::write_public(&dir.join(ca::ROOT_CERT), file.root_cert_pem.as_bytes()).map_err(pki)?;
    ca::write_public(&dir.join(ca::MEMBERSHIP), &r.signed_membership).map_err(pki)?;
    let mut out = JoinOutcome {
        organisation: file.organisation.clone(),
        kind: member.kind,
        version: doc.version,
        org_dir: dir.to_path_buf(),
        node: None,
    };
    if let Some(n) = node {
        out.node = Some(register_node(file, dir, n, &r.signed_membership, now).await?);
    }
    Ok(out)
}

/// Issues the node's certificate, writes what a node config expects beside
/// it, and records the node's directory entry at the city node with that
/// certificate.
async fn register_node(
    file: &InvitationFile,
    dir: &Path,
    n: &NodeRequest,
    membership: &[u8],
    now: i64,
) -> Result<(PathBuf, u64), Failure> {
    let nd = dir.join("nodes").join(&n.name);
    let leaf = OrgCa::load(dir)
        .map_err(pki)?
        .issue_node(&n.name, &n.dns, &n.ips, ca::NODE_DAYS, &nd, now)
        .map_err(pki)?;
    ca::write_public(&nd.join(ca::ROOT_CERT), file.root_cert_pem.as_bytes()).map_err(pki)?;
    ca::write_public(&nd.join(ca::MEMBERSHIP), membership).map_err(pki)?;
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| input(format!("cannot read `{}`: {e}", p.display())))
    };
    let material = TlsMaterial {
        chain_pem: read(&leaf.chain)?,
        key_pem: read(&leaf.key)?,
        root_pem: file.root_cert_pem.clone(),
    };
    let r = pb::federation_client::FederationClient::new(
        channel(&file.city_endpoint, &material).await?,
    )
    .register_node(pb::RegisterNodeRequest {
        endpoint: n.endpoint.clone(),
    })
    .await
    .map_err(|s| status_failure(&s))?
    .into_inner();
    let own = cert_facts_from_pem(&leaf.chain, &material.chain_pem)
        .map_err(pki)?
        .sha256;
    if r.certificate_sha256 != own {
        return Err(Failure::new(
            exit::FAILED,
            "the city recorded another certificate for the node than its own",
        ));
    }
    Ok((nd, r.version))
}
