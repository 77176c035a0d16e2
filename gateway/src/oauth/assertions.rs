//! RFC 7523 client assertions (`private_key_jwt`): the claims, the keys a client may sign
//! with, the signature, and the dummy-key verification that makes a missing client cost the
//! same work.

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{DecodingKey, Validation};

use super::*;

/// What a checked assertion yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    pub client_id: String,
    pub jti: String,
    /// Until when its `jti` must be remembered: past the last instant the assertion is
    /// accepted ([`accepted_until`]) by [`JTI_MARGIN_SECS`].
    pub remember_until: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    jti: Option<String>,
}

/// The algorithm a registered key is for: from its type and curve, which its `alg` (if
/// given) must agree with; `None` for keys that may not sign assertions (`use` other than
/// `sig`, symmetric keys, unsupported curves or algorithms).
pub fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => Algorithm::ES384,
        AlgorithmParameters::RSA(_) => Algorithm::RS384,
        _ => return None,
    };
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(declared) if declared == KeyAlgorithm::from(by_type) => Some(by_type),
        Some(_) => None,
    }
}

/// The last instant at which an assertion expiring at `exp` (seconds, possibly fractional)
/// is accepted: `exp` plus the clock skew tolerated, to the millisecond. The acceptance
/// check and the `jti` memory both derive from this one instant and the same `now`.
pub fn accepted_until(exp: f64) -> DateTime<Utc> {
    let exp_ms = (exp * 1000.0).floor();
    let ms = if exp_ms.is_finite() {
        // Saturating: out-of-range values are refused elsewhere (the five-minute bound).
        (exp_ms as i64).saturating_add(CLOCK_SKEW_SECS * 1000)
    } else {
        0
    };
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Checks everything about a client assertion (RFC 7523 §3) that does not depend on the
/// client's registration, on its claims as they stand (the signature is checked after, by
/// [`verify_signature`], over these same bytes): the header `alg` is one we accept, `iss` =
/// `sub` (the client id), `aud` = the token endpoint, `exp` present, accepted at `now`
/// (until [`accepted_until`]) and at most five minutes ahead, `nbf`/`iat` not in the future,
/// `jti` present. These refusals may be specific: they tell nothing about who is registered.
pub fn check_assertion(
    assertion: &str,
    token_endpoint: &str,
    now: DateTime<Utc>,
) -> Result<VerifiedAssertion, OAuthError> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| {
        invalid_client("the client assertion is not a signed JWT with a supported alg")
    })?;
    if !SIGNING_ALGS.contains(&header.alg) {
        return Err(invalid_client(
            "the client assertion's alg must be EdDSA, ES384, RS384 or ES256",
        ));
    }
    let claims: AssertionClaims =
        jsonwebtoken::dangerous::insecure_decode_claims::<AssertionClaims>(assertion)
            .map_err(|_| invalid_client("the client assertion's claims are malformed"))?;
    let client_id = match (&claims.iss, &claims.sub) {
        (Some(iss), Some(sub)) if iss == sub && !iss.is_empty() => iss.clone(),
        _ => {
            return Err(invalid_client(
                "the client assertion's iss and sub must both be the client_id",
            ))
        }
    };
    let aud_ok = match &claims.aud {
        Some(Audience::One(a)) => a == token_endpoint,
        Some(Audience::Many(a)) => a.len() == 1 && a[0] == token_endpoint,
        None => false,
    };
    if !aud_ok {
        return Err(invalid_client(
            "the client assertion's aud must be this gateway's token endpoint URL",
        ));
    }
    let now_s = now.timestamp();
    let exp = claims
        .exp
        .ok_or(invalid_client("the client assertion needs exp"))?;
    let until = accepted_until(exp);
    if now > until {
        return Err(invalid_client("the client assertion has expired"));
    }
    if exp > (now_s + MAX_ASSERTION_LIFETIME_SECS + CLOCK_SKEW_SECS) as f64 {
        return Err(invalid_client(
            "the client assertion's exp must be at most 5 minutes ahead",
        ));
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > (now_s + CLOCK_SKEW_SECS) as f64)
    {
        return Err(invalid_client(
            "the client assertion is not valid yet (nbf)",
        ));
    }
    if claims
        .iat
        .is_some_and(|iat| iat > (now_s + CLOCK_SKEW_SECS) as f64)
    {
        return Err(invalid_client(
            "the client assertion was issued in the future (iat)",
        ));
    }
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= 255)
        .ok_or(invalid_client(
            "the client assertion needs a jti (1 to 255 characters)",
        ))?;
    Ok(VerifiedAssertion {
        client_id,
        jti,
        remember_until: until + TimeDelta::seconds(JTI_MARGIN_SECS),
    })
}

/// Whether the assertion's signature verifies with one of the client's keys: the one its
/// header's `kid` names (if it names one) or any, of the type its `alg` needs.
pub fn verify_signature(assertion: &str, jwks: &JwkSet) -> bool {
    let Ok(header) = jsonwebtoken::decode_header(assertion) else {
        return false;
    };
    if !SIGNING_ALGS.contains(&header.alg) {
        return false;
    }
    let named: Vec<&Jwk> = match header.kid.as_deref() {
        Some(kid) => jwks.find(kid).into_iter().collect(),
        None => jwks.keys.iter().collect(),
    };
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    named
        .into_iter()
        .filter(|k| key_algorithm(k) == Some(header.alg))
        .filter_map(|k| DecodingKey::from_jwk(k).ok())
        .any(|key| jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation).is_ok())
}

/// Public keys nobody holds the private half of (generated once, the private halves
/// discarded): what an assertion naming an unknown, disabled or keyless client is verified
/// against, so refusing it costs about what refusing a registered client's does.
const DUMMY_EC_P256: (&str, &str) = (
    "spyNxW_HqjDZd9-_T7WPRAjYbAkl_oWDczC_G-vZhjY",
    "jcx4QHV2YJ6qHkyIpsNatZ3o8LEw8SIY2YbRtVWeI6o",
);
const DUMMY_EC_P384: (&str, &str) = (
    "aZekP0eDJoESwxfX5elohO1VAJJ7fc4-5JOcZVJIMLoTKm32jdx_VJQp6z0OPgN6",
    "aBAArPHcaZrHlKq_-RXrN5DeYKo5kB8j9jBgcYgHs6xn2NXjP37jDTzZNsGhSK3V",
);
const DUMMY_RSA_N: &str = "30UGMekKJQa2KMQ505dKxzpuN7kCQn17G-WuKZqgA8Z6td49y2sLbPqUzyBpkBIBFNBl0W7PVDwcTm_TuCgW2RRrO-iuE6PwfPrH-9diYQXYqVGAT8WTHcwm1nwd3lSgmeHLKv1c7wye9A2VNGKKKW0gmtX-BBzo4Sg3wE4Z8oMeJzBzOeTa-r3RBwEEB2xAgHBx2MM1etvYFTNUuvcymjr-PmFApYm6l3OsssuqMzRUze1H7_M7D78jFqUgFNKlu5mhU6kdzZSpNhkVDUScxZNcm8bGFzdJDZwB-T1LtB1iDoq3Fa6dLrhef1N1iw8KHubsOK6EPg5cUbgYPLEAYQ";

/// The dummy key set: one key per accepted algorithm (Ed25519 being the gateway's own
/// token key, whose private half never signs assertions of a client).
fn dummy_jwks(keys: &Keys) -> JwkSet {
    let x = b64url_encode(&keys.public_key());
    let set = serde_json::json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": x},
        {"kty": "EC", "crv": "P-256", "x": DUMMY_EC_P256.0, "y": DUMMY_EC_P256.1},
        {"kty": "EC", "crv": "P-384", "x": DUMMY_EC_P384.0, "y": DUMMY_EC_P384.1},
        {"kty": "RSA", "n": DUMMY_RSA_N, "e": "AQAB"},
    ]});
    serde_json::from_value(set).unwrap_or(JwkSet { keys: Vec::new() })
}

/// One signature verification whose outcome is thrown away (see [`dummy_jwks`]).
pub(super) fn verify_signature_with_dummy(assertion: &str, keys: &Keys) {
    let _ = verify_signature(assertion, &dummy_jwks(keys));
}

/// Verifies a client assertion of `client_id` against its registered keys: the claims
/// ([`check_assertion`]), that they name `client_id`, then the signature
/// ([`verify_signature`]). Every failure that depends on the keys is the one
/// "client authentication failed". The `jti`'s single use is the caller's to enforce (the
/// store).
pub fn verify_assertion(
    assertion: &str,
    client_id: &str,
    jwks: &JwkSet,
    token_endpoint: &str,
    now: DateTime<Utc>,
) -> Result<VerifiedAssertion, OAuthError> {
    let checked = check_assertion(assertion, token_endpoint, now)?;
    if checked.client_id != client_id || !verify_signature(assertion, jwks) {
        return Err(invalid_client(AUTH_FAILED));
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::super::test_keys::*;
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::{json, Value};
    #[test]
    fn every_supported_algorithm_verifies() {
        let now = Utc::now();
        let (ed, _) = ed_key("ed");
        let es384 = fixed_key(P384_PKCS8, Algorithm::ES384, "es384");
        let es256 = fixed_key(P256_PKCS8, Algorithm::ES256, "es256");
        let rs384 = fixed_key(RSA2048_PKCS1, Algorithm::RS384, "rs384");
        let set = jwks(&[&ed, &es384, &es256, &rs384]);
        for k in [&ed, &es384, &es256, &rs384] {
            let c = claims(now);
            let v = verify(&sign(k, &c), &set, now).unwrap_or_else(|e| panic!("{:?}: {e}", k.alg));
            assert_eq!(v.client_id, CLIENT);
            assert_eq!(v.jti, c["jti"].as_str().unwrap());
            assert_eq!(
                v.remember_until.timestamp(),
                c["exp"].as_i64().unwrap() + 30 + 60,
                "exp + 30 s of skew + a minute of margin"
            );
            // Without a kid, every key of the right type is tried.
            assert!(verify(&sign_with(k, None, &claims(now)), &set, now).is_ok());
        }
        // An array aud holding exactly the endpoint is accepted too.
        let mut c = claims(now);
        c["aud"] = json!([token_endpoint(ISSUER)]);
        assert!(verify(&sign(&ed, &c), &set, now).is_ok());
    }

    #[test]
    fn claims_are_checked() {
        let now = Utc::now();
        let t = now.timestamp();
        let (ed, _) = ed_key("ed");
        let set = jwks(&[&ed]);
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims(now);
            f(&mut c);
            verify(&sign(&ed, &c), &set, now)
        };
        for (why, f) in [
            (
                "wrong aud",
                &(|c: &mut Value| c["aud"] = json!("https://gw.test/other")) as &dyn Fn(&mut Value),
            ),
            ("aud with a trailing slash", &|c| {
                c["aud"] = json!("https://gw.test/oauth/token/")
            }),
            ("aud array of two", &|c| {
                c["aud"] = json!([token_endpoint(ISSUER), "https://else"])
            }),
            ("no aud", &|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            ("wrong iss", &|c| c["iss"] = json!("other-co")),
            ("wrong sub", &|c| c["sub"] = json!("other-co")),
            ("no sub", &|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            ("no exp", &|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            ("expired", &|c| c["exp"] = json!(t - 120)),
            ("exp 10 min ahead", &|c| c["exp"] = json!(t + 600)),
            ("exp 6 min ahead", &|c| c["exp"] = json!(t + 360)),
            ("no jti", &|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            ("empty jti", &|c| c["jti"] = json!("")),
            ("jti not a string", &|c| c["jti"] = json!(7)),
            ("nbf ahead", &|c| c["nbf"] = json!(t + 120)),
            ("iat ahead", &|c| c["iat"] = json!(t + 120)),
        ] {
            assert!(with(f).is_err(), "{why} was accepted");
        }
        assert!(refused(with(&|c| c["aud"] = json!("x"))).contains("aud"));
        assert!(refused(with(&|c| c["exp"] = json!(t - 120))).contains("expired"));
        assert!(refused(with(&|c| c["exp"] = json!(t + 600))).contains("5 minutes"));
        assert!(refused(with(&|c| c["iss"] = json!("x"))).contains("iss and sub"));
        assert!(refused(with(&|c| {
            c.as_object_mut().unwrap().remove("jti");
        }))
        .contains("jti"));
        // Within the clock skew tolerated, and exactly five minutes ahead, are fine.
        assert!(with(&|c| c["exp"] = json!(t - 10)).is_ok());
        assert!(with(&|c| c["exp"] = json!(t + 300)).is_ok());
        assert!(with(&|c| c["nbf"] = json!(t - 10)).is_ok());
    }

    /// The window is read at the `now` given (the gateway's clock), never the system's:
    /// an assertion of years ago is accepted on a clock of that time, up to its `exp` plus
    /// 30 s, not before its `nbf` or `iat` less 30 s, and never without `exp`.
    #[test]
    fn the_window_is_the_clocks() {
        use crate::store::{Clock, ManualClock};
        let t0: DateTime<Utc> = "2020-02-29T12:00:00Z".parse().unwrap();
        let t = t0.timestamp();
        let clock = ManualClock::new(t0);
        let (ed, _) = ed_key("ed");
        let set = jwks(&[&ed]);
        let with = |secs: i64, f: &dyn Fn(&mut Value)| {
            clock.set(t0 + TimeDelta::seconds(secs));
            let mut c = claims(t0);
            c["exp"] = json!(t + 60);
            f(&mut c);
            verify(&sign(&ed, &c), &set, clock.now())
        };
        let same = |_: &mut Value| {};
        assert!(with(0, &same).is_ok());
        assert!(
            with(90, &same).is_ok(),
            "exp plus the skew is the last second"
        );
        assert!(refused(with(91, &same)).contains("expired"));
        assert!(with(-30, &|c| c["nbf"] = json!(t)).is_ok());
        assert!(refused(with(-31, &|c| c["nbf"] = json!(t))).contains("nbf"));
        assert!(refused(with(-31, &|c| c["iat"] = json!(t))).contains("iat"));
        assert!(refused(with(0, &|c| {
            c.as_object_mut().unwrap().remove("exp");
        }))
        .contains("exp"));
    }

    #[test]
    fn none_hmac_unknown_kids_and_foreign_keys_are_refused() {
        let now = Utc::now();
        let (ed, public) = ed_key("ed");
        let es384 = fixed_key(P384_PKCS8, Algorithm::ES384, "es384");
        let set = jwks(&[&ed, &es384]);
        let c = claims(now);

        // alg none: no signature at all.
        let none = format!(
            "{}.{}.",
            b64url_encode(br#"{"alg":"none","typ":"JWT","kid":"ed"}"#),
            b64url_encode(c.to_string().as_bytes())
        );
        assert!(refused(verify(&none, &set, now)).contains("alg"));
        // HS256 keyed with the public key (raw, and as the JWK's x): algorithm confusion.
        for secret in [
            public.to_vec(),
            ed.jwk["x"].as_str().unwrap().as_bytes().to_vec(),
        ] {
            let hmac = TestKey {
                key: EncodingKey::from_secret(&secret),
                alg: Algorithm::HS256,
                kid: "ed",
                jwk: Value::Null,
            };
            assert!(refused(verify(&sign(&hmac, &c), &set, now)).contains("alg"));
            assert!(refused(verify(&sign_with(&hmac, None, &c), &set, now)).contains("alg"));
        }
        // Whatever depends on the registered keys is the one uniform refusal (it must not
        // tell which keys, or whether any, are registered):
        // a kid the client never registered,
        let (stranger, _) = ed_key("stranger");
        assert_eq!(
            refused(verify(&sign(&stranger, &c), &set, now)),
            AUTH_FAILED
        );
        // the kid of a registered key, signed by another,
        assert_eq!(
            refused(verify(&sign_with(&stranger, Some("ed"), &c), &set, now)),
            AUTH_FAILED
        );
        assert_eq!(
            refused(verify(&sign_with(&stranger, None, &c), &set, now)),
            AUTH_FAILED
        );
        // a kid whose key is of another type than the header's alg,
        assert_eq!(
            refused(verify(&sign_with(&ed, Some("es384"), &c), &set, now)),
            AUTH_FAILED
        );
        // an ES256 signature where only an ES384 key is registered,
        let es256 = fixed_key(P256_PKCS8, Algorithm::ES256, "es256");
        assert_eq!(
            refused(verify(&sign_with(&es256, None, &c), &jwks(&[&es384]), now)),
            AUTH_FAILED
        );
        // and tampered claims.
        let good = sign(&ed, &c);
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut forged = c.clone();
        forged["exp"] = json!(now.timestamp() + 200);
        parts[1] = b64url_encode(forged.to_string().as_bytes());
        assert_eq!(refused(verify(&parts.join("."), &set, now)), AUTH_FAILED);
        assert!(verify(&good, &set, now).is_ok());
        assert!(refused(verify("not-a-jwt", &set, now)).contains("JWT"));
    }

    #[test]
    fn the_dummy_keys_are_one_valid_key_per_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_create(dir.path(), ISSUER, "phr-api").unwrap();
        let set = dummy_jwks(&keys);
        let algs: Vec<_> = set.keys.iter().map(key_algorithm).collect();
        assert_eq!(
            algs,
            [
                Some(Algorithm::EdDSA),
                Some(Algorithm::ES256),
                Some(Algorithm::ES384),
                Some(Algorithm::RS384)
            ]
        );
        check_jwks(&serde_json::to_value(&set).unwrap()).unwrap();
        // Each is really used: a made-up signature of each alg is refused, not skipped.
        let (ed, _) = ed_key("x");
        assert!(!verify_signature(&sign(&ed, &claims(Utc::now())), &set));
    }
}
