//! Token auth (the Docker registry token flow): a [`TokenServer`] that signs
//! JWTs with the `openssl` CLI as its [`TokenPolicy`] says, and records
//! every token request. A registry started with
//! [`crate::RegistrySetup::token_auth`] trusts it; the harness's own pushes
//! fetch tokens there as [`crate::TEST_USER`].
//!
//! ```no_run
//! use harness::{Registry, RegistrySetup, TokenPolicy};
//! let registry = Registry::start_with(RegistrySetup::new().token_auth(TokenPolicy::new().anonymous_pull()));
//! let tokens = registry.token_server();
//! // ... pull through the library, then:
//! assert_eq!(tokens.requests().len(), 1);
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    http::{base64, find, http},
    registry::{TEST_PASSWORD, TEST_USER},
    tls::TlsCert,
};

/// The `service` of every token-auth registry (the tokens' `aud`).
pub const TOKEN_SERVICE: &str = "oci-cache-test";
/// The `issuer` every token-auth registry trusts (the tokens' `iss`).
pub const TOKEN_ISSUER: &str = "oci-cache-test-issuer";
/// The `client_id` the harness's own token requests carry, which tells
/// them apart from the library's (see [`TokenRequest::harness`]).
pub const HARNESS_CLIENT_ID: &str = "oci-cache-test-harness";

/// The identity token (OAuth2 refresh token) of [`TEST_USER`] that a
/// [`TokenServer`] accepts in `POST` requests with
/// `grant_type=refresh_token`.
pub const TEST_IDENTITY_TOKEN: &str = "idt-7Kq2xV9mWp4Rz8Ls";

/// How a [`TokenServer`] answers token requests:
/// - [`TEST_USER`] with [`TEST_PASSWORD`] gets every action asked for;
/// - [`TEST_USER`] with another password gets 401 `{"details":"bad password"}`,
///   any other user 401 `{"details":"unknown user NAME"}`;
/// - a request without credentials gets `pull` (of what it asked for) when
///   anonymous pulls are granted, else 401
///   `{"details":"anonymous access refused: log in"}`;
/// - a `POST` form with `grant_type=refresh_token` and `refresh_token`
///   [`TEST_IDENTITY_TOKEN`] gets what tester gets, answered as
///   `{"access_token": JWT, "expires_in": N}`; another refresh token gets
///   401 `{"details":"invalid refresh token"}`, another grant type or body 400.
///
/// Tokens last [`TokenPolicy::lifetime`] (default 300 s), both in their
/// `exp` claim and in the answer's `expires_in`. With
/// [`TokenPolicy::no_access`], they grant nothing at all.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    anonymous_pull: bool,
    lifetime_secs: u64,
    no_access: bool,
}

impl Default for TokenPolicy {
    fn default() -> TokenPolicy {
        TokenPolicy {
            anonymous_pull: false,
            lifetime_secs: 300,
            no_access: false,
        }
    }
}

impl TokenPolicy {
    /// Credentials required; tokens last 300 s.
    pub fn new() -> TokenPolicy {
        TokenPolicy::default()
    }

    /// Requests without credentials get pull access.
    pub fn anonymous_pull(mut self) -> TokenPolicy {
        self.anonymous_pull = true;
        self
    }

    /// Tokens expire `secs` seconds after they are issued (`exp` = `iat` +
    /// `secs`, `expires_in` = `secs`).
    pub fn lifetime(mut self, secs: u64) -> TokenPolicy {
        self.lifetime_secs = secs;
        self
    }

    /// Whoever asks gets a valid token (200) whose `access` grants no
    /// action, as when rights were revoked: the registry refuses it with
    /// 401. For harness pushes, switch to this policy after pushing
    /// (see [`TokenServer::set_policy`]).
    pub fn no_access(mut self) -> TokenPolicy {
        self.no_access = true;
        self
    }
}

/// Where the harness fetches its bearer tokens: the token server's
/// `host:port`, the realm's path and the registry's service.
#[derive(Debug, Clone)]
pub struct TokenRealm {
    pub host: String,
    pub path: String,
    pub service: String,
}

impl TokenRealm {
    /// `http://HOST/PATH`, as in the registry's challenge.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.host, self.path)
    }

    /// A token for `scope` (`repository:NAME:ACTIONS`; none for `/v2/`)
    /// asked for with `credentials` (Basic) if any, as the harness
    /// (`client_id` [`HARNESS_CLIENT_ID`]). An error if refused.
    pub fn fetch_token(
        &self,
        credentials: Option<&(String, String)>,
        scope: Option<&str>,
    ) -> std::io::Result<String> {
        let mut query = format!(
            "service={}&client_id={HARNESS_CLIENT_ID}",
            percent_encode(&self.service)
        );
        if let Some(scope) = scope {
            query.push_str(&format!("&scope={}", percent_encode(scope)));
        }
        let authorization = credentials.map(|(user, password)| {
            format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
        });
        let mut headers = Vec::new();
        if let Some(value) = &authorization {
            headers.push(("Authorization", value.as_str()));
        }
        let response = http(
            &self.host,
            "GET",
            &format!("{}?{query}", self.path),
            &headers,
            &[],
        )?;
        if response.status != 200 {
            return Err(std::io::Error::other(format!(
                "token request to {} for {scope:?}: {}",
                self.url(),
                response.describe()
            )));
        }
        serde_json::from_slice::<Value>(&response.body)
            .ok()
            .and_then(|v| v.get("token")?.as_str().map(str::to_owned))
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "token answer without a token: {}",
                    response.describe()
                ))
            })
    }
}

/// The scope a harness request needs: for `/v2/NAME/{blobs,manifests,tags}/...`,
/// `repository:NAME:pull` to read (GET, HEAD), `repository:NAME:delete` to
/// delete, else `repository:NAME:pull,push`; nothing for `/v2/` itself.
pub fn harness_scope(method: &str, path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or_default();
    let rest = path.strip_prefix("/v2/")?;
    let end = ["/blobs/", "/manifests/", "/tags/"]
        .iter()
        .filter_map(|marker| rest.rfind(marker))
        .max()?;
    let name = &rest[..end];
    let actions = match method {
        "GET" | "HEAD" => "pull",
        "DELETE" => "delete",
        _ => "pull,push",
    };
    Some(format!("repository:{name}:{actions}"))
}

/// One request the token server answered, as it saw it. The parameters
/// come from the query of a `GET` and from the form body of a `POST`.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// Every `scope` parameter, decoded, in order.
    pub scopes: Vec<String>,
    /// The `service` parameter.
    pub service: Option<String>,
    /// The `client_id` parameter.
    pub client_id: Option<String>,
    /// Whether a `refresh_token` parameter was presented (an identity token).
    pub refresh_token: bool,
    /// The user of the `Authorization: Basic` header, if one was sent.
    pub user: Option<String>,
    /// Whether the request carried `Authorization: Basic`.
    pub basic_auth: bool,
    /// Whether it came from the harness (`client_id` [`HARNESS_CLIENT_ID`]).
    pub harness: bool,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The status answered: 200 with a token, or 401.
    pub status: u16,
    /// The token's `iat` and `exp` (Unix seconds) when one was issued.
    pub issued_at: Option<u64>,
    pub expires_at: Option<u64>,
    /// Every `access` entry granted, as `type:name:action,action`.
    pub granted: Vec<String>,
}

/// A token server (the realm of a token-auth registry) on a loopback port,
/// stopped when dropped. It signs RS256 JWTs with `openssl dgst -sha256
/// -sign` using a self-signed certificate (see [`TokenServer::certificate`],
/// the registry's `rootcertbundle`) carried in the header's `x5c`, and
/// answers `{"token": JWT, "expires_in": N}`. Every request is recorded.
pub struct TokenServer {
    host: String,
    signer: TlsCert,
    policy: Arc<Mutex<TokenPolicy>>,
    log: Arc<Mutex<Vec<TokenRequest>>>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the token server's connection threads share.
struct TokenIssuer {
    key: PathBuf,
    /// The signing certificate, base64 DER, for `x5c`.
    x5c: String,
    policy: Arc<Mutex<TokenPolicy>>,
    log: Arc<Mutex<Vec<TokenRequest>>>,
    issued: AtomicUsize,
}

impl TokenServer {
    /// Generates the signing key and certificate in `dir` and starts
    /// serving `GET /token` and `POST /token` on `127.0.0.1:PORT`.
    pub fn start(dir: &Path, policy: TokenPolicy) -> TokenServer {
        let signer = TlsCert::generate(dir, &["DNS:oci-cache-token-signer".to_owned()]);
        let pem = std::fs::read_to_string(&signer.cert).expect("reading the signing certificate");
        let x5c: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .map(str::trim)
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let host = listener.local_addr().unwrap().to_string();
        let policy = Arc::new(Mutex::new(policy));
        let log: Arc<Mutex<Vec<TokenRequest>>> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let issuer = Arc::new(TokenIssuer {
            key: signer.key.clone(),
            x5c,
            policy: policy.clone(),
            log: log.clone(),
            issued: AtomicUsize::new(0),
        });
        let thread = {
            let stopping = stopping.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let issuer = issuer.clone();
                    std::thread::spawn(move || serve_token(stream, &issuer));
                }
            })
        };
        TokenServer {
            host,
            signer,
            policy,
            log,
            stopping,
            thread: Some(thread),
        }
    }

    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// `http://127.0.0.1:PORT/token`, the registry's `realm`.
    pub fn realm(&self) -> String {
        self.token_realm().url()
    }

    /// How the harness reaches this server (see [`crate::Endpoint::token_realm`]).
    pub fn token_realm(&self) -> TokenRealm {
        TokenRealm {
            host: self.host.clone(),
            path: "/token".to_owned(),
            service: TOKEN_SERVICE.to_owned(),
        }
    }

    /// The signing certificate (PEM), which the registry trusts.
    pub fn certificate(&self) -> PathBuf {
        self.signer.cert.clone()
    }

    /// Answers later requests as `policy` says.
    pub fn set_policy(&self, policy: TokenPolicy) {
        *self.policy.lock().unwrap() = policy;
    }

    /// The requests made by anyone but the harness (the library's), in
    /// the order answered.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.all_requests()
            .into_iter()
            .filter(|r| !r.harness)
            .collect()
    }

    /// Every request answered so far, the harness's own included.
    pub fn all_requests(&self) -> Vec<TokenRequest> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.host);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_token(mut stream: TcpStream, issuer: &TokenIssuer) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&raw, b"\r\n\r\n").is_none() {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let head_end = find(&raw, b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let header = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
    };
    let length: usize = header("Content-Length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
        .min(1 << 16);
    let mut body = raw[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    body.truncate(length);
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let form = header("Content-Type").is_some_and(|value| {
        value
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let params = if method == "POST" {
        parse_form(&String::from_utf8_lossy(&body))
    } else {
        parse_form(query)
    };
    let param = |name: &str| {
        params
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .collect::<Vec<_>>()
    };
    let authorization = header("Authorization");
    let basic = authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| base64_decode(encoded.trim()))
        .map(|decoded| String::from_utf8_lossy(&decoded).into_owned())
        .map(|text| match text.split_once(':') {
            Some((user, password)) => (user.to_owned(), password.to_owned()),
            None => (text, String::new()),
        });
    let refresh_token = param("refresh_token").into_iter().next();
    let mut record = TokenRequest {
        method: method.clone(),
        client_id: param("client_id").into_iter().next(),
        refresh_token: refresh_token.is_some(),
        scopes: param("scope")
            .iter()
            .flat_map(|s| s.split(' ').map(str::to_owned).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect(),
        service: param("service").into_iter().next(),
        user: basic.as_ref().map(|(user, _)| user.clone()),
        basic_auth: basic.is_some(),
        harness: param("client_id").iter().any(|c| c == HARNESS_CLIENT_ID),
        user_agent: header("User-Agent"),
        status: 401,
        issued_at: None,
        expires_at: None,
        granted: Vec::new(),
    };
    let policy = issuer.policy.lock().unwrap().clone();
    // The actions the requester may have, or the refusal (status, body).
    let refusal = |details: String| (401u16, json!({ "details": details }));
    let grant_type = param("grant_type").into_iter().next().unwrap_or_default();
    let allowed: Result<&[&str], (u16, Value)> =
        if !["GET", "POST"].contains(&method.as_str()) || path != "/token" {
            Err((404, json!({"details": format!("no {method} {path} here")})))
        } else if method == "POST" {
            match refresh_token.as_deref() {
                _ if !form => Err((400, json!({"details": "expected a form body"}))),
                _ if grant_type != "refresh_token" => Err((
                    400,
                    json!({ "details": format!("unsupported grant_type {grant_type:?}") }),
                )),
                Some(TEST_IDENTITY_TOKEN) => Ok(&["pull", "push", "delete", "*"]),
                _ => Err(refusal("invalid refresh token".to_owned())),
            }
        } else {
            match &basic {
                Some((user, password)) if user == TEST_USER && password == TEST_PASSWORD => {
                    Ok(&["pull", "push", "delete", "*"])
                }
                Some((user, _)) if user == TEST_USER => Err(refusal("bad password".to_owned())),
                Some((user, _)) => Err(refusal(format!("unknown user {user}"))),
                None if policy.anonymous_pull => Ok(&["pull"]),
                None => Err(refusal("anonymous access refused: log in".to_owned())),
            }
        };
    let allowed = match allowed {
        Ok(_) if policy.no_access => Ok(&[][..]),
        other => other,
    };
    let (status, body) = match allowed {
        Err((status, body)) => (status, body),
        Ok(allowed) => {
            let access: Vec<Value> = record
                .scopes
                .iter()
                .filter_map(|scope| {
                    // `type:name:actions`; a name may hold a `:` (a port).
                    let (kind, rest) = scope.split_once(':')?;
                    let (name, actions) = rest.rsplit_once(':')?;
                    let granted: Vec<&str> = actions
                        .split(',')
                        .filter(|action| allowed.contains(action))
                        .collect();
                    Some(json!({"type": kind, "name": name, "actions": granted}))
                })
                .collect();
            record.granted = access
                .iter()
                .map(|a| {
                    let actions: Vec<&str> = a["actions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(Value::as_str)
                        .collect();
                    format!(
                        "{}:{}:{}",
                        a["type"].as_str().unwrap(),
                        a["name"].as_str().unwrap(),
                        actions.join(",")
                    )
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock before 1970")
                .as_secs();
            let exp = now + policy.lifetime_secs;
            let n = issuer.issued.fetch_add(1, Ordering::SeqCst);
            let claims = json!({
                "iss": TOKEN_ISSUER,
                "sub": match &basic {
                    Some((user, _)) => user.as_str(),
                    None if record.refresh_token => TEST_USER,
                    None => "",
                },
                "aud": record.service.clone().unwrap_or_default(),
                "exp": exp,
                "nbf": now,
                "iat": now,
                "jti": format!("oci-cache-test-{}-{n}", std::process::id()),
                "access": access,
            });
            match sign_jwt(&issuer.key, &issuer.x5c, &claims) {
                Ok(token) => {
                    record.status = 200;
                    record.issued_at = Some(now);
                    record.expires_at = Some(exp);
                    let key = if method == "POST" {
                        "access_token"
                    } else {
                        "token"
                    };
                    (
                        200,
                        json!({ key: token, "expires_in": policy.lifetime_secs }),
                    )
                }
                Err(why) => (500, json!({ "details": why })),
            }
        }
    };
    record.status = status;
    issuer.log.lock().unwrap().push(record);
    let body = serde_json::to_vec(&body).unwrap();
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Internal Server Error",
        },
        body.len()
    );
    if status == 401 {
        response.push_str("WWW-Authenticate: Basic realm=\"oci-cache-test-token\"\r\n");
    }
    response.push_str("\r\n");
    let mut out = response.into_bytes();
    out.extend_from_slice(&body);
    let _ = stream.write_all(&out);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

/// `base64url(header).base64url(claims).base64url(signature)`, RS256 with
/// `key` (PEM) by `openssl dgst -sha256 -sign`; the header carries `x5c`.
fn sign_jwt(key: &Path, x5c: &str, claims: &Value) -> Result<String, String> {
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let input = format!(
        "{}.{}",
        base64url(&serde_json::to_vec(&header).unwrap()),
        base64url(&serde_json::to_vec(claims).unwrap())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running openssl (apt-get install openssl): {e}"))?;
    let mut stdin = child.stdin.take().expect("openssl stdin");
    stdin
        .write_all(input.as_bytes())
        .map_err(|e| format!("writing to openssl: {e}"))?;
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for openssl: {e}"))?;
    if !output.status.success() || output.stdout.is_empty() {
        return Err(format!(
            "openssl dgst -sign failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(format!("{input}.{}", base64url(&output.stdout)))
}

/// Base64url without padding, as in JWTs.
pub fn base64url(data: &[u8]) -> String {
    base64(data)
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect()
}

/// Decodes standard or url-safe base64, padded or not; `None` if malformed.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0);
    for c in text.trim_end_matches('=').bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

/// Percent-encodes all but unreserved characters, for a query value.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The pairs of a query or `application/x-www-form-urlencoded` body, decoded.
fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// Decodes a query component: `%XX` and `+` for a space.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
