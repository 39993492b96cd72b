//! Registry authorization: the challenge a registry answers a 401 with, and
//! the bearer tokens its realm hands out, fetched with the host's credentials
//! (Basic, anonymous, or an OAuth2 identity token) within the call's time
//! limits and cached per scope until they expire.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::credentials::Credential;
use crate::error::{Error, Result};
use crate::http::{error_chain, read_limited, reason, Limits, ReadError, SendError};

/// How a registry asks to be authorized, from its `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// Parses `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`;
    /// None for schemes this library cannot answer.
    pub(crate) fn parse(header: &str) -> Option<Challenge> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(params);
        let param = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.clone())
        };
        Some(Challenge::Bearer {
            realm: param("realm")?,
            service: param("service"),
        })
    }
}

/// The `key=value` and `key="quoted, value"` pairs of a challenge.
fn auth_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim_start();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end..])
            }
            None => {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            }
        };
        params.push((key, value));
        rest = after.trim_start_matches([',', ' ']);
    }
    params
}

/// A bearer token and when it stops being good. Debug never shows it.
#[derive(Clone)]
pub(crate) struct Token {
    pub value: String,
    expires: Instant,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &format_args!("<redacted>"))
            .field("expires", &self.expires)
            .finish()
    }
}

/// The lifetime the token specification assumes when a realm names none
/// (or names one that is not a number of seconds).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// The longest a token is kept, whatever its realm says: a lifetime of
/// `u64::MAX` seconds must neither overflow nor pin a token for ever.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest token answer read; real ones are a few KiB.
const MAX_TOKEN_RESPONSE_BYTES: usize = 1 << 20;

/// Tokens of one host, by scope. Each scope has its own lock, held while
/// its token is fetched: concurrent requests for the same repository wait
/// for one token request (itself bounded by the time limits), and requests
/// for other repositories do not wait at all.
#[derive(Default)]
pub(crate) struct Tokens(Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Token>>>>>);

impl Tokens {
    /// A token for `scope`: the cached one unless it expired or is `stale`
    /// (the one a registry just refused), else a new one from the realm.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn get(
        &self,
        http: &reqwest::Client,
        challenge: (&str, Option<&str>),
        scope: &str,
        credential: &Credential,
        stale: Option<&str>,
        what: &str,
        limits: &Limits,
    ) -> Result<Token> {
        let slot = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(scope.to_owned())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(token) = &*slot {
            if token.expires > Instant::now() && Some(token.value.as_str()) != stale {
                return Ok(token.clone());
            }
        }
        let token = fetch_token(http, challenge, scope, credential, what, limits).await?;
        *slot = Some(token.clone());
        Ok(token)
    }
}

/// Asks the realm for a token for `scope`: a GET with Basic credentials (or
/// none), or for an identity token the OAuth2 refresh-token POST.
async fn fetch_token(
    http: &reqwest::Client,
    (realm, service): (&str, Option<&str>),
    scope: &str,
    credential: &Credential,
    what: &str,
    limits: &Limits,
) -> Result<Token> {
    let mut params = vec![("scope", scope)];
    if let Some(service) = service {
        params.push(("service", service));
    }
    let request = match credential {
        Credential::Anonymous => http.get(realm).query(&params),
        Credential::Basic { username, password } => http
            .get(realm)
            .query(&params)
            .basic_auth(username, Some(password)),
        Credential::IdentityToken(token) => {
            params.extend([
                ("grant_type", "refresh_token"),
                ("refresh_token", token.as_str()),
                ("client_id", "oci-cache"),
            ]);
            http.post(realm).form(&params)
        }
    };
    let started = Instant::now();
    let failed =
        |why: String| Error::unauthorized(format!("{what}: token request to {realm}: {why}"));
    let response = limits.send(request).await.map_err(|e| match e {
        SendError::Transport(e) => Error::network(format!(
            "{what}: token request to {realm}: {}",
            error_chain(&e)
        ))
        .with_source(e.without_url()),
        SendError::TimedOut { message, .. } => {
            Error::timeout(format!("{what}: token request to {realm}: {message}"))
        }
    })?;
    let status = response.status();
    let body = read_limited(response, MAX_TOKEN_RESPONSE_BYTES, limits)
        .await
        .map_err(|e| {
            let message = format!("{what}: token request to {realm}: {e}");
            match e {
                ReadError::Stalled(_) => Error::timeout(message),
                _ => Error::network(message),
            }
        })?;
    if !status.is_success() {
        return Err(failed(format!(
            "refused with status {}: {}",
            status.as_u16(),
            reason(&body)
        ))
        .with_http_status(status.as_u16()));
    }
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| failed(format!("the answer is not JSON: {e}")))?;
    let value = ["token", "access_token"]
        .iter()
        .find_map(|key| answer[key].as_str().filter(|t| !t.is_empty()))
        .ok_or_else(|| failed("the answer holds no token".to_owned()))?;
    let expires = started
        .checked_add(token_lifetime(&answer["expires_in"]))
        .unwrap_or(started);
    Ok(Token {
        value: value.to_owned(),
        expires,
    })
}

/// How long a token lives by its realm's `expires_in`: whole seconds up to
/// [`MAX_TOKEN_LIFETIME`]; anything else (negative, text, missing) gets
/// [`DEFAULT_TOKEN_LIFETIME`].
fn token_lifetime(expires_in: &serde_json::Value) -> Duration {
    expires_in.as_u64().map_or(DEFAULT_TOKEN_LIFETIME, |secs| {
        Duration::from_secs(secs).min(MAX_TOKEN_LIFETIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifetimes_are_clamped() {
        let lifetime = |json: &str| token_lifetime(&serde_json::from_str(json).unwrap());
        assert_eq!(lifetime("18446744073709551615"), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime("-5"), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(lifetime(r#""abc""#), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(lifetime("null"), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(lifetime("1.5"), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(lifetime("300"), Duration::from_secs(300));
        assert!(Instant::now()
            .checked_add(lifetime("18446744073709551615"))
            .is_some());
    }

    #[test]
    fn token_debug_hides_the_token() {
        let token = Token {
            value: "s3cr3t-bearer-value".into(),
            expires: Instant::now(),
        };
        let shown = format!("{token:?} {:?}", Some(&token));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            })
        );
        assert_eq!(
            Challenge::parse(r#"bearer service="s, t", realm="http://r/\"x\"""#),
            Some(Challenge::Bearer {
                realm: "http://r/\"x\"".into(),
                service: Some("s, t".into())
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse(r#"Bearer service="no realm""#), None);
        assert_eq!(Challenge::parse("Negotiate abc"), None);
    }
}
