//! Client authentication at the token endpoint: exactly one of `private_key_jwt`,
//! `client_secret_basic` (HTTP Basic, form-urlencoded id and secret) or `client_secret_post`.

use super::*;

/// Credentials from an HTTP Basic `Authorization` header. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    pub client_id: String,
    pub secret: String,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Whether an `Authorization` header value uses the Basic scheme.
pub fn is_basic(header: &str) -> bool {
    header
        .trim_start()
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
}

/// Parses `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
pub fn parse_basic(header: &str) -> Option<BasicCredentials> {
    if !is_basic(header) {
        return None;
    }
    let encoded = header.trim_start()[6..].trim();
    let decoded = String::from_utf8(b64_decode(encoded)?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some(BasicCredentials {
        client_id: form_decode(id)?,
        secret: form_decode(secret)?,
    })
}

/// How a request authenticates its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientAuth<'a> {
    Secret { client_id: &'a str, secret: &'a str },
    Assertion { assertion: &'a str },
}

pub(super) fn client_auth<'a>(
    form: &'a TokenForm,
    basic: Option<&'a BasicCredentials>,
) -> Result<ClientAuth<'a>, OAuthError> {
    let jwt = form.client_assertion.is_some() || form.client_assertion_type.is_some();
    let used = [basic.is_some(), form.client_secret.is_some(), jwt]
        .into_iter()
        .filter(|u| *u)
        .count();
    if used > 1 {
        return Err(invalid_request(
            "use exactly one client authentication method",
        ));
    }
    if let Some(b) = basic {
        if form
            .client_id
            .as_deref()
            .is_some_and(|id| id != b.client_id)
        {
            return Err(invalid_request(
                "client_id does not match the Basic credentials",
            ));
        }
        return Ok(ClientAuth::Secret {
            client_id: &b.client_id,
            secret: &b.secret,
        });
    }
    if let Some(secret) = &form.client_secret {
        let client_id = form
            .client_id
            .as_deref()
            .ok_or(invalid_request("client_secret_post needs client_id"))?;
        return Ok(ClientAuth::Secret { client_id, secret });
    }
    if jwt {
        if form.client_assertion_type.as_deref() != Some(CLIENT_ASSERTION_TYPE_JWT) {
            return Err(invalid_request(
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
        }
        let assertion = form
            .client_assertion
            .as_deref()
            .ok_or(invalid_request("client_assertion is required"))?;
        return Ok(ClientAuth::Assertion { assertion });
    }
    Err(invalid_client(
        "client authentication is required: private_key_jwt, client_secret_basic or client_secret_post",
    ))
}

/// Decodes one `application/x-www-form-urlencoded` value (`+` is a space, `%XX` a byte), as
/// RFC 6749 §2.3.1 has client ids and secrets encoded in Basic credentials. A malformed
/// escape (`%` not followed by two hex digits, which the decoder would pass through as it is)
/// or bytes that are not UTF-8 refuse the credentials.
fn form_decode(s: &str) -> Option<String> {
    let well_formed = s.split('%').skip(1).all(|rest| {
        rest.as_bytes()
            .get(..2)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return None;
    }
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|v| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let header = |s: &str| format!("Basic {}", b64url_encode(s.as_bytes()));
        let b = parse_basic(&header("co%3A1:s%2Bx+y")).unwrap();
        assert_eq!((b.client_id.as_str(), b.secret.as_str()), ("co:1", "s+x y"));
        assert!(!format!("{b:?}").contains("s+x"));
        let std_b64 = "basic cGhyLWNvOnNlY3JldA==";
        assert_eq!(parse_basic(std_b64).unwrap().client_id, "phr-co");
        assert!(is_basic("Basic x") && !is_basic("Bearer x") && !is_basic("Bas"));
        assert_eq!(parse_basic(&header("no-colon")), None);
        assert_eq!(parse_basic(&header("a:%zz")), None);
        assert_eq!(parse_basic("Basic ***"), None);
        assert_eq!(b64_decode("AQAB"), Some(vec![1, 0, 1]));
        assert_eq!(b64url_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(b64_decode("-_8"), Some(vec![0xfb, 0xff]));
    }
}
