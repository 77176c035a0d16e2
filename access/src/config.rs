//! The configuration the access layer reads: trusted identity providers
//! (`[[auth.providers]]` of the gateway's configuration, which re-exports these types) and
//! the [`Secret`] wrapper that keeps secrets out of logs.

use std::path::PathBuf;

use serde::Deserialize;

/// A secret kept out of `Debug` output (and so out of logs).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One trusted OpenID provider (Keycloak, Entra ID, Auth0, ...).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// A short name (`a-z`, `0-9`, `-`, at most 32): in the sign-in address
    /// (`/dashboard/signin/oidc/{name}`) and in logs.
    pub name: String,
    /// The label of its sign-in button (default: the name).
    #[serde(default)]
    pub display_name: Option<String>,
    /// The issuer exactly as its discovery document and its tokens name it (`https://...`;
    /// discovery is read from `{issuer}/.well-known/openid-configuration`).
    pub issuer: String,
    /// Extra CA certificates (PEM) the provider's HTTPS certificate may chain to, besides the
    /// built-in web roots (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Dashboard sign-in: the client registered at the provider for this gateway (authorization
    /// code flow with PKCE). Without it the provider only vouches for API tokens.
    #[serde(default)]
    pub client_id: Option<String>,
    /// A file holding the client's secret (`client_secret_basic`); without one the client is
    /// public (PKCE only).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The secret itself, set in code (tests); never read from the TOML file. Wins over the file.
    #[serde(skip)]
    pub client_secret: Option<Secret>,
    /// The scopes asked at sign-in; must include `openid`.
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// The redirect URI registered at the provider. Default: this gateway's public origin
    /// (`auth.issuer`, else the request's) + `/dashboard/signin/oidc/callback`.
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// API: the `aud` the provider's access tokens for this API carry. Without it the API
    /// accepts no access token from this provider.
    #[serde(default)]
    pub audience: Option<String>,
    /// Which claims name the person, the practitioner, the company and the roles.
    #[serde(default)]
    pub claims: ClaimMapping,
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into()]
}

/// How a provider's token names who it is for. A claim name may be a dotted path into
/// nested objects (`realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimMapping {
    /// The claim holding the person's id at this gateway (an owner).
    pub person: String,
    /// The claim holding the practitioner's id (a clinician).
    pub practitioner: String,
    /// The claim naming the client of a company's token: without `roles`, `sub` must equal it
    /// (a client-credentials token, RFC 9068 §2.2); with `roles`, the company role must be
    /// held.
    pub company: String,
    /// The claim listing roles (an array, or a space-separated string). Unset: the role is
    /// the one whose id claim is present.
    pub roles: Option<String>,
    /// Provider role name -> `owner`, `clinician` or `company`. Empty: the provider's role
    /// names are these three.
    pub role_map: std::collections::BTreeMap<String, String>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            person: "phr_person".into(),
            practitioner: "phr_practitioner".into(),
            company: "client_id".into(),
            roles: None,
            role_map: std::collections::BTreeMap::new(),
        }
    }
}
