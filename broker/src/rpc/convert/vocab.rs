//! The closed vocabularies on the wire: `allmende_vocab` enums to the
//! `allmende.v1` protobuf enums. The mapping is explicit per value (the
//! protobuf numbers are part of the released contract and do not follow the
//! vocabularies' declaration order). Purposes, classifications, legal bases
//! and the other vocabularies travel as their spelling in strings.

use allmende_proto::v1 as pb;
use allmende_vocab::{OrgKind, Role};

/// An organisation kind on the wire.
pub fn org_kind(k: OrgKind) -> pb::OrgKind {
    match k {
        OrgKind::City => pb::OrgKind::City,
        OrgKind::Utility => pb::OrgKind::Utility,
        OrgKind::University => pb::OrgKind::University,
        OrgKind::Company => pb::OrgKind::Company,
        OrgKind::Public => pb::OrgKind::Public,
    }
}

/// A role on the wire.
pub fn role(r: Role) -> pb::Role {
    match r {
        Role::Dpo => pb::Role::Dpo,
        Role::Steward => pb::Role::Steward,
        Role::Researcher => pb::Role::Researcher,
        Role::Citizen => pb::Role::Citizen,
        Role::Operator => pb::Role::Operator,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value maps to its own protobuf value, never to `UNSPECIFIED`,
    /// and the names agree (`ORG_KIND_CITY` for `city`).
    #[test]
    fn every_value_has_its_own_wire_value() {
        for k in OrgKind::ALL {
            assert_eq!(
                org_kind(*k).as_str_name(),
                format!("ORG_KIND_{}", k.as_str().to_uppercase())
            );
        }
        for r in Role::ALL {
            assert_eq!(
                role(*r).as_str_name(),
                format!("ROLE_{}", r.as_str().to_uppercase())
            );
        }
    }
}
