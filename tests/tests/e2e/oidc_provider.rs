//! The real OpenID provider of the tests (`tests/oidc/`, issue #14) does what the gateway's
//! OIDC tests will rely on: discovery names its JWKS; the authorization code flow with PKCE
//! signs the owner and the clinician in without a browser and gives ID tokens that verify
//! against that JWKS with the right `iss`, `aud`, `nonce` and person claims; access tokens for
//! the API are JWTs with `aud`, `scope` and the person claim; a replayed code, a wrong
//! `code_verifier`, an unknown account and another issuer's tokens are all refused.
//!
//! Needs `node` and `tests/oidc/node_modules` (`.ci/run` installs them and runs ignored tests).

use serde_json::Value;

use phr_e2e::oidc::{
    AuthRequest, OidcConfig, OidcProvider, TokenError, API_AUDIENCE, API_CLIENT, CLINICIAN_SUB,
    OWNER_PERSON, OWNER_SUB, WEB_CLIENT,
};

const REDIRECT: &str = "http://127.0.0.1:9/oidc/callback";

fn provider() -> OidcProvider {
    OidcProvider::start(OidcConfig::phr(REDIRECT)).unwrap()
}

fn refused(result: Result<impl std::fmt::Debug, TokenError>) -> (u16, String) {
    match result {
        Err(TokenError::Refused { status, error, .. }) => (status, error),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The `payload` of a JWT without checking anything, to look at what a wrong key would hide.
fn unverified_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let mut s = payload.replace('-', "+").replace('_', "/");
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    let bytes = std_b64_decode(&s);
    serde_json::from_slice(&bytes).unwrap()
}

fn std_b64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
#[ignore = "needs node and tests/oidc/node_modules; .ci/run installs them"]
fn discovery_is_served_and_names_the_jwks() {
    let op = provider();
    let d = op.discovery().unwrap();
    assert_eq!(d["issuer"], op.issuer());
    assert!(
        op.issuer().starts_with("https://127.0.0.1:"),
        "{}",
        op.issuer()
    );
    assert_eq!(d["jwks_uri"], op.url("/jwks"));
    assert_eq!(d["authorization_endpoint"], op.url("/auth"));
    assert_eq!(d["token_endpoint"], op.url("/token"));
    let methods: Vec<&str> = d["code_challenge_methods_supported"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(methods, ["S256"]);
    let jwks = op.jwks().unwrap();
    assert_eq!(jwks.keys.len(), 1);
    let key = &jwks.keys[0];
    assert!(key.common.key_id.is_some());
    // Only the public half is served.
    let raw: Value = op.get_json(&op.url("/jwks")).unwrap();
    assert!(
        raw["keys"][0].get("d").is_none(),
        "private key served: {raw}"
    );
}

#[test]
#[ignore = "needs node and tests/oidc/node_modules; .ci/run installs them"]
fn the_owner_signs_in_with_pkce_and_gets_a_verifiable_id_token_and_an_api_jwt() {
    let op = provider();
    let web = op.client(WEB_CLIENT).unwrap().clone();
    let req = AuthRequest::new(&web, OWNER_SUB);
    let authorized = op.authorize(&req).unwrap();
    assert_eq!(authorized.state.as_deref(), Some(req.state.as_str()));
    assert_eq!(authorized.iss.as_deref(), Some(op.issuer()));
    let tokens = op
        .exchange_code(&web, &authorized.code, REDIRECT, &req.code_verifier)
        .unwrap();
    assert_eq!(tokens.token_type, "Bearer");

    let id = op
        .verify_jwt(tokens.id_token.as_deref().unwrap(), WEB_CLIENT)
        .unwrap();
    assert_eq!(id["iss"], op.issuer());
    assert_eq!(id["aud"], WEB_CLIENT);
    assert_eq!(id["sub"], OWNER_SUB);
    assert_eq!(id["nonce"], req.nonce.as_str());
    assert_eq!(id["phr_person"], OWNER_PERSON);
    assert_eq!(id["roles"], serde_json::json!(["owner"]));
    assert!(id.get("phr_practitioner").is_none(), "{id}");

    let header = jsonwebtoken::decode_header(&tokens.access_token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let at = op.verify_jwt(&tokens.access_token, API_AUDIENCE).unwrap();
    assert_eq!(at["aud"], API_AUDIENCE);
    assert_eq!(at["iss"], op.issuer());
    assert_eq!(at["sub"], OWNER_SUB);
    assert_eq!(at["client_id"], WEB_CLIENT);
    assert_eq!(at["phr_person"], OWNER_PERSON);
    let scopes: Vec<&str> = at["scope"].as_str().unwrap().split(' ').collect();
    assert!(scopes.contains(&"phr:read"), "{at}");
    // An access token is not an ID token: it does not verify for the client's audience.
    assert!(op.verify_jwt(&tokens.access_token, WEB_CLIENT).is_err());
}

#[test]
#[ignore = "needs node and tests/oidc/node_modules; .ci/run installs them"]
fn the_clinician_signs_in_at_the_api_client_as_a_practitioner() {
    let op = provider();
    let api = op.client(API_CLIENT).unwrap().clone();
    let (req, tokens) = op.sign_in(&api, CLINICIAN_SUB).unwrap();
    let id = op
        .verify_jwt(tokens.id_token.as_deref().unwrap(), API_CLIENT)
        .unwrap();
    assert_eq!(id["sub"], CLINICIAN_SUB);
    assert_eq!(id["nonce"], req.nonce.as_str());
    assert_eq!(id["phr_practitioner"], CLINICIAN_SUB);
    assert_eq!(id["roles"], serde_json::json!(["clinician"]));
    assert!(id.get("phr_person").is_none(), "{id}");
    let at = op.verify_jwt(&tokens.access_token, API_AUDIENCE).unwrap();
    assert_eq!(at["phr_practitioner"], CLINICIAN_SUB);
    assert_eq!(at["client_id"], API_CLIENT);

    // The same client's service token: the API audience, no person.
    let service = op
        .client_credentials(&api, API_AUDIENCE, "phr:read")
        .unwrap();
    let st = op.verify_jwt(&service.access_token, API_AUDIENCE).unwrap();
    assert_eq!(st["scope"], "phr:read");
    assert_eq!(st["client_id"], API_CLIENT);
    for person_claim in ["phr_person", "phr_practitioner", "roles"] {
        assert!(st.get(person_claim).is_none(), "{st}");
    }
}

#[test]
#[ignore = "needs node and tests/oidc/node_modules; .ci/run installs them"]
fn a_replayed_code_and_a_wrong_verifier_are_refused() {
    let op = provider();
    let web = op.client(WEB_CLIENT).unwrap().clone();

    let req = AuthRequest::new(&web, OWNER_SUB);
    let code = op.authorize(&req).unwrap().code;
    op.exchange_code(&web, &code, REDIRECT, &req.code_verifier)
        .unwrap();
    let (status, error) = refused(op.exchange_code(&web, &code, REDIRECT, &req.code_verifier));
    assert_eq!((status, error.as_str()), (400, "invalid_grant"));

    let req = AuthRequest::new(&web, OWNER_SUB);
    let code = op.authorize(&req).unwrap().code;
    let other = AuthRequest::new(&web, OWNER_SUB).code_verifier;
    let (status, error) = refused(op.exchange_code(&web, &code, REDIRECT, &other));
    assert_eq!((status, error.as_str()), (400, "invalid_grant"));

    // A code is bound to its client: another client's secret cannot redeem it.
    let req = AuthRequest::new(&web, OWNER_SUB);
    let code = op.authorize(&req).unwrap().code;
    let api = op.client(API_CLIENT).unwrap().clone();
    let (_, error) = refused(op.exchange_code(&api, &code, REDIRECT, &req.code_verifier));
    assert_eq!(error, "invalid_grant");
}

#[test]
#[ignore = "needs node and tests/oidc/node_modules; .ci/run installs them"]
fn unknown_accounts_and_another_issuers_tokens_are_refused() {
    let op = provider();
    let web = op.client(WEB_CLIENT).unwrap().clone();
    let err = op
        .authorize(&AuthRequest::new(&web, "mallory"))
        .unwrap_err();
    assert!(err.to_string().contains("unknown account"), "{err:#}");

    // A second provider is another issuer with another key: its ID token does not verify
    // here, though its claims look the same.
    let other = provider();
    assert_ne!(other.issuer(), op.issuer());
    let other_web = other.client(WEB_CLIENT).unwrap().clone();
    let (_, tokens) = other.sign_in(&other_web, OWNER_SUB).unwrap();
    let id_token = tokens.id_token.unwrap();
    assert_eq!(unverified_claims(&id_token)["phr_person"], OWNER_PERSON);
    assert!(op.verify_jwt(&id_token, WEB_CLIENT).is_err());
    assert!(other.verify_jwt(&id_token, WEB_CLIENT).is_ok());
    // …and a token for another client is not one for this one.
    assert!(other.verify_jwt(&id_token, API_CLIENT).is_err());
}

#[test]
#[ignore = "needs node and tests/oidc/node_modules; .ci/run installs them"]
fn token_lifetimes_come_from_the_config() {
    // Short lifetimes are how later tests get expired tokens; here only that they are honoured
    // (exp - iat), with no waiting.
    let op = OidcProvider::start(
        OidcConfig::phr(REDIRECT)
            .with_ttl("AccessToken", 7)
            .with_ttl("IdToken", 11),
    )
    .unwrap();
    let web = op.client(WEB_CLIENT).unwrap().clone();
    let (_, tokens) = op.sign_in(&web, OWNER_SUB).unwrap();
    assert_eq!(tokens.expires_in, Some(7));
    let at = unverified_claims(&tokens.access_token);
    assert_eq!(at["exp"].as_i64().unwrap() - at["iat"].as_i64().unwrap(), 7);
    let id = unverified_claims(tokens.id_token.as_deref().unwrap());
    assert_eq!(
        id["exp"].as_i64().unwrap() - id["iat"].as_i64().unwrap(),
        11
    );
}

#[test]
#[ignore = "needs node and tests/oidc/node_modules; .ci/run installs them"]
fn without_a_login_hint_the_login_form_signs_the_chosen_account_in() {
    let op = provider();
    let web = op.client(WEB_CLIENT).unwrap().clone();
    let form = |account: Option<&str>| AuthRequest {
        login_hint: None,
        form_account: account.map(str::to_owned),
        ..AuthRequest::new(&web, OWNER_SUB)
    };

    let req = form(Some(CLINICIAN_SUB));
    let code = op.authorize(&req).unwrap().code;
    let tokens = op
        .exchange_code(&web, &code, REDIRECT, &req.code_verifier)
        .unwrap();
    let id = op
        .verify_jwt(tokens.id_token.as_deref().unwrap(), WEB_CLIENT)
        .unwrap();
    assert_eq!(id["sub"], CLINICIAN_SUB);

    // The form lists the accounts and nothing signs in by itself.
    let err = op.authorize(&form(None)).unwrap_err().to_string();
    assert!(
        err.contains("<form") && err.contains(OWNER_SUB) && err.contains(CLINICIAN_SUB),
        "{err}"
    );
    let err = op
        .authorize(&form(Some("mallory")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown account"), "{err}");
}
