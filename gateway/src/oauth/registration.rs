//! What a new client must pass before it is registered: its scopes and its JWK Set.

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::DecodingKey;

use super::*;
use crate::store::clients::NewClient;

/// Why a client registration was refused: a stable code and a fixed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub code: &'static str,
    pub message: &'static str,
}

const fn invalid(code: &'static str, message: &'static str) -> Invalid {
    Invalid { code, message }
}

const INVALID_JWKS_KEY: Invalid = invalid(
    "invalid_jwks",
    "each key must be a public OKP Ed25519, EC P-256 or P-384, or RSA (2048 bits or more) \
     signing key, with alg EdDSA, ES256, ES384 or RS384 (matching the key) if alg is given",
);

/// Checks a client before it is registered: id, name, scopes, credentials, keys.
pub fn check_new_client(c: &NewClient) -> Result<(), Invalid> {
    if !phr_schema::envelope::is_valid_id(&c.client_id) {
        return Err(invalid(
            "invalid_client_id",
            "client_id must be 1-64 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    if c.name.trim().is_empty()
        || c.name.chars().count() > 200
        || c.name.chars().any(char::is_control)
    {
        return Err(invalid(
            "invalid_name",
            "name must be 1-200 characters without control characters",
        ));
    }
    if c.allowed_scopes.is_empty()
        || c.allowed_scopes.len() > MAX_SCOPES
        || !c.allowed_scopes.iter().all(|s| is_valid_system_scope(s))
    {
        return Err(invalid(
            "invalid_scope",
            "scopes must be 1-50 SMART v2 system scopes, e.g. system/Observation.rs or \
             system/Observation.rs?code=http://loinc.org|55423-8",
        ));
    }
    if !c.secret && c.jwks.is_none() {
        return Err(invalid(
            "invalid_credentials",
            "a client needs a secret, a jwks, or both",
        ));
    }
    if let Some(j) = &c.jwks {
        check_jwks(j)?;
    }
    Ok(())
}

/// Checks a client's JWK Set and parses it: 1 to [`MAX_JWKS_KEYS`] public signing keys of a
/// supported type (see [`key_algorithm`]), well-formed, RSA of 2048 bits or more, `kid`s
/// unique. Private key members are refused outright.
pub fn check_jwks(v: &serde_json::Value) -> Result<JwkSet, Invalid> {
    let keys = v
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .filter(|_| v.as_object().is_some())
        .ok_or(invalid(
            "invalid_jwks",
            "jwks must be a JWK Set: {\"keys\": [...]}",
        ))?;
    if keys.is_empty() || keys.len() > MAX_JWKS_KEYS {
        return Err(invalid("invalid_jwks", "jwks must hold 1 to 10 keys"));
    }
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let obj = k
            .as_object()
            .ok_or(invalid("invalid_jwks", "each key must be a JSON object"))?;
        if PRIVATE_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
            return Err(invalid(
                "invalid_jwks",
                "jwks must hold public keys only (no d, p, q, dp, dq, qi, oth or k)",
            ));
        }
        let jwk: Jwk = serde_json::from_value(k.clone()).map_err(|_| INVALID_JWKS_KEY)?;
        let alg = key_algorithm(&jwk).ok_or(INVALID_JWKS_KEY)?;
        let len = |s: &str| b64_decode(s).map(|b| b.len());
        let material_ok = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(p) => len(&p.x) == Some(32),
            AlgorithmParameters::EllipticCurve(p) => {
                let want = if alg == Algorithm::ES384 { 48 } else { 32 };
                len(&p.x) == Some(want) && len(&p.y) == Some(want)
            }
            AlgorithmParameters::RSA(p) => {
                let n = b64_decode(&p.n).unwrap_or_default();
                let significant = n.iter().skip_while(|b| **b == 0).count();
                significant >= MIN_RSA_MODULUS_BYTES
                    && len(&p.e).is_some_and(|l| (1..=8).contains(&l))
            }
            _ => false,
        };
        if !material_ok || DecodingKey::from_jwk(&jwk).is_err() {
            return Err(INVALID_JWKS_KEY);
        }
        if let Some(kid) = &jwk.common.key_id {
            if out
                .iter()
                .any(|o: &Jwk| o.common.key_id.as_deref() == Some(kid.as_str()))
            {
                return Err(invalid("invalid_jwks", "key ids (kid) must be unique"));
            }
        }
        out.push(jwk);
    }
    Ok(JwkSet { keys: out })
}

#[cfg(test)]
mod tests {
    use super::super::test_keys::*;
    use super::*;
    use serde_json::{json, Value};
    #[test]
    fn jwks_are_checked_at_registration() {
        let (ed, _) = ed_key("ed");
        let es384 = fixed_key(P384_PKCS8, Algorithm::ES384, "es384");
        let rs384 = fixed_key(RSA2048_PKCS1, Algorithm::RS384, "rs");
        assert_eq!(
            check_jwks(&json!({"keys": [ed.jwk, es384.jwk, rs384.jwk]}))
                .unwrap()
                .keys
                .len(),
            3
        );
        let mut no_alg = ed.jwk.clone();
        no_alg.as_object_mut().unwrap().remove("alg");
        assert!(check_jwks(&json!({"keys": [no_alg]})).is_ok());
        let with = |f: &dyn Fn(&mut Value)| {
            let mut k = ed.jwk.clone();
            f(&mut k);
            check_jwks(&json!({"keys": [k]}))
        };
        for (why, bad) in [
            ("not a set", json!([ed.jwk])),
            ("empty", json!({"keys": []})),
            (
                "eleven keys",
                json!({"keys": vec![no_alg_key(&ed.jwk); 11]}),
            ),
            ("duplicate kids", json!({"keys": [ed.jwk, ed.jwk]})),
            (
                "hmac",
                json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}),
            ),
            (
                "small rsa",
                json!({"keys": [{"kty": "RSA", "n": b64url_encode(&[0xab; 128]), "e": "AQAB"}]}),
            ),
            (
                "rsa pss",
                json!({"keys": [{"kty": "RSA", "alg": "PS256", "n": rs384.jwk["n"], "e": "AQAB"}]}),
            ),
            (
                "p-521",
                json!({"keys": [{"kty": "EC", "crv": "P-521", "x": es384.jwk["x"], "y": es384.jwk["y"]}]}),
            ),
            (
                "p-256 named P-384",
                json!({"keys": [{"kty": "EC", "crv": "P-384",
                "x": b64url_encode(&[1; 32]), "y": b64url_encode(&[1; 32])}]}),
            ),
        ] {
            assert!(check_jwks(&bad).is_err(), "{why} was accepted");
        }
        for (why, f) in [
            (
                "private",
                &(|k: &mut Value| k["d"] = json!("AAAA")) as &dyn Fn(&mut Value),
            ),
            ("enc use", &|k| k["use"] = json!("enc")),
            ("mismatched alg", &|k| k["alg"] = json!("ES256")),
            ("short x", &|k| k["x"] = json!("AAAA")),
            ("not base64", &|k| k["x"] = json!("!!!")),
            ("other curve", &|k| k["crv"] = json!("X25519")),
        ] {
            assert!(with(f).is_err(), "{why} was accepted");
        }
    }

    fn no_alg_key(jwk: &Value) -> Value {
        let mut k = jwk.clone();
        k.as_object_mut().unwrap().remove("kid");
        k
    }
}
