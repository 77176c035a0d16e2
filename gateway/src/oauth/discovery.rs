//! What the gateway publishes for clients: its JWK Set and the SMART configuration.

use phr_schema::RecordType;

use super::*;

/// The gateway's token-signing public key as a JWK Set (what resource servers verify
/// access tokens with).
pub fn gateway_jwks(keys: &Keys) -> serde_json::Value {
    serde_json::json!({"keys": [{
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url_encode(&keys.public_key()),
        "kid": keys.kid(),
        "alg": "EdDSA",
        "use": "sig",
    }]})
}

/// `/.well-known/smart-configuration` (SMART App Launch v2, Backend Services).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SmartConfiguration {
    pub issuer: String,
    pub jwks_uri: String,
    pub token_endpoint: String,
    pub grant_types_supported: Vec<String>,
    pub token_endpoint_auth_methods_supported: Vec<String>,
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    pub scopes_supported: Vec<String>,
    pub capabilities: Vec<String>,
    pub response_types_supported: Vec<String>,
}

/// The discovery document, every URL absolute from the issuer.
pub fn smart_configuration(issuer: &str) -> SmartConfiguration {
    let base = issuer.trim_end_matches('/');
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    let mut scopes = vec!["system/Observation.rs".to_owned()];
    scopes.extend(RecordType::ALL.iter().map(|t| {
        format!(
            "system/Observation.rs?code={}|{}",
            phr_schema::fhir::LOINC_SYSTEM,
            t.loinc().code
        )
    }));
    SmartConfiguration {
        issuer: issuer.to_owned(),
        jwks_uri: format!("{base}{JWKS_PATH}"),
        token_endpoint: token_endpoint(issuer),
        grant_types_supported: strings(&[GRANT_CLIENT_CREDENTIALS]),
        token_endpoint_auth_methods_supported: strings(&AUTH_METHODS),
        token_endpoint_auth_signing_alg_values_supported: strings(&[
            "EdDSA", "ES384", "RS384", "ES256",
        ]),
        scopes_supported: scopes,
        capabilities: strings(&[
            "client-confidential-asymmetric",
            "client-confidential-symmetric",
        ]),
        response_types_supported: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_keys::*;
    use super::*;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::Value;
    #[test]
    fn discovery_documents() {
        let s = setup();
        let c = smart_configuration("https://gw.test/");
        assert_eq!(c.token_endpoint, "https://gw.test/oauth/token");
        assert_eq!(c.jwks_uri, "https://gw.test/.well-known/jwks.json");
        assert!(!c.scopes_supported.is_empty());
        assert!(c.scopes_supported.iter().all(|s| is_valid_system_scope(s)));
        let jwks = gateway_jwks(&s.keys);
        assert_eq!(jwks["keys"][0]["kid"], s.keys.kid());
        let x = b64_decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap();
        assert_eq!(x, s.keys.public_key());
        // A token the gateway issued verifies with the published key.
        let set: JwkSet = serde_json::from_value(jwks).unwrap();
        let token = s
            .keys
            .issue("a", "", TimeDelta::minutes(1), Utc::now())
            .unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.validate_aud = false;
        assert!(jsonwebtoken::decode::<Value>(
            &token,
            &DecodingKey::from_jwk(&set.keys[0]).unwrap(),
            &v
        )
        .is_ok());
    }
}
