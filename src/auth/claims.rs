//! What a token grants: the claims read from it, its scopes, and the caller they make.

use serde::Deserialize;

use crate::domain::{AccountId, ApiError};

pub const SCOPE_READ: &str = "media:read";
pub const SCOPE_WRITE: &str = "media:write";
/// The admin listener's purge. Only a token whose `scope` names it has it: a token without
/// a `scope` claim may read and write, but is no admin.
pub const SCOPE_ADMIN: &str = "media:admin";

/// The claims media-node reads itself. `exp`, `nbf`, `iss` and `aud` are checked by the
/// validation (where NumericDates may have fractions and `aud` may be an array), so they
/// are not read here: a type of our own for them could only refuse what RFC 7519 allows.
#[derive(Debug, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub scope: Option<String>,
}

/// Scope names of a `scope` claim, split the one way the server and `token` both use.
pub(super) fn split_scopes(scope: &str) -> Vec<String> {
    scope.split_whitespace().map(str::to_owned).collect()
}

/// Who is calling, once the token checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account: AccountId,
    /// `None` when the token has no `scope` claim: such a token may read and write.
    pub(super) scopes: Option<Vec<String>>,
}

impl Caller {
    /// 403 unless the token allows `scope`: a token without a `scope` claim allows
    /// `media:read` and `media:write`.
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        match &self.scopes {
            None => Ok(()),
            Some(_) => self.require_named(scope),
        }
    }

    /// 403 unless the token's `scope` claim names `scope`; a token without the claim has
    /// none of these (`media:admin`).
    pub fn require_named(&self, scope: &str) -> Result<(), ApiError> {
        match &self.scopes {
            Some(granted) if granted.iter().any(|s| s == scope) => Ok(()),
            None => Err(ApiError::Forbidden(format!(
                "the token has no scope claim, and {scope} must be named in it"
            ))),
            Some(_) => Err(ApiError::Forbidden(format!(
                "the token's scope does not include {scope}"
            ))),
        }
    }
}
