//! The `system/` scopes a client may be registered with, and the scopes a token request
//! is granted; `?code=` lists go through the one parser, [`crate::auth::loinc_types`].

use super::*;
use crate::auth::{Scope, ScopeContext};

pub use crate::auth::loinc_query_types;

/// The scopes to grant: the requested ones (space-separated, duplicates dropped), each of
/// which must be one of the client's allowed scopes verbatim; all of those when none are
/// requested.
pub fn grant_scopes(
    requested: Option<&str>,
    allowed: &[String],
) -> Result<Vec<String>, OAuthError> {
    let requested: Vec<&str> = requested.map_or_else(Vec::new, |r| r.split_whitespace().collect());
    if requested.is_empty() {
        return if allowed.is_empty() {
            Err(invalid_scope("this client is allowed no scopes"))
        } else {
            Ok(allowed.to_vec())
        };
    }
    let mut out: Vec<String> = Vec::new();
    for s in requested {
        if !allowed.iter().any(|a| a == s) {
            return Err(invalid_scope(
                "a requested scope is not among the scopes this client is allowed",
            ));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    Ok(out)
}

/// Whether `s` is a SMART v2 `system/` scope this gateway can honour:
/// `system/{Resource|*}.{perms}` ([`Scope::parse`]) with SMART v2 perms (an in-order
/// subset of `cruds`; registration takes no v1 `read`/`write`), optionally
/// narrowed on Observation by LOINC code (`?code=http://loinc.org|55423-8[,...]`) to codes of
/// the record types the gateway holds.
pub fn is_valid_system_scope(s: &str) -> bool {
    let Some(scope) = Scope::parse(s) else {
        return false;
    };
    let query_ok = match scope.query {
        None => true,
        Some(q) => scope.resource == Some("Observation") && loinc_query_types(q).is_some(),
    };
    scope.context == ScopeContext::System && !scope.v1 && query_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use phr_schema::RecordType;

    #[test]
    fn system_scopes_only() {
        for ok in [
            "system/Observation.rs",
            "system/Observation.r",
            "system/*.rs",
            "system/Patient.cruds",
            "system/Observation.rs?code=http://loinc.org|55423-8",
            "system/Observation.rs?code=http://loinc.org|93832-4,http://loinc.org|8867-4",
        ] {
            assert!(is_valid_system_scope(ok), "{ok}");
        }
        for bad in [
            "",
            "patient/Observation.rs",
            "user/Observation.rs",
            "system/Observation",
            "system/Observation.",
            "system/Observation.sr",
            "system/Observation.rr",
            "system/Observation.read",
            "system/observation.rs",
            "system/Observation.rs?code=http://loinc.org|1234-5",
            "system/Observation.rs?code=http://snomed.info/sct|55423-8",
            "system/Observation.rs?category=vital-signs",
            "system/Patient.rs?code=http://loinc.org|55423-8",
            "system/Observation.rs system/Patient.rs",
            "phr:admin",
            "openid",
        ] {
            assert!(!is_valid_system_scope(bad), "{bad}");
        }
        assert_eq!(
            loinc_query_types("code=http://loinc.org|93832-4,http://loinc.org|8867-4"),
            Some(vec![RecordType::SleepEpisode, RecordType::HeartRate])
        );
    }

    #[test]
    fn requested_scopes_must_be_allowed() {
        let allowed = vec![
            "system/Observation.rs?code=http://loinc.org|55423-8".to_owned(),
            "system/Patient.r".to_owned(),
        ];
        assert_eq!(grant_scopes(None, &allowed).unwrap(), allowed);
        assert_eq!(grant_scopes(Some("  "), &allowed).unwrap(), allowed);
        assert_eq!(
            grant_scopes(Some("system/Patient.r system/Patient.r"), &allowed).unwrap(),
            ["system/Patient.r"]
        );
        for bad in [
            "system/Observation.rs",
            "system/*.rs",
            "patient/Observation.rs",
        ] {
            assert_eq!(
                grant_scopes(Some(bad), &allowed).unwrap_err().code,
                OAuthErrorCode::InvalidScope
            );
        }
    }
}
