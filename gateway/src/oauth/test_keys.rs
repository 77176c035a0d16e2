//! Keys, assertions and a registered client for the OAuth tests of every module here.

use jsonwebtoken::jwk::{Jwk, JwkSet};

use super::*;
use crate::store::clients::NewClient;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

pub(super) const ISSUER: &str = "https://gw.test";
pub(super) const CLIENT: &str = "phr-co";

// Test-only keys, generated with openssl for these tests: P-384 and P-256 (PKCS#8 DER)
// and RSA 2048 (PKCS#1 DER), base64.
pub(super) const P384_PKCS8: &str = "MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDD5U465tk4Wdwun9VosFBPPZxyMFyUuyP/VmmHYJWyiNTudMu/IXlgCra0eXLEfn7ehZANiAAT/UA/z5vMWOndF0jzF6IO8t822up0YczLUA7RqF0724yDX7a3H4Ry0eABYIGKpkpHEj7nNvebG1wAtGHZ8FYkWjg4tTZEWIe9IR15jItqV5wJHYfDjOXFDBhVe69C+gFk=";
pub(super) const P256_PKCS8: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQguhpPqzD6A2bVAtPW0WAQ9i+flqEVOXoTtC2GeW898GOhRANCAAR8j46lsSZBAtmN1nDq5ITyn3fGgKnWsojkczdd5P5B+fFHHNbOE+j8tzQv2KTpVZg8jIp/a0Fdaq84R3zbL5xb";
pub(super) const RSA2048_PKCS1: &str = "MIIEoQIBAAKCAQEAmBpe+yjhi0r+X8e/grmygNJG4kzSTG4MJ3FRNymTdl01/rQeUS6fuD97ux/HQPQToFHL485rZ9mGRB+5n3dr6v8erCnTNr/K4R1L4ChFHRCByoMzrUzYwhozUK/aKVaiRL8xPQuqCNj2i6SqES607fCNc+qnlP//j1sRwPDwcecaROYexRZ7+LNgQjepBD3wcMaGxrpC0xy9V68NXgoBrQ4p+/WJXpn2DSliBHz+vjzMKTYgHNGB+RqBzdDBNuVcUkYKb+UoHoasPWPJw/jAl0MRRoPmz4qhWDyubfF6oYZraYH2+1OEC9ptWVFF7UbJVCz9BiYSl9xZHgZz4CP2mQIDAQABAoH/FNxsnD7GPo1f5DTWgRdouV7IWghoJL4Pl1lIrdZbRsQso6XXnxHiZEZQsgQbiM0NckTiI7G6Jdl2yag66aQiDIq4HAEuveHJDfqE31X768etIeBq/SDiYNk3FBLRZ0vP2Swm6f+TGaOLuymFDUgFT7l1dDeeUphYAt+XHfu0xbFhGp07xDAce1pJbGC5HHiAupnGjln7f7ApyGuvXHSmbJzpAe2tVCSYPqTCoSvaBPdAsXzZxIBTsgaq+hIMUvK3f7FpBIhD0oKWIlR3nopPTgyO04IZVjIb2vtw5coOr5g3YI4yuWPwe3uTF2Fpa3yzZMxRx422zeabtLONB7jxAoGBAMlhNRTwodKq6NyXVDxbr8rjxDICRPbJvGhotMSzfq2tWLVUGkX/sC/Qlbp8MTMRosd+ljH2ova+ie2t0aekNgkfhCUzdfCtXX5fVr70GPNIP5dQ6xDYMCgwmGTy3neyUK6NT2Rjw5Xxgd+WHgLxgJJsfHxFzXF4mfoLu1c4l9R7AoGBAMFbozyGCp3we/+hLoI06hMVKmZB6UUG6uXAmBZotV9n6up1/scqwdOc3Vb1WhwbTLFHQGt6TKO3/bouDk9nxoVoenUeEZyNiQjD7R0BPKxpj9GNazRC+g93Lkcd2dIaQPtyHV2D4PchzMwB6E1ZrQf57OxWVdc4wCx4itwud0b7AoGAfHMzb7Zp+xwd/j0TFJ4A3Jy3ocQfRHhVlBypIipfLgvDl4PbHMkv48y+y1l2uj264BiNz2DBQ0VrTdQujbCAqFCuxKKxz0QEVFWs8SM+zBIpImUib+16jUvC0hf5ffVXwReZKcwxkdeHUFqgP2dp8pNStyYYGXjTh2B6rSNPSUMCgYA9GVzikiSmtcgpBeCxalERCJ4mQ+uXUVFGmm40no+5fxffULvaaatn1+ilQtBfk0zPtAkqLTIshcZaX5VMCCnWHCad/YtpIdxMdcTmZm6quIymlf5rPELSQkHQXSFoX71q9ytKUpLy5K5XRL8IOi8QFyyDneBwKtGm+8w9OT2dowKBgQCPUs2p4yCyvC7S4NPPEHM5ay8Lqfsg6tm3NNZXveFsbfsDdkELd59hjtSAy4tz9EpriVyGaWkmVMguwunLUfSrfMUjB97feMDf6WjbrZheplSItAAyIAiBr8Ble4VwTvQsoSmurIygxFpg3DgWUISpy6fmluYa4+tAzh6Obk5dTQ==";

pub(super) struct TestKey {
    pub(super) key: EncodingKey,
    pub(super) alg: Algorithm,
    pub(super) kid: &'static str,
    pub(super) jwk: Value,
}

pub(super) fn ed_key(kid: &'static str) -> (TestKey, [u8; 32]) {
    let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let der = sk.to_pkcs8_der().unwrap();
    let public = sk.verifying_key().to_bytes();
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(&public),
                     "kid": kid, "alg": "EdDSA", "use": "sig"});
    let key = EncodingKey::from_ed_der(der.as_bytes());
    (
        TestKey {
            key,
            alg: Algorithm::EdDSA,
            kid,
            jwk,
        },
        public,
    )
}

pub(super) fn fixed_key(der_b64: &str, alg: Algorithm, kid: &'static str) -> TestKey {
    let der = b64_decode(der_b64).unwrap();
    let key = if alg == Algorithm::RS384 {
        EncodingKey::from_rsa_der(&der)
    } else {
        EncodingKey::from_ec_der(&der)
    };
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
    jwk["kid"] = kid.into();
    TestKey { key, alg, kid, jwk }
}

pub(super) fn jwks(keys: &[&TestKey]) -> JwkSet {
    check_jwks(&json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})).unwrap()
}

pub(super) fn claims(now: DateTime<Utc>) -> Value {
    let t = now.timestamp();
    json!({"iss": CLIENT, "sub": CLIENT, "aud": token_endpoint(ISSUER), "exp": t + 240,
           "iat": t, "jti": uuid::Uuid::new_v4().to_string()})
}

pub(super) fn sign_with(k: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(k.alg);
    h.kid = kid.map(str::to_owned);
    h.typ = Some("JWT".into());
    jsonwebtoken::encode(&h, claims, &k.key).unwrap()
}

pub(super) fn sign(k: &TestKey, claims: &Value) -> String {
    sign_with(k, Some(k.kid), claims)
}

pub(super) fn verify(
    assertion: &str,
    set: &JwkSet,
    now: DateTime<Utc>,
) -> Result<VerifiedAssertion, OAuthError> {
    verify_assertion(assertion, CLIENT, set, &token_endpoint(ISSUER), now)
}

pub(super) fn refused(r: Result<VerifiedAssertion, OAuthError>) -> &'static str {
    let e = r.expect_err("refused");
    assert_eq!(e.code, OAuthErrorCode::InvalidClient);
    e.description
}

pub(super) struct Setup {
    pub(super) _dir: tempfile::TempDir,
    pub(super) store: crate::store::Store,
    pub(super) keys: Keys,
    pub(super) ed: TestKey,
    pub(super) secret: String,
}

pub(super) fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(&dir.path().join("phr.sqlite")).unwrap();
    let keys = Keys::load_or_create(&dir.path().join("keys"), ISSUER, "phr-api").unwrap();
    let (ed, _) = ed_key("ed");
    store
        .add_client(&NewClient {
            client_id: CLIENT.into(),
            name: "PHR Co".into(),
            allowed_scopes: vec![
                "system/Observation.rs?code=http://loinc.org|55423-8".into(),
                "system/Observation.rs".into(),
            ],
            jwks: Some(json!({"keys": [ed.jwk]})),
            secret: false,
        })
        .unwrap();
    let secret = store
        .add_client(&NewClient {
            client_id: "secret-co".into(),
            name: "Secret Co".into(),
            allowed_scopes: vec!["system/Observation.rs".into()],
            jwks: None,
            secret: true,
        })
        .unwrap()
        .unwrap()
        .expose()
        .to_owned();
    Setup {
        _dir: dir,
        store,
        keys,
        ed,
        secret,
    }
}
