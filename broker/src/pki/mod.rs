//! Federation PKI: identities, the onboarding flow (root, organisation CAs,
//! leaves), the signed membership with its deny list, and the client
//! certificate verifier. See `ARCHITECTURE.md` § Identity and trust.

pub mod ca;
pub mod identity;
pub mod membership;
pub mod onboarding;
pub mod verifier;

pub use identity::{OrgKind, Principal, Role, Subject};
pub use verifier::{AuthError, Trust};
